"""Training pairs: (adversarial, clean) images built the way the paper's Table 1 does, cached as PNGs.

For every clean image of a labelled folder and every training attack, one adversarial image. The
``table1`` attack set (the paper's):

* ``noop`` (the clean image itself) and ``random_noise`` (uniform in the eps box);
* ``fgsm_<model>`` for each training model and ``fgsm_ensemble`` on their averaged logits;
* ``ifgsm2_ensemble``, ``ifgsm4_ensemble``, ``ifgsm8_ensemble``: 2/4/8 steps of eps/steps.

The ``competition`` set adds the harness's strongest untargeted attacks as ``attacks/`` ships them,
``ifgsm10_ensemble`` and ``mifgsm10_ensemble`` (10 steps of eps/10, MI-FGSM's momentum 1.0): the
attacks a defense shipped into the competition must undo, which Table 1's few-step ones only approach.

eps is drawn per (image, attack) from the integers ``1..max_epsilon``; the attack's label is the
attacked model's own prediction on the clean image (the reference code's choice); every image is
quantized explicitly (:func:`hgd.attacks.quantize`, never a min-max stretch). The split into
training and validation is by image, so an image's variants never straddle it.

Layout of the output folder (outside the checkout: it is derived from the data sets)::

    spec.json                          what was asked (resuming with another spec is refused)
    pairs.csv                          the whole plan, one row per pair
    adversarial/<attack>/<stem>.png    the attacked images (noop rows point at the clean file)

A pair is done when its PNG exists (written atomically), so a killed run resumes where it was.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import json
import logging
import pathlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from hgd.attacks.factory import make_attack
from hgd.io.datasets import LabelledImage, read_dataset
from hgd.io.files import write_atomically
from hgd.io.images import load_image, save_png
from hgd.zoo import ModelName

log = logging.getLogger("hgd.train.pairs")

SPEC_FILE = "spec.json"
PAIRS_FILE = "pairs.csv"
ADVERSARIAL_DIR = "adversarial"
TRAIN, VALIDATION = "train", "val"
PAIR_FIELDS = ("image", "split", "label0", "attack", "epsilon", "clean", "adversarial")
EPSILON_WEIGHTINGS = ("uniform", "bound")
"""How often training draws a pair by its eps (:func:`weight_by_epsilon`)."""
BOUND_STEP = 4
"""The competition's eps bounds are multiples of this (EVAL: 4, 8, 12, 16)."""
ATTACK_KINDS = ("noop", "random_noise", "fgsm", "ifgsm", "mifgsm")
"""The kinds of training attack (:class:`TableAttack`); what :func:`weight_by_attack` weighs by."""


@dataclasses.dataclass(frozen=True)
class TableAttack:
    """An attack as the paper's tables name one: a kind, the models it attacks (logits averaged), its steps."""

    name: str
    kind: str  # one of ATTACK_KINDS
    models: tuple[ModelName, ...] = ()
    steps: int = 0

    @property
    def cost(self) -> int:
        """Model gradients per image: what the attack costs to build (0 for noop and random noise)."""
        return self.steps * len(self.models)

    def build(self, seed: int) -> Any:
        parameters = {"random_noise": {"seed": seed}, "ifgsm": {"steps": self.steps},
                      "mifgsm": {"steps": self.steps, "mu": 1.0}}.get(self.kind, {})
        return make_attack(self.kind, **parameters)


def table1_attacks(models: Sequence[ModelName]) -> list[TableAttack]:
    """The training attacks of Table 1 for ``models`` (the paper: IncV3, IncResV2, ResNet50v2)."""
    models = tuple(ModelName(m) for m in models)
    if not models:
        raise ValueError("the training attacks need at least one model")
    found = [TableAttack("noop", "noop"), TableAttack("random_noise", "random_noise")]
    found += [TableAttack(f"fgsm_{m.value}", "fgsm", (m,), 1) for m in models]
    on = _target_name(models)
    if len(models) > 1:
        found.append(TableAttack(f"fgsm_{on}", "fgsm", models, 1))
    found += [TableAttack(f"ifgsm{steps}_{on}", "ifgsm", models, steps) for steps in (2, 4, 8)]
    return found


