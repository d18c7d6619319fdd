"""Whether an attack transfers: crafted on some classifiers, scored on one it never saw.

The transfer attacks (DI, TI, SI-NI) exist to fool models their author cannot differentiate; their
papers (Xie et al. 2019, Dong et al. 2019, Lin et al. 2020) show each transferring at least as well as
MI-FGSM. This is that check for the shipped attacks: each attack is crafted on the ``craft`` members
(averaged logits, the submissions' settings but without the held-out member) and its adversarial images
are classified by the ``held_out`` member; lower accuracy there means better transfer. The crafting
ensemble's own accuracy is reported beside (a white-box sanity value: an attack that fails there is
broken, not weak at transferring).

Results go to a JSON file after each attack, so an interrupted run resumes attack by attack.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hgd.attacks.factory import SHIPPED_TRANSFER_ATTACKS, make_attack
from hgd.io.datasets import load_pixels, read_dataset
from hgd.io.files import write_atomically

log = logging.getLogger(__name__)

SHIPPED_SETTINGS: dict[str, dict[str, Any]] = {
    "MI-FGSM": SHIPPED_TRANSFER_ATTACKS["mifgsm"],
    "DI (DI-MI-FGSM)": SHIPPED_TRANSFER_ATTACKS["di_mifgsm"],
    # One technique alone: the sign-gradient family's options with input diversity off.
    "TI (TI-MI-FGSM)": {"attack": "di_mifgsm", "steps": 10, "mu": 1.0, "diversity_prob": 0.0, "ti_kernel": 15},
    "TI-DIM": SHIPPED_TRANSFER_ATTACKS["ti_di_mifgsm"],
    "SI-NI-TI-DIM, 5 copies, 3 steps": SHIPPED_TRANSFER_ATTACKS["si_ni_ti_di_fgsm"],
    "SI-NI-TI-DIM, 3 copies, 5 steps": {**SHIPPED_TRANSFER_ATTACKS["si_ni_ti_di_fgsm"], "steps": 5, "scale_copies": 3},
    # The paper's budget, 50 ensemble gradients per image: the dearest rows last.
    "SI-NI (SI-NI-FGSM)": {"attack": "di_mifgsm", "steps": 10, "mu": 1.0, "diversity_prob": 0.0, "nesterov": True,
                           "scale_copies": 5},
    "SI-NI-TI-DIM": {**SHIPPED_TRANSFER_ATTACKS["si_ni_ti_di_fgsm"], "steps": 10},
}
"""The rows: plain MI-FGSM, each technique alone on it, and the shipped combinations
(:data:`hgd.attacks.factory.SHIPPED_TRANSFER_ATTACKS`: ``attacks/mifgsm``, ``di_mifgsm``, ``ti_di_mifgsm``
and ``si_ni_ti_di_fgsm``, 5 copies x 3 steps), with another budget of 15 gradients per image (3 copies x
5 steps) and the paper's 5 copies x 10 steps."""


def held_out_transfer(dataset_dir: pathlib.Path, out: pathlib.Path, *, craft: Sequence[str], held_out: str,
                      epsilon: int = 16, limit: int | None = None, batch_size: int = 16,
                      settings: Mapping[str, dict[str, Any]] = SHIPPED_SETTINGS) -> dict:
    """Scores every attack of ``settings`` (name -> attack factory parameters) into ``out`` (JSON); returns it.

    Raises:
        ValueError: ``out`` holds a run with other members, epsilon or images.
    """
    from hgd.defenses.defended import Member, build_defended_model
    from hgd.zoo import get_model

    ids, images, labels = load_pixels(read_dataset(dataset_dir, limit))
    header = {"dataset": str(dataset_dir.resolve()), "craft": list(craft), "held_out": held_out,
              "epsilon": epsilon, "images": ids}
    results = _load(out, header)
    crafting = build_defended_model([Member(get_model(name)) for name in craft])
    target = build_defended_model([Member(get_model(held_out))])
    if "clean" not in results["rows"]:
        results["rows"]["clean"] = {"crafting": _accuracy(crafting, images, labels, batch_size),
                                    "held_out": _accuracy(target, images, labels, batch_size)}
        _save(out, results)
    for name, parameters in settings.items():
        if name in results["rows"]:
            log.info("%s: kept from %s", name, out)
            continue
        attack = make_attack(parameters["attack"], **{k: v for k, v in parameters.items() if k != "attack"})
        adversarial = np.concatenate([attack(crafting, images[s:s + batch_size], epsilon=epsilon)
                                      for s in range(0, len(ids), batch_size)])
        results["rows"][name] = {"settings": parameters,
                                 "crafting": _accuracy(crafting, adversarial, labels, batch_size),
                                 "held_out": _accuracy(target, adversarial, labels, batch_size)}
        _save(out, results)
        log.info("%s: held-out accuracy %.3f", name, results["rows"][name]["held_out"])
    return results


def _accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    from hgd.attacks import as_model

    logits = np.concatenate([as_model(model).logits(images[s:s + batch_size].astype(np.float32))
                             for s in range(0, len(images), batch_size)])
    return float(np.mean(logits.argmax(axis=1) == labels))


def _load(out: pathlib.Path, header: dict) -> dict:
    if out.is_file():
        results = json.loads(out.read_text())
        if {key: results.get(key) for key in header} != header:
            raise ValueError(f"{out} holds another run (members, epsilon or images); use another file")
        return results
    return {**header, "rows": {}}


def _save(out: pathlib.Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, "w", lambda f: json.dump(results, f, indent=1))


def markdown(results: dict) -> str:
    """The table: accuracy of the crafting ensemble and of the held-out member, per attack."""
    lines = [f"| attack | {'+'.join(results['craft'])} (crafted on) | {results['held_out']} (held out) |",
             "|---|---:|---:|"]
    for name, row in results["rows"].items():
        lines.append(f"| {name} | {100 * row['crafting']:.1f} % | {100 * row['held_out']:.1f} % |")
    return "\n".join(lines)
