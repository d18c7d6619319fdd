"""HGD toolkit: competition-style adversarial defense (NIPS 2017 harness, HGD denoisers).

Public surface: the target-model zoo (:mod:`hgd.zoo`), the DUNET denoiser
(:func:`hgd.defenses.dunet.build_dunet`), the defended model (:mod:`hgd.defenses.defended`) and
the pixel I/O (:mod:`hgd.io.images`); entry points are ``python -m hgd.cli.run_defense``
and ``python -m hgd.cli.evaluate``.
"""
