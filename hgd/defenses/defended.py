"""The defended model: pixels -> normalized 299 space -> denoiser -> each classifier; logits averaged.

This is HGD's deployment structure (paper section 5.5; ``docs/ARCHITECTURE.md``). Two layouts:

* **per-model denoisers** (the competition solution): each target model has its own denoiser,
  trained with its own FGD, working in that model's normalized space;
* **one shared denoiser** guided by the whole ensemble (the sum of the members' FGD losses):
  a third of the denoising cost for three members. The members must then share one
  normalization (the Lite models do).

Denoisers run at the competition's 299x299, before each member's resize to its native
resolution. The ensemble combines the members' raw logits (the competition solution summed
them; averaging has the same argmax and keeps the scale of one model's logits). The whole graph
is one Keras model from pixels to logits, so attacks back-propagate through denoisers and
classifiers. A member without a denoiser is the plain classifier (the undefended baseline).

A defense may also name an input transformation (:mod:`hgd.defenses.transforms`: JPEG re-compression,
bit-depth reduction, ...), applied to the uint8 images before that model. It is not part of the
Keras graph (none of them is differentiable): :attr:`DefenseConfig.transform` runs first,
:meth:`DefenseConfig.build` is what comes after it. An attack that knows the defense wraps the two
with :class:`hgd.attacks.BPDA` (and :class:`hgd.attacks.EOT` for a random transform).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import keras
import numpy as np

from hgd.defenses.dunet import DTYPE_POLICIES, build_dunet
from hgd.io.images import IMAGE_SIZE

from hgd.defenses.transforms import Transform, from_config
from hgd.zoo import Affine, TargetModel, get_model
from hgd.defenses import MissingWeights


@dataclasses.dataclass(frozen=True)
class DenoiserSpec:
    """Where a trained DUNET's weights are and which builder options produced them."""

    weights: pathlib.Path
    width: float = 1.0
    lateral: bool = True
    dtype_policy: str = "float32"

    def build(self) -> keras.Model:
        """Build the denoiser and load its trained weights (which must exist)."""
        denoiser = build_dunet(width=self.width, lateral=self.lateral, dtype_policy=self.dtype_policy)
        denoiser.load_weights(self.weights)
        return denoiser


@dataclasses.dataclass(frozen=True)
class Member:
    """One ensemble member: a target model and, for HGD, its denoiser."""

    target: TargetModel
    denoiser: DenoiserSpec | None = None


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
    """A defense: its members (the ensemble), an optional shared denoiser, the batch size it classifies with,
    and an optional input transformation applied to the uint8 images before everything else."""

    members: tuple[Member, ...]
    batch_size: int = 32
    shared_denoiser: DenoiserSpec | None = None
    transform: Transform | None = None
    source: pathlib.Path | None = None  # the config.json read, for messages

    def __post_init__(self) -> None:
        if self.shared_denoiser is not None:
            if any(m.denoiser is not None for m in self.members):
                raise ValueError("a defense has either one shared denoiser or per-member denoisers, not both")
            shared_normalization(self.members)

    def denoisers(self) -> list[DenoiserSpec]:
        """Every denoiser the defense runs."""
        specs = [m.denoiser for m in self.members if m.denoiser is not None]
        return [self.shared_denoiser, *specs] if self.shared_denoiser else specs

    def missing_weights(self) -> list[pathlib.Path]:
        """Denoiser weight files the config names that do not exist."""
        return [spec.weights for spec in self.denoisers() if not spec.weights.is_file()]

    def require_weights(self) -> None:
        """Raise :class:`MissingWeights` unless every denoiser weight file the config names exists."""
        missing = self.missing_weights()
        if missing:
            raise MissingWeights(
                f"{self.source or 'the defense'} names trained denoiser weights that do not exist: "
                f"{', '.join(map(str, missing))}. HGD must not run, be attacked or be packaged with an untrained "
                "denoiser: train them (python -m hgd.cli.train defense CONFIG POOL WORK_DIR), or use the "
                "undefended baseline (baselines/undefended).")

    def build(self, image_size: int | None = IMAGE_SIZE) -> keras.Model:
        """Pixels -> averaged logits: :func:`build_defended_model` for this configuration.

        The differentiable part only: a defense with a :attr:`transform` classifies
        ``model(transform(images))`` (:meth:`preprocess` first).
        """
        return build_defended_model(self.members, image_size, shared_denoiser=self.shared_denoiser)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> what the model of :meth:`build` classifies: the transform's output, or the images."""
        return images if self.transform is None else self.transform(images)


