"""Criteria: what an attack's loss is about (one idea: the class, and whether to move to or away from it).

* :class:`Misclassification` — untargeted: maximize the loss (cross-entropy or margin) of a label. By default the
  label is the model's own prediction on the clean image (HGD's training recipe attacked that way,
  and a competition attack never sees the true labels); pass the true labels to use them.
* :class:`TargetedMisclassification` — targeted: minimize the loss of a target class.
* :class:`LeastLikelyClass` — targeted at the clean image's least likely class (Kurakin et al. 2016's
  "iterative least-likely class" method).

Classes are 0-based (the models' order); the competition's labels are these plus one. ``model``
is anything :func:`hgd.attacks.models.as_model` takes (a Keras model or an attack model).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Union

import numpy as np

from hgd.attacks.models import as_model


@dataclasses.dataclass(frozen=True)
class Goal:
    """A criterion resolved on a batch: one 0-based class per image, and the direction.

    Attributes:
        classes: ``(N,)`` int32 classes the loss is computed for.
        targeted: ``True``: move towards ``classes`` (minimize their cross-entropy); ``False``:
            away from them (maximize it).
    """

    classes: np.ndarray
    targeted: bool


class Criterion(abc.ABC):
    """Turns clean images into a :class:`Goal` (possibly by asking the model)."""

    targeted: bool = False

    @abc.abstractmethod
    def goal(self, model: Any, images: np.ndarray) -> Goal:
        """The goal for float32 pixel ``images`` (N, H, W, 3) under ``model``."""


def _check_classes(values: Any, what: str, count: int, model: Any) -> np.ndarray:
    classes = np.asarray(values)
    if classes.ndim != 1 or classes.shape[0] != count:
        raise ValueError(f"{what} must be a 1-D array with one class per image ({count}), got shape {classes.shape}")
    if classes.size and not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"{what} must be integers (0-based classes), got dtype {classes.dtype}")
    num_classes = _num_classes(model)
    if classes.size and (classes.min() < 0 or (num_classes is not None and classes.max() >= num_classes)):
        bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ValueError(f"{what} must be 0-based classes in {bound}, got values {classes.min()}..{classes.max()}")
    return classes.astype(np.int32)


def _num_classes(model: Any) -> int | None:
    model = as_model(model)
    return None if model is None else model.num_classes


def _short(values: np.ndarray | None) -> str:
    if values is None:
        return "None"
    return np.array2string(np.asarray(values), threshold=6, separator=", ")


class Misclassification(Criterion):
    """Untargeted: push the images away from ``labels`` (maximize their cross-entropy).

    Args:
        labels: ``(N,)`` 0-based classes; ``None`` (default): the model's own prediction on the
            clean images.
    """

    targeted = False

    def __init__(self, labels: Any = None) -> None:
        self.labels = None if labels is None else np.asarray(labels)

    def goal(self, model: Any, images: np.ndarray) -> Goal:
        if self.labels is None:
            return Goal(as_model(model).logits(images).argmax(axis=-1).astype(np.int32), targeted=False)
        return Goal(_check_classes(self.labels, "labels", len(images), model), targeted=False)

    def __repr__(self) -> str:
        return f"Misclassification(labels={_short(self.labels)})"


class TargetedMisclassification(Criterion):
    """Targeted: pull the images towards ``targets`` (minimize their cross-entropy).

    Args:
        targets: ``(N,)`` 0-based target classes (competition target ``t`` -> ``t - 1``).
    """

    targeted = True

    def __init__(self, targets: Any) -> None:
        if targets is None:
            raise ValueError("TargetedMisclassification needs targets (0-based classes), got None")
        self.targets = np.asarray(targets)

    def goal(self, model: Any, images: np.ndarray) -> Goal:
        return Goal(_check_classes(self.targets, "targets", len(images), model), targeted=True)

    def __repr__(self) -> str:
        return f"TargetedMisclassification(targets={_short(self.targets)})"


class LeastLikelyClass(Criterion):
    """Targeted at each clean image's least likely class (argmin of the clean logits)."""

    targeted = True

    def goal(self, model: Any, images: np.ndarray) -> Goal:
        return Goal(as_model(model).logits(images).argmin(axis=-1).astype(np.int32), targeted=True)

    def __repr__(self) -> str:
        return "LeastLikelyClass()"


CriterionLike = Union[Criterion, np.ndarray, list, None]


def as_criterion(criterion: CriterionLike) -> Criterion:
    """``None`` -> ``Misclassification()``; labels -> ``Misclassification(labels)``; a criterion as is."""
    if criterion is None:
        return Misclassification()
    if isinstance(criterion, Criterion):
        return criterion
    return Misclassification(criterion)
