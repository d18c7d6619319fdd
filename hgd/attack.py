"""The attack entry point: perturb every image of a folder within MAX_EPSILON, write same-named PNGs.

``attacks/<name>/run_attack.sh`` are thin wrappers around
``python -m hgd.attack --config <their config.json> INPUT_DIR OUTPUT_DIR MAX_EPSILON``. The
competition contract (``docs/reference/competition-contract.md``):

* every readable image of INPUT_DIR gets a PNG of the same file name in OUTPUT_DIR (created if
  missing), 299x299 RGB uint8, inside the MAX_EPSILON box of the input. MAX_EPSILON is an integer
  number of pixel levels, 0..255; anything else is refused (exit 2).
* A file that cannot be read is reported on stderr (``ERROR: <name>: <reason>``) and skipped: an
  attack has nothing to write for it. The run goes on.
* Odd inputs (RGBA, grey, palette, 16-bit, a wrong size) are converted by :mod:`hgd.images` the
  way the defense converts them (alpha dropped, 16-bit scaled, resized to 299 with a warning), and
  the attack works in the box of the *converted* image. The harness clips every output to the box
  of the ORIGINAL image anyway (and resizes a wrong-sized output back), so that is what counts.
* Targeted attacks (``"targeted": true`` in the config) read ``target_class.csv`` from INPUT_DIR
  (no header, ``<ImageId>.png,<target 1..1000>`` lines; target ``t`` is 0-based class ``t - 1``).
  An image without a valid entry is attacked towards its least likely class, with a warning.
  ``target_class.csv`` is never taken for an input image, targeted or not.
* Outputs are written batch by batch (atomically, by :func:`hgd.images.save_png`), so a run stopped
  at the time limit keeps every finished image.

Config (``config.json`` beside the submission's script)::

    {"attack": "mifgsm", "steps": 10, "mu": 1.0,
     "model": {"members": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]},
     "batch_size": 16, "notes": "free text"}

``attack`` is one of :class:`AttackName`; the attack's keyword arguments (``steps``, ``alpha``,
``mu``, ``seed``, ``loss``, ``restarts``, ``record_loss``, ``queries``, ``p_init``: those its class
takes) sit beside it. ``targeted`` (bool) reads targets; ``least_likely`` (bool, untargeted
submissions only) aims every image at its least likely class. ``model`` is
``{"members": [names...]}`` (undefended members, logits averaged) or
``{"defense_config": "path/to/config.json"}`` (a defense's config, relative to this file: attack
the defended model itself — a *defense-aware* attack). Attacks that never look at a model
(``noop``, ``random_noise``) need no ``model``, and none is built.

A defense-aware attack goes through all of the defense: its denoisers and classifiers (one
differentiable Keras graph) and its input transformation, if any (:mod:`hgd.transforms`), with
:class:`hgd.attacks.BPDA` (identity backward) since none is differentiable, and for a random one
:class:`hgd.attacks.EOT` over ``"eot_draws"`` draws (an optional key of ``model``; default
:data:`DEFAULT_EOT_DRAWS`). A defense whose denoiser weights do not exist is refused before any
image is read (``REFUSED`` on stderr, exit 2): attacking an untrained denoiser measures nothing.
Paths are relative to the config file, and the runner copies only the submission's folder: a
defense-aware submission carries its own copy of the defense's config (and, once trained, weights).

With ``record_loss``, each batch's loss curve (the mean objective over the batch at a few steps)
is logged on stderr.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import enum
import inspect
import json
import logging
import pathlib
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from hgd.entry import EXIT_REFUSED, run_main
from hgd.images import NUM_LABELS, iter_batches, list_input_files, save_png, to_label0

TARGET_CLASS_CSV = "target_class.csv"
DEFAULT_BATCH_SIZE = 16
DEFAULT_EOT_DRAWS = 10
"""Draws per gradient for a defense with a random transform when the config does not say."""

log = logging.getLogger("hgd.attack")


class AttackName(str, enum.Enum):
    """Attack ids a config may name (a CLI string and Python code take one path)."""

    NOOP = "noop"
    RANDOM_NOISE = "random_noise"
    FGSM = "fgsm"
    IFGSM = "ifgsm"
    BIM = "bim"
    PGD = "pgd"
    MIFGSM = "mifgsm"
    SQUARE = "square"

    def attack_class(self) -> type:
        from hgd import attacks

        return {
            AttackName.NOOP: attacks.NoOp,
            AttackName.RANDOM_NOISE: attacks.RandomNoise,
            AttackName.FGSM: attacks.FGSM,
            AttackName.IFGSM: attacks.BIM,
            AttackName.BIM: attacks.BIM,
            AttackName.PGD: attacks.PGD,
            AttackName.MIFGSM: attacks.MIFGSM,
            AttackName.SQUARE: attacks.SquareAttack,
        }[self]


_ATTACK_PARAMETERS = ("steps", "alpha", "mu", "seed", "loss", "restarts", "record_loss", "queries", "p_init")
_CONFIG_KEYS = frozenset({"attack", "model", "batch_size", "targeted", "least_likely", "notes", *_ATTACK_PARAMETERS})


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A parsed attack ``config.json``.

    Attributes:
        attack: the attack object, hyperparameters set.
        model: the ``"model"`` entry (``None`` when the attack needs no model).
        base: the config's folder (relative paths in ``model`` are resolved against it).
        targeted: read ``target_class.csv`` and attack towards its targets.
        least_likely: untargeted submission that aims at each image's least likely class.
        batch_size: images per attack call.
    """

    attack: Any
    model: dict | None
    base: pathlib.Path
    targeted: bool
    least_likely: bool
    batch_size: int


