"""Attacks on any differentiable Keras model mapping pixels (float32 0..255, NHWC) to logits (0-based).

Pixel space throughout: ``epsilon`` and step sizes are pixel levels (0..255). Every attack takes
uint8 images and returns uint8 adversarial images inside the epsilon box of the clean ones
(explicitly rounded, never rescaled: :func:`quantize`)::

    from hgd import attacks
    adv = attacks.MIFGSM(steps=10)(model, images, epsilon=16)                 # untargeted (own prediction)
    adv = attacks.FGSM()(model, images, labels, epsilon=16)                    # untargeted (given labels)
    adv = attacks.BIM(steps=20, alpha=1)(model, images, attacks.TargetedMisclassification(targets), epsilon=16)
    adv = attacks.BIM()(model, images, attacks.LeastLikelyClass(), epsilon=16)

Gradients come from :func:`hgd.backend.input_gradient`, so TensorFlow and JAX both work. The model
can be a plain classifier or the whole defended model (denoisers + classifiers), or any
:class:`Model` (:mod:`hgd.attacks.models`): a defense with a transform that is not differentiable
goes through :class:`BPDA`, one that is random through :class:`EOT` as well::

    from hgd.defenses.transforms import JPEGCompression
    adv = attacks.PGD(steps=100, alpha=1, loss="margin", restarts=2)(
        attacks.BPDA(keras_model, JPEGCompression(quality=75)), images, epsilon=16)
    adv = attacks.SquareAttack(queries=1000)(keras_model, images, epsilon=16)   # gradient-free

Transfer attacks (:mod:`hgd.attacks.transfer`) are the iterative family with input diversity (DI),
translation invariance (TI), scale copies (SI) and Nesterov's look-ahead (NI) switched on; presets
carry the published settings, and every option combines with the others::

    adv = attacks.DIMIFGSM(seed=0)(model, images, epsilon=16)          # M-DI²-FGSM, p = 0.5
    adv = attacks.TIDIMIFGSM(seed=0)(model, images, epsilon=16)        # TI-DIM, 15x15 kernel
    adv = attacks.SINITIDIM(seed=0)(model, images, epsilon=16)         # SI-NI-TI-DIM, 5 copies
    adv = attacks.BIM(steps=10)(attacks.InputDiversity(model, seed=0), images, labels, epsilon=16)  # DI as a model
"""

from hgd.attacks.base import Attack, Box, quantize
from hgd.attacks.baselines import NoOp, RandomNoise
from hgd.attacks.criteria import Criterion, Goal, LeastLikelyClass, Misclassification, TargetedMisclassification
from hgd.attacks.gradient_sign import (
    BasicIterativeMethod,
    DiverseInputsMomentumIterativeMethod,
    FastGradientSignMethod,
    IterativeGradientSignAttack,
    MomentumIterativeMethod,
    ProjectedGradientDescent,
    ScaleInvariantNesterovMethod,
    TranslationInvariantDiverseInputsMethod,
    kurakin_steps,
)
from hgd.attacks.losses import Loss
from hgd.attacks.models import BPDA, EOT, InputDiversity, KerasModel, Model, as_model
from hgd.attacks.square import SquareAttack

# Short aliases (foolbox style).
FGSM = FastGradientSignMethod
BIM = BasicIterativeMethod
IFGSM = BasicIterativeMethod
PGD = ProjectedGradientDescent
MIFGSM = MomentumIterativeMethod
DIMIFGSM = DiverseInputsMomentumIterativeMethod
TIDIMIFGSM = TranslationInvariantDiverseInputsMethod
SINITIDIM = ScaleInvariantNesterovMethod
Square = SquareAttack

__all__ = [
    "Attack",
    "Box",
    "quantize",
    "IterativeGradientSignAttack",
    "NoOp",
    "RandomNoise",
    "FastGradientSignMethod",
    "BasicIterativeMethod",
    "ProjectedGradientDescent",
    "MomentumIterativeMethod",
    "DiverseInputsMomentumIterativeMethod",
    "TranslationInvariantDiverseInputsMethod",
    "ScaleInvariantNesterovMethod",
    "SquareAttack",
    "kurakin_steps",
    "Loss",
    "Model",
    "KerasModel",
    "BPDA",
    "EOT",
    "InputDiversity",
    "as_model",
    "Criterion",
    "Goal",
    "Misclassification",
    "TargetedMisclassification",
    "LeastLikelyClass",
    "FGSM",
    "BIM",
    "IFGSM",
    "PGD",
    "MIFGSM",
    "DIMIFGSM",
    "TIDIMIFGSM",
    "SINITIDIM",
    "Square",
]
