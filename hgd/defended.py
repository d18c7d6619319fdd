"""The defended model: per member, pixels -> input space -> denoiser -> classifier; logits averaged.

This is HGD's deployment structure (``../shared/docs/hgd-reference.md``): each
target model has its own denoiser, trained with its own FGD and working in that
model's normalized input space; the ensemble combines the members' raw logits
(the competition solution summed them, averaging has the same argmax and keeps
the scale of one model's logits). The whole graph is one Keras model from
pixels to logits, so attacks back-propagate through denoisers and classifiers.
A member without a denoiser is the plain classifier (the undefended baseline).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import keras
import numpy as np

from hgd.dunet import build_dunet
from hgd.images import IMAGE_SIZE
from hgd.zoo import TargetModel, get_model


@dataclasses.dataclass(frozen=True)
class DenoiserSpec:
    """Where a trained DUNET's weights are and which builder options produced them."""

    weights: pathlib.Path
    width: float = 1.0
    lateral: bool = True

    def build(self) -> keras.Model:
        """Build the denoiser and load its trained weights (which must exist)."""
        denoiser = build_dunet(width=self.width, lateral=self.lateral)
        denoiser.load_weights(self.weights)
        return denoiser


@dataclasses.dataclass(frozen=True)
class Member:
    """One ensemble member: a target model and, for HGD, its denoiser."""

    target: TargetModel
    denoiser: DenoiserSpec | None = None


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
    """A defense: its members (the ensemble) and the batch size it classifies with."""

    members: tuple[Member, ...]
    batch_size: int = 32

    def missing_weights(self) -> list[pathlib.Path]:
        """Denoiser weight files the config names that do not exist."""
        return [m.denoiser.weights for m in self.members if m.denoiser and not m.denoiser.weights.is_file()]


def load_config(path: str | pathlib.Path) -> DefenseConfig:
    """Read a defense's ``config.json``; denoiser weight paths are relative to the file.

    Format::

        {"members": [{"model": "efficientnet_lite0",
                      "denoiser": {"weights": "weights/fgd_lite0.weights.h5", "width": 1.0}}, ...],
         "batch_size": 32}
    """
    path = pathlib.Path(path)
    raw = json.loads(path.read_text())
    if not raw.get("members"):
        raise ValueError(f"{path}: 'members' must list at least one target model")
    members = tuple(_member(entry, path.parent) for entry in raw["members"])
    return DefenseConfig(members=members, batch_size=int(raw.get("batch_size", 32)))


def _member(entry: dict, base: pathlib.Path) -> Member:
    denoiser = entry.get("denoiser")
    spec = None
    if denoiser is not None:
        spec = DenoiserSpec(
            weights=base / denoiser["weights"],
            width=float(denoiser.get("width", 1.0)),
            lateral=bool(denoiser.get("lateral", True)),
        )
    return Member(target=get_model(entry["model"]), denoiser=spec)


def build_member(member: Member, image_size: int | None = IMAGE_SIZE, index: int = 0) -> keras.Model:
    """Pixels (float 0..255) -> one member's logits, through its denoiser if it has one.

    ``index`` (the position in the ensemble) makes the name unique, so one target model may
    appear twice, e.g. with two different denoisers.
    """
    name = f"member{index}_{member.target.name.value}"
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    x = member.target.to_input_space()(pixels)
    if member.denoiser is not None:
        x = member.denoiser.build()(x)
    logits = member.target.build_backbone()(x)
    return keras.Model(pixels, logits, name=f"{name}_{'hgd' if member.denoiser else 'undefended'}")


def build_defended_model(members: Sequence[Member], image_size: int | None = IMAGE_SIZE) -> keras.Model:
    """Pixels -> the members' averaged logits (1000 classes, 0-based): the defense as one model."""
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    logits = [build_member(m, image_size, i)(pixels) for i, m in enumerate(members)]
    averaged = logits[0] if len(logits) == 1 else keras.layers.Average(name="ensemble_logits")(logits)
    return keras.Model(pixels, averaged, name="defended_model")


def competition_labels(logits: np.ndarray) -> np.ndarray:
    """1000-class, 0-based logits -> competition labels 1..1000 (TF-Slim order; 0 is background)."""
    return np.argmax(logits, axis=-1) + 1