def parse_epsilon(text: str) -> int:
    """MAX_EPSILON from a command line: an integer number of pixel levels, 0..255 (also the runner's --eps)."""
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be an integer number of pixel levels in 0..255, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hgd.attack",
        description="Write an adversarial PNG, within MAX_EPSILON, for every image in INPUT_DIR.",
    )
    parser.add_argument("input_dir", type=pathlib.Path, help="folder of 299x299 RGB PNGs (and target_class.csv)")
    parser.add_argument("output_dir", type=pathlib.Path, help="folder to write the adversarial PNGs to")
    parser.add_argument("max_epsilon", metavar="MAX_EPSILON", type=parse_epsilon,
                        help="L-infinity bound in pixel levels, an integer 0..255")
    parser.add_argument("--config", type=pathlib.Path, required=True, help="the submission's config.json")
    parser.add_argument("--batch-size", type=int, default=None, help="images per attack call (default: config)")
    return parser.parse_args(argv)


def load_attack_config(path: str | pathlib.Path) -> AttackConfig:
    """Read and validate an attack submission's ``config.json`` (see the module docstring)."""
    path = pathlib.Path(path)
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be a JSON object")
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(_CONFIG_KEYS)}")
    try:
        name = AttackName(raw.get("attack"))
    except ValueError:
        raise ValueError(f"{path}: 'attack' must be one of {[a.value for a in AttackName]}, "
                         f"got {raw.get('attack')!r}") from None
    cls = name.attack_class()
    parameters = {key: raw[key] for key in _ATTACK_PARAMETERS if key in raw}
    accepted = [p.name for p in inspect.signature(cls).parameters.values() if p.kind == p.KEYWORD_ONLY]
    rejected = sorted(set(parameters) - set(accepted))
    if rejected:
        raise ValueError(f"{path}: attack {name.value!r} takes no parameter(s) {rejected}; it takes {accepted}")
    attack = cls(**parameters)
    targeted, least_likely = raw.get("targeted", False), raw.get("least_likely", False)
    for key, value in (("targeted", targeted), ("least_likely", least_likely)):
        if not isinstance(value, bool):
            raise ValueError(f"{path}: {key!r} must be true or false, got {value!r}")
    if targeted and least_likely:
        raise ValueError(f"{path}: 'targeted' and 'least_likely' exclude each other")
    model = raw.get("model")
    if attack.requires_model:
        _check_model_entry(model, path)
    batch_size = raw.get("batch_size", DEFAULT_BATCH_SIZE)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{path}: 'batch_size' must be an integer >= 1, got {batch_size!r}")
    return AttackConfig(attack=attack, model=model if attack.requires_model else None, base=path.parent,
                        targeted=targeted, least_likely=least_likely, batch_size=batch_size)


