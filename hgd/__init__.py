"""HGD toolkit: competition-style adversarial defense (NIPS 2017 harness, HGD denoisers).

The public surface, for a library user (``docs/guide/running-a-defense.md``)::

    import hgd
    hgd.list_defenses()                       # the shipped defenses and baselines
    model = hgd.load_defense("hgd_lite")      # the shipped HGD defense: pixels -> logits, one Keras model
    config = hgd.defense_config("jpeg")       # any shipped defense's configuration

The packages (``docs/ARCHITECTURE.md``): :mod:`hgd.io`, :mod:`hgd.zoo`, :mod:`hgd.defenses`,
:mod:`hgd.attacks`, :mod:`hgd.evaluation`, :mod:`hgd.train`, :mod:`hgd.runner`; the commands are
``python -m hgd.cli.NAME``.
"""

from hgd.shipped import defense_config, list_defenses, load_defense

__all__ = ["defense_config", "list_defenses", "load_defense"]