def load_config(path: str | pathlib.Path) -> DefenseConfig:
    """Read a defense's ``config.json``; denoiser weight paths are relative to the file.

    Format::

        {"members": [{"model": "efficientnet_lite0",
                      "denoiser": {"weights": "weights/fgd_lite0.weights.h5", "width": 1.0}}, ...],
         "batch_size": 32}

    or, with one denoiser for the whole ensemble::

        {"denoiser": {"weights": "weights/fgd_ensemble.weights.h5", "width": 0.5},
         "members": [{"model": "efficientnet_lite0"}, ...]}

    Either may add an input transformation (:func:`hgd.defenses.transforms.from_config`), applied first::

        {"transform": {"name": "jpeg", "quality": 75}, "members": [...]}

    A denoiser entry may add ``"lateral": false`` (the DAE) and ``"dtype_policy": "mixed_bfloat16"`` (its
    body computed in bfloat16: faster on CPUs with AVX512_BF16 and on GPUs; the same weight file).
    ``notes`` (free text) is allowed and ignored, ``training`` is the recipe (:mod:`hgd.train.recipe`);
    any other key, here or in a member or denoiser entry, is refused with the file's name, as is a
    value of the wrong type.
    """
    path = pathlib.Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the config must be a JSON object")
    try:
        _check_keys(raw, CONFIG_KEYS, "the config")
        if not isinstance(raw.get("members"), list) or not raw["members"]:
            raise ValueError("'members' must list at least one target model")
        members = tuple(_member(entry, path.parent) for entry in raw["members"])
        transform = None if raw.get("transform") is None else from_config(raw["transform"])
        batch_size = raw.get("batch_size", 32)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"'batch_size' must be a positive integer, got {batch_size!r}")
        return DefenseConfig(members=members, batch_size=batch_size,
                             shared_denoiser=_denoiser(raw.get("denoiser"), path.parent), transform=transform,
                             source=path)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


CONFIG_KEYS = frozenset({"members", "denoiser", "batch_size", "transform", "training", "notes"})
"""What a defense configuration may hold (``training`` is read by :mod:`hgd.train.recipe`)."""
MEMBER_KEYS = frozenset({"model", "denoiser"})
DENOISER_KEYS = frozenset({"weights", "width", "lateral", "dtype_policy"})


def _check_keys(entry: object, known: frozenset[str], where: str) -> None:
    """Refuse anything but a JSON object with only ``known`` keys: a misspelled key must not be ignored
    (a misspelled ``denoiser`` would otherwise run the undefended ensemble)."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a JSON object, got {entry!r}")
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")


def _member(entry: object, base: pathlib.Path) -> Member:
    _check_keys(entry, MEMBER_KEYS, "a 'members' entry")
    if "model" not in entry:
        raise ValueError(f"a 'members' entry needs 'model': {entry!r}")
    return Member(target=get_model(entry["model"]), denoiser=_denoiser(entry.get("denoiser"), base))


def _denoiser(entry: object, base: pathlib.Path) -> DenoiserSpec | None:
    if entry is None:
        return None
    _check_keys(entry, DENOISER_KEYS, "a 'denoiser'")
    if not isinstance(entry.get("weights"), str):
        raise ValueError(f"a 'denoiser' needs 'weights', a path relative to the config: {entry!r}")
    width, lateral = entry.get("width", 1.0), entry.get("lateral", True)
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(f"a denoiser's 'width' must be a positive number, got {width!r}")
    if not isinstance(lateral, bool):
        raise ValueError(f"a denoiser's 'lateral' must be true or false, got {lateral!r}")
    policy = entry.get("dtype_policy", "float32")
    if policy not in DTYPE_POLICIES:
        raise ValueError(f"a denoiser's 'dtype_policy' must be one of {list(DTYPE_POLICIES)}, got {policy!r}")
    return DenoiserSpec(weights=base / entry["weights"], width=float(width), lateral=lateral, dtype_policy=policy)


def shared_normalization(members: Sequence[Member]) -> tuple[Affine, Affine]:
    """The ``(offset, scale)`` all members share; a shared denoiser needs one input space."""
    spaces = {(m.target.offset, m.target.scale) for m in members}
    if len(spaces) != 1:
        names = [m.target.name.value for m in members]
        raise ValueError(f"a shared denoiser needs members with one normalization; {names} have {sorted(spaces)}")
    return spaces.pop()


def build_member(member: Member, image_size: int | None = IMAGE_SIZE, index: int = 0) -> keras.Model:
    """Pixels (float 0..255) -> one member's logits, through its denoiser if it has one.

    ``index`` (the position in the ensemble) makes the name unique, so one target model may
    appear twice, e.g. with two different denoisers.
    """
    name = f"member{index}_{member.target.name.value}"
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    x = member.target.normalize()(pixels)
    if member.denoiser is not None:
        x = member.denoiser.build()(x)
    logits = member.target.build_from_normalized(image_size)(x)
    return keras.Model(pixels, logits, name=f"{name}_{'hgd' if member.denoiser else 'undefended'}")


def build_defended_model(members: Sequence[Member], image_size: int | None = IMAGE_SIZE, *,
                         shared_denoiser: DenoiserSpec | None = None) -> keras.Model:
    """Pixels -> the members' averaged logits (1000 classes, 0-based): the defense as one model.

    With ``shared_denoiser``, one denoiser cleans the normalized image once for every member.
    """
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    if shared_denoiser is None:
        logits = [build_member(m, image_size, i)(pixels) for i, m in enumerate(members)]
    else:
        denoised = shared_denoiser.build()(members[0].target.normalize()(pixels))
        logits = [m.target.build_from_normalized(image_size)(denoised) for m in members]
    averaged = logits[0] if len(logits) == 1 else keras.layers.Average(name="ensemble_logits")(logits)
    return keras.Model(pixels, averaged, name="defended_model")