def _check_model_entry(model: Any, path: pathlib.Path) -> None:
    if not isinstance(model, dict) or set(model) not in ({"members"}, {"defense_config"},
                                                         {"defense_config", "eot_draws"}):
        raise ValueError(f"{path}: 'model' must be {{\"members\": [model names]}} or "
                         f"{{\"defense_config\": \"path\"}} (optionally with \"eot_draws\"), got {model!r}")
    if "defense_config" in model:
        if not isinstance(model["defense_config"], str) or not model["defense_config"]:
            raise ValueError(f"{path}: 'model.defense_config' must be a path, got {model['defense_config']!r}")
        draws = model.get("eot_draws", DEFAULT_EOT_DRAWS)
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"{path}: 'model.eot_draws' must be an integer >= 1, got {draws!r}")
    if "members" in model:
        from hgd.zoo import get_model

        members = model["members"]
        if not isinstance(members, list) or not members:
            raise ValueError(f"{path}: 'model.members' must list at least one target model, got {members!r}")
        for member in members:
            if isinstance(member, dict) and set(member) != {"model"}:
                raise ValueError(f"{path}: a member of 'model.members' is a name or {{\"model\": name}}, got "
                                 f"{member!r}; to attack a defense with denoisers use {{\"defense_config\": path}}")
            get_model(member["model"] if isinstance(member, dict) else member)  # raises on unknown names


def defense_config_path(config: AttackConfig) -> pathlib.Path | None:
    """The defense a defense-aware attack targets (``model.defense_config``, resolved), else ``None``."""
    if config.model is None or "defense_config" not in config.model:
        return None
    return config.base / config.model["defense_config"]


def build_model(config: AttackConfig):
    """What the attack runs on: pixels (299x299) -> averaged logits.

    The undefended members' Keras model; or the defense's (:func:`defense_model`).
    """
    from hgd.defended import Member, build_defended_model, load_config
    from hgd.zoo import get_model

    defense_path = defense_config_path(config)
    if defense_path is not None:
        defense = load_config(defense_path)
        defense.require_weights()
        return defense_model(defense, eot_draws=config.model.get("eot_draws", DEFAULT_EOT_DRAWS))
    names = [m["model"] if isinstance(m, dict) else m for m in config.model["members"]]
    return build_defended_model([Member(get_model(name)) for name in names])


def defense_model(defense, *, eot_draws: int | None = DEFAULT_EOT_DRAWS):
    """A whole defense as an attack's model: denoisers + classifiers (one Keras graph), behind
    :class:`hgd.attacks.BPDA` when the defense has an input transformation, and :class:`hgd.attacks.EOT`
    over ``eot_draws`` draws when that transformation is random (``None``: no EOT, one draw per call,
    which is how the deployed defense classifies)."""
    from hgd import attacks

    model = defense.build()
    if defense.transform is not None:
        model = attacks.BPDA(model, defense.transform)
        if defense.transform.random and eot_draws is not None:
            model = attacks.EOT(model, draws=eot_draws)
    return model


def read_targets(path: pathlib.Path) -> dict[str, int]:
    """``target_class.csv`` -> 0-based target by image name without ``.png``; bad rows warn and are skipped."""
    targets: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            try:
                target = int(row[1])
            except (IndexError, ValueError):
                target = 0
            if not 1 <= target <= NUM_LABELS:
                log.warning("%s, line %d: not <ImageId>.png,<target 1..%d>: %r; ignored", path.name, number,
                            NUM_LABELS, ",".join(row))
                continue
            targets[_stem(row[0].strip())] = to_label0(target)
    return targets


def _stem(name: str) -> str:
    return name[: -len(".png")] if name.endswith(".png") else name


def choose_targets(names: Sequence[str], targets: dict[str, int], model, images: np.ndarray) -> np.ndarray:
    """0-based targets for a batch: from ``targets`` (see :func:`read_targets`) by file name; an image
    without one gets its least likely class under ``model`` (with a warning)."""
    from hgd.attacks import LeastLikelyClass

    chosen = np.array([targets.get(_stem(name), -1) for name in names], dtype=np.int64)
    missing = chosen < 0
    if missing.any():
        for name in np.asarray(names)[missing]:
            log.warning("%s: no target in %s; attacking towards its least likely class", name, TARGET_CLASS_CSV)
        chosen[missing] = LeastLikelyClass().goal(model, images[missing].astype(np.float32)).classes
    return chosen


