"""HGD toolkit: competition-style adversarial defense (NIPS 2017 harness, HGD denoisers).

Public surface: the target-model zoo (:mod:`hgd.zoo`), the DUNET denoiser
(:func:`hgd.dunet.build_dunet`), the defended model (:mod:`hgd.defended`) and
the pixel I/O (:mod:`hgd.images`); entry points are ``python -m hgd.defense``
and ``python -m hgd.evaluate``.
"""
