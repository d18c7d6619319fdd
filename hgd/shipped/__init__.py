"""The shipped defenses, by name, from any install (editable or not): the public way in.

The data are the competition folders themselves: ``hgd/shipped/defense`` and ``hgd/shipped/baselines``
are links to the repository's ``defense/`` and ``baselines/``, installed as package data, so each
configuration and weights file exists once. Names:

* ``hgd_lite``: the shipped HGD defense (``defense/config.json``: one FGD DUNET in front of the
  EfficientNet-Lite0/1/2 ensemble);
* ``competition4``, ``lite_adaptive``, ``lite_pgd_pixel``, ``lite_distilled``: its profiles
  (``defense/profiles/``);
* ``undefended``, ``jpeg``, ``bit_depth``: the baselines without a denoiser (``baselines/``).

::

    import hgd
    model = hgd.load_defense("hgd_lite")        # uint8 or float pixels (N, 299, 299, 3) -> 1000 logits
    config = hgd.defense_config("jpeg")         # a defense with an input transformation:
    logits = config.build()(config.preprocess(images))
"""

from __future__ import annotations

import importlib.resources
import pathlib
from typing import Any

_ROOT = "hgd.shipped"
_HGD_LITE = "hgd_lite"
_PROFILES = ("competition4", "lite_adaptive", "lite_pgd_pixel", "lite_distilled")
_BASELINES = ("undefended", "jpeg", "bit_depth")


def list_defenses() -> list[str]:
    """The names :func:`load_defense` and :func:`defense_config` take."""
    return [_HGD_LITE, *_PROFILES, *_BASELINES]


def config_path(name: str) -> pathlib.Path:
    """The configuration file of the shipped defense ``name`` (an unknown name lists the known ones)."""
    root = pathlib.Path(str(importlib.resources.files(_ROOT)))
    if name == _HGD_LITE:
        return root / "defense" / "config.json"
    if name in _PROFILES:
        return root / "defense" / "profiles" / f"{name}.json"
    if name in _BASELINES:
        return root / "baselines" / name / "config.json"
    raise ValueError(f"no shipped defense {name!r}; shipped: {list_defenses()}")


def defense_config(name: str) -> Any:
    """The :class:`hgd.defenses.defended.DefenseConfig` of the shipped defense ``name``."""
    from hgd.defenses.defended import load_config

    return load_config(config_path(name))


def load_defense(name: str = _HGD_LITE) -> Any:
    """The shipped defense ``name`` as one differentiable Keras model: pixels (N, 299, 299, 3), 0..255 ->
    1000 logits (0-based classes), denoisers and classifiers in one graph.

    Refuses (:class:`hgd.defenses.MissingWeights`) a defense whose trained weights are not installed, and a
    defense with an input transformation (``jpeg``, ``bit_depth``), which no Keras graph can hold: use
    :func:`defense_config` and ``config.build()(config.preprocess(images))`` for those.
    """
    config = defense_config(name)
    config.require_weights()
    if config.transform is not None:
        raise ValueError(f"{name!r} transforms its input first ({config.transform!r}), outside any Keras graph; "
                         f"use hgd.defense_config({name!r}): config.build()(config.preprocess(images))")
    return config.build()
