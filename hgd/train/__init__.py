"""HGD training: adversarial training pairs (Table 1), the guided losses, and the resumable fit.

Three steps, each a subcommand of ``python -m hgd.cli.train`` (``--help`` on each):

1. ``data``: attack a folder of clean labelled images the way the paper's Table 1 does (FGSM on
   each training model and on their ensemble, I-FGSM 2/4/8 on the ensemble, clean and random
   noise; eps drawn per image from 1..16) and cache the uint8 adversarial PNGs
   (:mod:`hgd.train.pairs`).
2. ``fit``: train a DUNET on (adversarial, clean) pairs with the PGD / FGD / LGD / CGD loss of
   one or several frozen target models (:mod:`hgd.train.guidance`, :mod:`hgd.train.fit`); the
   checkpoint with the lowest validation loss is kept and an interrupted run resumes. With
   ``--adaptive-fraction``, part of every batch is attacked afresh through the denoiser being
   trained (defense-aware adversarial training, :mod:`hgd.train.adaptive`).
3. The trained ``*.weights.h5`` go into a defense's ``config.json`` (:mod:`hgd.defenses.defended`).
"""
