"""An attack submission's ``config.json``: which attack, on which model, with what settings.

Config (``config.json`` beside the submission's script)::

    {"attack": "mifgsm", "steps": 10, "mu": 1.0,
     "model": {"members": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]},
     "batch_size": 16, "notes": "free text"}

``attack`` is one of :class:`hgd.attacks.factory.AttackName`; the attack's keyword arguments (those
its class takes, :func:`hgd.attacks.factory.accepted_parameters`) sit beside it. ``targeted`` (bool)
reads targets; ``least_likely`` (bool, untargeted submissions only) aims every image at its least
likely class. ``model`` is one of

* ``{"members": [names...]}``: undefended members, logits averaged;
* ``{"defense": "hgd_lite"}``: a shipped defense by name (:func:`hgd.list_defenses`), the defended
  model itself — a *defense-aware* attack;
* ``{"defense_config": "path/to/config.json"}``: any defense's config, relative to this file (the
  runner copies only the submission's folder, so such a submission carries the defense it names).

Attacks that never look at a model (``noop``, ``random_noise``) need no ``model``, and none is built.

A defense-aware attack goes through all of the defense: its denoisers and classifiers (one
differentiable Keras graph) and its input transformation, if any (:mod:`hgd.defenses.transforms`), with
:class:`hgd.attacks.BPDA` (identity backward) since none is differentiable, and for a random one
:class:`hgd.attacks.EOT` over ``"eot_draws"`` draws (an optional key of ``model``; default
:data:`DEFAULT_EOT_DRAWS`). A defense whose denoiser weights do not exist is refused before any
image is read (``REFUSED`` on stderr, exit 2): attacking an untrained denoiser measures nothing.

With ``record_loss``, each batch's loss curve (the mean objective over the batch at a few steps)
is logged on stderr.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from hgd.attacks.factory import AttackName, all_parameters, make_attack
from hgd.defenses import MissingWeights

DEFAULT_BATCH_SIZE = 16
DEFAULT_EOT_DRAWS = 10
"""Draws per gradient for a defense with a random transform when the config does not say."""

_SETTINGS = frozenset({"attack", "model", "batch_size", "targeted", "least_likely", "notes"})


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


def load_attack_config(path: str | pathlib.Path) -> AttackConfig:
    """Read and validate an attack submission's ``config.json`` (see the module docstring)."""
    path = pathlib.Path(path)
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be a JSON object")
    parameter_keys = all_parameters()
    unknown = sorted(set(raw) - _SETTINGS - parameter_keys)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(_SETTINGS | parameter_keys)}")
    try:
        name = AttackName(raw.get("attack"))
    except ValueError:
        raise ValueError(f"{path}: 'attack' must be one of {[a.value for a in AttackName]}, "
                         f"got {raw.get('attack')!r}") from None
    try:
        attack = make_attack(name, **{key: raw[key] for key in parameter_keys if key in raw})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
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


_MODEL_ENTRIES = ({"members"}, {"defense"}, {"defense", "eot_draws"}, {"defense_config"},
                  {"defense_config", "eot_draws"})


def _check_model_entry(model: Any, path: pathlib.Path) -> None:
    if not isinstance(model, dict) or set(model) not in _MODEL_ENTRIES:
        raise ValueError(f"{path}: 'model' must be {{\"members\": [model names]}}, {{\"defense\": \"name\"}} or "
                         f"{{\"defense_config\": \"path\"}} (the last two optionally with \"eot_draws\"), got {model!r}")
    for key in ("defense", "defense_config"):
        if key in model and (not isinstance(model[key], str) or not model[key]):
            raise ValueError(f"{path}: 'model.{key}' must be a non-empty string, got {model[key]!r}")
    if "defense" in model:
        from hgd.shipped import config_path

        config_path(model["defense"])  # raises on unknown names, listing the shipped ones
    if "defense" in model or "defense_config" in model:
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
    """The configuration of the defense a defense-aware attack targets (``model.defense``: a shipped one;
    ``model.defense_config``: a path relative to the attack's config), else ``None``."""
    if config.model is None:
        return None
    if "defense" in config.model:
        from hgd.shipped import config_path

        return config_path(config.model["defense"])
    if "defense_config" in config.model:
        return config.base / config.model["defense_config"]
    return None


def build_model(config: AttackConfig):
    """What the attack runs on: pixels (299x299) -> averaged logits.

    The undefended members' Keras model; or the defense's (:func:`defense_model`).
    """
    from hgd.defenses.defended import Member, build_defended_model, load_config
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


def require_defense_weights(config: AttackConfig, config_path: pathlib.Path) -> None:
    """Raise :class:`hgd.defenses.MissingWeights` when a defense-aware attack's defense cannot run (its
    denoiser weights are missing): attacking an untrained denoiser measures nothing."""
    defense_path = defense_config_path(config)
    if defense_path is None:
        return
    from hgd.defenses.defended import load_config

    try:
        load_config(defense_path).require_weights()
    except MissingWeights as refusal:
        raise MissingWeights(f"{config_path} attacks a defense that cannot run: {refusal}") from None
