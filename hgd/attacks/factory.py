"""The one way a name becomes an attack object: configs, training pairs and the security evaluation.

The parameters an attack accepts are read from its class's signature (its keyword-only arguments),
so a new parameter of an attack class can be set from a config without editing a list here.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any


class AttackName(str, enum.Enum):
    """Attack ids a config, a training recipe or the security evaluation may name."""

    NOOP = "noop"
    RANDOM_NOISE = "random_noise"
    FGSM = "fgsm"
    IFGSM = "ifgsm"
    BIM = "bim"
    PGD = "pgd"
    MIFGSM = "mifgsm"
    DI_MIFGSM = "di_mifgsm"
    TI_DI_MIFGSM = "ti_di_mifgsm"
    SI_NI_TI_DI_FGSM = "si_ni_ti_di_fgsm"
    SQUARE = "square"

    def attack_class(self) -> type:
        from hgd import attacks

        return {
            AttackName.NOOP: attacks.NoOp,
            AttackName.RANDOM_NOISE: attacks.RandomNoise,
            AttackName.FGSM: attacks.FGSM,
            AttackName.IFGSM: attacks.BIM,
            AttackName.BIM: attacks.BIM,
            AttackName.PGD: attacks.PGD,
            AttackName.MIFGSM: attacks.MIFGSM,
            AttackName.DI_MIFGSM: attacks.DIMIFGSM,
            AttackName.TI_DI_MIFGSM: attacks.TIDIMIFGSM,
            AttackName.SI_NI_TI_DI_FGSM: attacks.SINITIDIM,
            AttackName.SQUARE: attacks.SquareAttack,
        }[self]


def attack_name(name: AttackName | str) -> AttackName:
    """``name`` as an :class:`AttackName`; an unknown one is refused with the known ones."""
    try:
        return AttackName(name)
    except ValueError:
        raise ValueError(f"unknown attack {name!r}; known: {[a.value for a in AttackName]}") from None


def accepted_parameters(name: AttackName | str) -> list[str]:
    """The keyword arguments the attack ``name`` takes, from its class's signature."""
    signature = inspect.signature(attack_name(name).attack_class())
    return [p.name for p in signature.parameters.values() if p.kind == p.KEYWORD_ONLY]


def all_parameters() -> frozenset[str]:
    """Every keyword argument any attack takes (the parameter keys an attack config may hold)."""
    return frozenset(p for name in AttackName for p in accepted_parameters(name))


def make_attack(name: AttackName | str, **parameters: Any) -> Any:
    """The attack ``name`` with ``parameters``; one it does not take is refused with the ones it takes."""
    name = attack_name(name)
    accepted = accepted_parameters(name)
    rejected = sorted(set(parameters) - set(accepted))
    if rejected:
        raise ValueError(f"attack {name.value!r} takes no parameter(s) {rejected}; it takes {accepted}")
    return name.attack_class()(**parameters)


SHIPPED_TRANSFER_ATTACKS: dict[str, dict[str, Any]] = {
    "mifgsm": {"attack": "mifgsm", "steps": 10, "mu": 1.0},
    "di_mifgsm": {"attack": "di_mifgsm", "steps": 10, "mu": 1.0, "diversity_prob": 0.5, "seed": 0},
    "ti_di_mifgsm": {"attack": "ti_di_mifgsm", "steps": 10, "mu": 1.0, "diversity_prob": 0.5, "ti_kernel": 15,
                     "seed": 0},
    "si_ni_ti_di_fgsm": {"attack": "si_ni_ti_di_fgsm", "steps": 3, "mu": 1.0, "nesterov": True, "scale_copies": 5,
                         "diversity_prob": 0.5, "ti_kernel": 7, "seed": 0},
}
"""The shipped untargeted ensemble attacks built to transfer, by submission name, with the attack settings
of ``attacks/<name>/config.json`` (a test holds the two equal): what the security evaluation's oblivious
transfer rows and the held-out transfer check run, so they measure the attacks the harness ships."""


def make_transfer_attack(name: str, seed: int | None = None) -> Any:
    """The shipped transfer attack ``name`` (:data:`SHIPPED_TRANSFER_ATTACKS`), its random draws seeded by
    ``seed`` where it takes one (default: the submission's seed)."""
    if name not in SHIPPED_TRANSFER_ATTACKS:
        raise ValueError(f"no shipped transfer attack {name!r}; shipped: {sorted(SHIPPED_TRANSFER_ATTACKS)}")
    parameters = dict(SHIPPED_TRANSFER_ATTACKS[name])
    attack = parameters.pop("attack")
    if seed is not None and "seed" in accepted_parameters(attack):
        parameters["seed"] = seed
    return make_attack(attack, **parameters)