def competition_attacks(models: Sequence[ModelName]) -> list[TableAttack]:
    """Table 1's attacks for ``models`` and the competition's 10-step I-FGSM and MI-FGSM on their ensemble
    (the settings of ``attacks/ifgsm`` and ``attacks/mifgsm``)."""
    models, found = tuple(ModelName(m) for m in models), table1_attacks(models)
    on = _target_name(models)
    return found + [TableAttack(f"ifgsm10_{on}", "ifgsm", models, 10),
                    TableAttack(f"mifgsm10_{on}", "mifgsm", models, 10)]


def _target_name(models: tuple[ModelName, ...]) -> str:
    """What an attack's name says it attacks: its one model, or ``ensemble`` (averaged logits)."""
    return "ensemble" if len(models) > 1 else models[0].value


ATTACK_SETS: dict[str, Callable[[Sequence[ModelName]], list[TableAttack]]] = {
    "table1": table1_attacks, "competition": competition_attacks}
"""The training attack sets a pair folder may be built with, by name."""


@dataclasses.dataclass(frozen=True)
class PairSpec:
    """What a training-pair folder holds: resuming must ask for the same thing.

    Attributes:
        source: the clean labelled folder.
        models: the training attacks' models (Lite2 stays out by default: it is the black-box model).
        seed: seeds the split, the eps draws, the attack choice and the noise.
        validation_fraction: share of the images held out for validation.
        max_epsilon: eps is drawn from ``1..max_epsilon``.
        attacks_per_image: ``None``: every training attack on every image; ``k``: ``k`` of them,
            drawn per image (a cheaper data set with as many distinct clean images).
        attack_set: which training attacks (:data:`ATTACK_SETS`): ``table1`` or ``competition``.
    """

    source: str
    models: tuple[str, ...] = (ModelName.LITE0.value, ModelName.LITE1.value)
    seed: int = 0
    validation_fraction: float = 0.1
    max_epsilon: int = 16
    attacks_per_image: int | None = None
    attack_set: str = "table1"

    def __post_init__(self) -> None:
        if self.attack_set not in ATTACK_SETS:
            raise ValueError(f"attack_set must be one of {sorted(ATTACK_SETS)}, got {self.attack_set!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not 1 <= self.max_epsilon <= 255:
            raise ValueError(f"max_epsilon must be in 1..255, got {self.max_epsilon}")
        count = len(self.attacks())
        if self.attacks_per_image is not None and not 1 <= self.attacks_per_image <= count:
            raise ValueError(f"attacks_per_image must be in 1..{count}, got {self.attacks_per_image}")

    def attacks(self) -> list[TableAttack]:
        return ATTACK_SETS[self.attack_set]([ModelName(m) for m in self.models])

    @classmethod
    def from_json(cls, text: str) -> PairSpec:
        raw = json.loads(text)
        return cls(**{**raw, "models": tuple(raw["models"])})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"


@dataclasses.dataclass(frozen=True)
class Pair:
    """One training example: where its clean and adversarial images are, and what made it."""

    image: str
    split: str
    label0: int
    attack: str
    epsilon: int
    clean: pathlib.Path
    adversarial: pathlib.Path


def weight_by_epsilon(pairs: Sequence[Pair], weighting: str) -> list[Pair]:
    """``pairs`` with each repeated as often as ``weighting`` draws it in training.

    ``uniform``: once each, as built (eps drawn uniformly from 1..max_epsilon). ``bound``: as often as the
    competition bound its eps falls under, in steps of :data:`BOUND_STEP` (eps 1-4 once, 5-8 twice, 9-12
    three times, 13-16 four times). Why: the harness and the pool's validation pairs show the defense losing
    its images at the large bounds; this spends more of the training there (eps 13-16: 40 % of the draws
    instead of 25 %). The attacks' shares stay as built in expectation (each attack's eps are drawn alike).
    """
    if check_weighting(weighting) == "uniform":
        return list(pairs)
    return [pair for pair in pairs for _ in range(bound_of(pair.epsilon) // BOUND_STEP)]


def weight_by_attack(pairs: Sequence[Pair], weights: Mapping[str, int], attacks: Sequence[TableAttack]) -> list[Pair]:
    """``pairs`` with each repeated as often as ``weights`` names its attack's kind (1 when it names none);
    ``attacks``: the pair set's (their kinds). Why: to spend more of the training on the attacks a defense
    fails most without rebuilding the pairs (MI-FGSM is one training attack in eleven of the ``competition``
    set); ``docs/results/training.md`` measures what drawing it three times as often did."""
    kinds = {attack.name: attack.kind for attack in attacks}
    check_attack_weights(weights)
    return [pair for pair in pairs for _ in range(weights.get(kinds[pair.attack], 1))]


def check_attack_weights(weights: Mapping[str, int]) -> Mapping[str, int]:
    """``weights`` if it maps kinds of :data:`ATTACK_KINDS` to integers >= 1, else a ValueError saying which."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"attack_weights: a mapping of attack kind to draws, e.g. {{\"mifgsm\": 3}}, got {weights!r}")
    unknown = sorted(set(weights) - set(ATTACK_KINDS))
    if unknown:
        raise ValueError(f"attack_weights: unknown attack kinds {unknown}; the kinds are {ATTACK_KINDS}")
    bad = {kind: n for kind, n in weights.items() if isinstance(n, bool) or not isinstance(n, int) or n < 1}
    if bad:
        raise ValueError(f"attack_weights: each weight is a whole number of draws >= 1, got {bad}")
    return weights


def check_weighting(weighting: str) -> str:
    """``weighting`` if it is one of :data:`EPSILON_WEIGHTINGS`, else a ValueError naming them."""
    if weighting not in EPSILON_WEIGHTINGS:
        raise ValueError(f"epsilon_weighting must be one of {EPSILON_WEIGHTINGS}, got {weighting!r}")
    return weighting


def bound_of(epsilon: int) -> int:
    """The competition bound ``epsilon`` falls under: the multiple of :data:`BOUND_STEP` at or above it."""
    return -(-epsilon // BOUND_STEP) * BOUND_STEP


def accuracy_by_bound(outcomes: Iterable[tuple[Pair, bool]],
                      attacks: Sequence[TableAttack]) -> dict[str, dict[int, tuple[int, int]]]:
    """(correct, pairs) by attack kind (``all`` first) and competition bound (:func:`bound_of`), from per-pair
    outcomes such as :func:`hgd.train.fit.validation_scores`'; ``attacks``: the pair set's (their kinds)."""
    kinds = {attack.name: attack.kind for attack in attacks}
    counts: dict[str, dict[int, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    for pair, correct in outcomes:
        for group in ("all", kinds[pair.attack]):
            cell = counts[group][bound_of(pair.epsilon)]
            cell[0] += int(correct)
            cell[1] += 1
    return {group: {bound: (cell[0], cell[1]) for bound, cell in sorted(cells.items())}
            for group, cells in counts.items()}


def plan_pairs(images: Sequence[LabelledImage], spec: PairSpec, out_dir: pathlib.Path) -> list[Pair]:
    """Every pair the spec asks for, deterministically (same spec and images -> same plan)."""
    attacks = spec.attacks()
    rng = np.random.default_rng(spec.seed)
    validation = set(rng.permutation(len(images))[: max(1, round(spec.validation_fraction * len(images)))])
    epsilons = rng.integers(1, spec.max_epsilon + 1, size=(len(images), len(attacks)))
    chosen = np.ones((len(images), len(attacks)), dtype=bool)
    if spec.attacks_per_image is not None:
        chosen[:] = False
        for row in range(len(images)):
            chosen[row, rng.choice(len(attacks), spec.attacks_per_image, replace=False)] = True
    plan = []
    for row, image in enumerate(images):
        stem = image.path.stem
        for column, attack in enumerate(attacks):
            if not chosen[row, column]:
                continue
            adversarial = (image.path if attack.kind == "noop"
                           else out_dir / ADVERSARIAL_DIR / attack.name / f"{stem}.png")
            plan.append(Pair(stem, VALIDATION if row in validation else TRAIN, image.label0, attack.name,
                             int(epsilons[row, column]), image.path, adversarial))
    return plan


def build_pairs(source: pathlib.Path, out_dir: pathlib.Path, spec: PairSpec, *, batch_size: int = 16,
                progress: bool = True, cluster: bool = False,
                select: Callable[[list[Pair]], Sequence[Pair]] | None = None) -> list[Pair]:
    """Attack every clean image of ``source`` as ``spec`` says, into ``out_dir``; resumes.

    ``cluster``: attack the batches on the Ray cluster this process joined (:func:`hgd.cluster.connect`);
    the pairs are the same as here. ``select``: attack only the pairs it picks from the plan (a training
    chunk's share, :func:`hgd.train.continued.chunk_pairs`); the plan file still lists them all. Returns
    the plan; every pair of it (of the selection) exists on disk when this returns.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim(out_dir, spec)
    dataset = read_dataset(pathlib.Path(source).resolve())
    for problem in dataset.problems:
        log.warning("%s: %s", source, problem)
    plan = plan_pairs(dataset.images, spec, out_dir)
    _write_plan(out_dir / PAIRS_FILE, plan, out_dir)
    log.info("%d pairs planned -> %s", len(plan), out_dir)
    attack_pairs(plan if select is None else select(plan), spec.attacks(), seed=spec.seed, batch_size=batch_size,
                 progress=progress, cluster=cluster)
    return plan


def attack_pairs(pairs: Sequence[Pair], attacks: Sequence[TableAttack], *, seed: int, batch_size: int = 16,
                 progress: bool = True, cluster: bool = False) -> None:
    """Write every pair's adversarial PNG that does not exist yet (``pair.attack`` names one of ``attacks``).

    The work goes in batches of pairs that share an attack and an eps, each seeded by its first image, so
    a batch gives the same images wherever it runs: here, or with ``cluster`` on the Ray cluster this
    process joined, one batch per free worker, written here as they come back in order.
    """
    todo = [pair for pair in pairs if not pair.adversarial.is_file()]
    units = list(_work_units(todo, {attack.name: attack for attack in attacks}, batch_size))
    log.info("%d of %d pairs to attack", len(todo), len(pairs))

    def shards() -> Iterator[tuple[str, int, np.ndarray, int]]:
        for attack_name, epsilon, chunk in units:
            clean = np.stack([load_image(pair.clean)[0] for pair in chunk])
            yield attack_name, epsilon, clean, zlib.crc32(f"{seed}/{attack_name}/{chunk[0].image}".encode())

    if cluster:
        from hgd.cluster.shards import map_shards

        results = map_shards(functools.partial(PairAttacker, tuple(attacks)), "attack", shards())
    else:
        attacker = PairAttacker(attacks)
        results = (attacker.attack(*shard) for shard in shards())
    with tqdm(total=len(todo), unit="pair", desc="attacks", disable=not progress) as bar:
        for (_, _, chunk), adversarial in zip(units, results):
            for pair, image in zip(chunk, adversarial):
                pair.adversarial.parent.mkdir(parents=True, exist_ok=True)
                save_png(pair.adversarial, image)
            bar.update(len(chunk))


class PairAttacker:
    """Attacks one batch of pairs; builds each set of attacked models once (here, or on a cluster node)."""

    def __init__(self, attacks: Sequence[TableAttack]) -> None:
        self.attacks = {attack.name: attack for attack in attacks}
        self.models: dict[tuple[ModelName, ...], Any] = {}

    def attack(self, attack_name: str, epsilon: int, clean: np.ndarray, seed: int) -> np.ndarray:
        """The batch's adversarial uint8 images (the attack's label is each model's own prediction)."""
        attack = self.attacks[attack_name]
        model = _model(self.models, attack.models) if attack.models else None
        return attack.build(seed)(model, clean, epsilon=epsilon)


def read_pairs(out_dir: pathlib.Path, *, built_only: bool = False) -> tuple[PairSpec, list[Pair]]:
    """The spec and plan of a pair folder.

    An unfinished folder is refused (the message says how to finish it) unless ``built_only``: then the
    pairs built so far are returned and the missing ones logged per attack, so that training can start
    while `python -m hgd.cli.train data` goes on (the run's pair mix is then not yet Table 1's).
    """
    spec, plan = read_plan(out_dir)
    exists = [pair.adversarial.is_file() for pair in plan]
    built = [pair for pair, there in zip(plan, exists) if there]
    missing = [pair for pair, there in zip(plan, exists) if not there]
    if missing and not built_only:
        raise FileNotFoundError(f"{out_dir}: {len(missing)} of {len(plan)} pairs are not built yet "
                                f"(e.g. {missing[0].adversarial}); rerun `python -m hgd.cli.train data` to finish, "
                                "or train on the built ones (--built-only)")
    if missing:
        by_attack = collections.Counter(pair.attack for pair in missing)
        log.warning("%s: using the %d of %d pairs built so far; not built yet: %s", out_dir,
                    len(built), len(plan), ", ".join(f"{a} {n}" for a, n in sorted(by_attack.items())))
    return spec, built


def read_plan(out_dir: pathlib.Path) -> tuple[PairSpec, list[Pair]]:
    """The spec and every planned pair of a pair folder, built or not."""
    spec = PairSpec.from_json((out_dir / SPEC_FILE).read_text())
    with open(out_dir / PAIRS_FILE, newline="") as f:
        return spec, [_pair_from_row(row, out_dir) for row in csv.DictReader(f)]


def _claim(out_dir: pathlib.Path, spec: PairSpec) -> None:
    path = out_dir / SPEC_FILE
    if path.is_file():
        existing = PairSpec.from_json(path.read_text())
        if existing != spec:
            raise ValueError(f"{out_dir} holds pairs built with another spec:\n{existing}\nasked:\n{spec}\n"
                             "use another folder, or the same options")
    else:
        write_atomically(path, "w", lambda f: f.write(spec.to_json()))


def _write_plan(path: pathlib.Path, plan: Sequence[Pair], out_dir: pathlib.Path) -> None:
    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(PAIR_FIELDS)
        for pair in plan:
            adversarial = (pair.adversarial.relative_to(out_dir) if pair.adversarial.is_relative_to(out_dir)
                           else pair.adversarial)
            writer.writerow([pair.image, pair.split, pair.label0, pair.attack, pair.epsilon, pair.clean, adversarial])

    write_atomically(path, "w", write)


def _pair_from_row(row: dict[str, str], out_dir: pathlib.Path) -> Pair:
    return Pair(row["image"], row["split"], int(row["label0"]), row["attack"], int(row["epsilon"]),
                pathlib.Path(row["clean"]), out_dir / row["adversarial"])


def _work_units(todo: Sequence[Pair], attacks: dict[str, TableAttack],
                batch_size: int) -> Iterator[tuple[str, int, list[Pair]]]:
    """Batches of pairs sharing an attack and an eps (an attack call takes one eps), cheapest attack first:
    a folder stopped part-way (``--built-only`` training) then holds every kind but the costliest."""
    groups: dict[tuple[str, int], list[Pair]] = {}
    for pair in todo:
        groups.setdefault((pair.attack, pair.epsilon), []).append(pair)
    for (attack, epsilon), pairs in sorted(groups.items(), key=lambda item: (attacks[item[0][0]].cost, item[0])):
        for start in range(0, len(pairs), batch_size):
            yield attack, epsilon, pairs[start:start + batch_size]


def _model(cache: dict, names: tuple[ModelName, ...]) -> Callable:
    if names not in cache:
        from hgd.defenses.defended import Member, build_defended_model
        from hgd.zoo import get_model

        cache[names] = build_defended_model([Member(get_model(name)) for name in names])
    return cache[names]
