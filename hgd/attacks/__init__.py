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
can be a plain classifier or the whole defended model (denoisers + classifiers).
"""

from hgd.attacks.base import Attack, Box, quantize
from hgd.attacks.baselines import NoOp, RandomNoise
from hgd.attacks.criteria import Criterion, Goal, LeastLikelyClass, Misclassification, TargetedMisclassification
from hgd.attacks.gradient_sign import (
    BasicIterativeMethod,
    FastGradientSignMethod,
    IterativeGradientSignAttack,
    MomentumIterativeMethod,
    ProjectedGradientDescent,
    kurakin_steps,
)

# Short aliases (foolbox style).
FGSM = FastGradientSignMethod
BIM = BasicIterativeMethod
IFGSM = BasicIterativeMethod
PGD = ProjectedGradientDescent
MIFGSM = MomentumIterativeMethod

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
    "kurakin_steps",
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
]