def _criterion(config: AttackConfig, model, names: list[str], images: np.ndarray, targets: dict[str, int]):
    from hgd.attacks import LeastLikelyClass, TargetedMisclassification

    if config.least_likely:
        return LeastLikelyClass()
    if not config.targeted:
        return None  # untargeted, away from the model's own prediction on the clean image
    return TargetedMisclassification(choose_targets(names, targets, model, images))


def attack_folder(config_path: pathlib.Path, input_dir: pathlib.Path, output_dir: pathlib.Path, epsilon: int,
                  batch_size: int | None = None) -> int:
    """Run the attack described by ``config_path``; returns the process exit code."""
    config = load_attack_config(config_path)
    refusal = _refusal(config, config_path)
    if refusal:
        print(refusal, file=sys.stderr)
        return EXIT_REFUSED
    files = [f for f in list_input_files(input_dir) if f.name != TARGET_CLASS_CSV]
    targets: dict[str, int] = {}
    if config.targeted:
        target_file = input_dir / TARGET_CLASS_CSV
        if target_file.is_file():
            targets = read_targets(target_file)
        else:
            log.warning("%s: no %s; every image is attacked towards its least likely class",
                        input_dir, TARGET_CLASS_CSV)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    if files:
        written = _attack(config, files, output_dir, epsilon, batch_size or config.batch_size, targets)
    print(f"wrote {written} adversarial images to {output_dir}", file=sys.stderr)
    return 0


def _refusal(config: AttackConfig, config_path: pathlib.Path) -> str | None:
    """Why a defense-aware attack cannot run (its defense's denoiser weights are missing), or ``None``."""
    defense_path = defense_config_path(config)
    if defense_path is None:
        return None
    from hgd.defended import MissingWeights, load_config

    try:
        load_config(defense_path).require_weights()
    except MissingWeights as refusal:
        return f"REFUSED: {config_path} attacks a defense that cannot run: {refusal}"
    return None


def _log_loss_curve(attack: Any, names: list[str]) -> None:
    curve = getattr(attack, "loss_curve", None)
    if curve is None:
        return
    with warnings.catch_warnings():  # a restart that ran no image is all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(curve, axis=-1)  # (restarts, steps + 1): the batch's mean objective per iterate
    for restart, row in enumerate(mean):
        if np.isnan(row).all():
            continue
        marks = sorted({0, *range(0, len(row), max(1, (len(row) - 1) // 10)), len(row) - 1})
        points = ", ".join(f"{i}: {row[i]:.3f}" for i in marks)
        log.info("loss curve (restart %d, mean over %d images, step: objective): %s", restart, len(names), points)


def _attack(config: AttackConfig, files: list[pathlib.Path], output_dir: pathlib.Path, epsilon: int,
            batch_size: int, targets: dict[str, int]) -> int:
    model = None
    if config.attack.requires_model:
        start = time.perf_counter()
        model = build_model(config)
        log.info("model ready in %.1f s: %s", time.perf_counter() - start, getattr(model, "name", None) or repr(model))
    log.info("%r at epsilon %d, batch size %d", config.attack, epsilon, batch_size)
    written = 0
    with tqdm(total=len(files), unit="img", desc="attack", file=sys.stderr) as progress:
        for batch in iter_batches(files, batch_size):
            for name, reason in batch.failed:
                print(f"ERROR: {name}: {reason}", file=sys.stderr)
            if batch.names:
                criterion = _criterion(config, model, batch.names, batch.images, targets)
                adversarial = config.attack(model, batch.images, criterion, epsilon=epsilon)
                _log_loss_curve(config.attack, batch.names)
                for name, image in zip(batch.names, adversarial):
                    save_png(output_dir / name, image)
                written += len(batch.names)
            progress.update(len(batch.names) + len(batch.failed))
    return written


def run(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = parse_args(argv)
    run_main(lambda: attack_folder(args.config, args.input_dir, args.output_dir, args.max_epsilon, args.batch_size))

if __name__ == "__main__":
    run()
