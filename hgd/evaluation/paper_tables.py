"""The paper's evaluation on real images: oblivious test sets and the accuracy of denoised classifiers.

Table 2/3 analog (HGD paper, sections 4.1 and 5.2; ``docs/results/paper-tables.md``), on a labelled
folder (``nips17_dev``):

* **WhiteTestSet**: FGSM on the target model and 4-step I-FGSM on the training ensemble, eps 4 and 16;
* **BlackTestSet**: FGSM, 2- and 4-step I-FGSM on a model never used in training, eps 4 and 16.

"White" is the paper's sense: the attacks know the classifier, never the denoiser (oblivious).
Every attack aims away from the attacked model's own clean prediction, as in training. A set's
accuracy at an eps is the mean over its attacks. The adversarial PNGs are cached like training
pairs (:func:`hgd.train.pairs.attack_pairs`), outside the checkout.

The command is ``python -m hgd.cli.experiments`` (``docs/reference/cli.md``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import pathlib
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from hgd.defenses.defended import DenoiserSpec, Member, build_defended_model, load_config
from hgd.io.files import write_atomically
from hgd.io.images import load_image
from hgd.train.fit import FitConfig
from hgd.train.pairs import Pair, TableAttack, attack_pairs
from hgd.io.datasets import read_dataset
from hgd.zoo import ModelName, get_model

log = logging.getLogger(__name__)

WHITE, BLACK = "white", "black"
TEST_EPSILONS = (4, 16)
SPEC_FILE = "testsets.json"
CLEAN = "clean"


@dataclasses.dataclass(frozen=True)
class ObliviousSpec:
    """Which models the test attacks use (the defaults are the Lite stand-ins of the paper's)."""

    source: str
    target: str = ModelName.LITE0.value
    training_models: tuple[str, ...] = (ModelName.LITE0.value, ModelName.LITE1.value)
    black_model: str = ModelName.LITE2.value

    def attacks(self) -> dict[str, list[TableAttack]]:
        target, black = ModelName(self.target), ModelName(self.black_model)
        training = tuple(ModelName(m) for m in self.training_models)
        on = "ensemble" if len(training) > 1 else training[0].value
        return {
            WHITE: [TableAttack(f"fgsm_{target.value}", "fgsm", (target,), 1),
                    TableAttack(f"ifgsm4_{on}", "ifgsm", training, 4)],
            BLACK: [TableAttack(f"fgsm_{black.value}", "fgsm", (black,), 1),
                    TableAttack(f"ifgsm2_{black.value}", "ifgsm", (black,), 2),
                    TableAttack(f"ifgsm4_{black.value}", "ifgsm", (black,), 4)],
        }


def plan_test_sets(spec: ObliviousSpec, out_dir: pathlib.Path) -> list[Pair]:
    """Every (image, set, attack, eps) of the test sets; ``Pair.split`` holds the set's name."""
    plan = []
    for image in read_dataset(spec.source).images:
        stem = image.path.stem
        for test_set, attacks in spec.attacks().items():
            for attack in attacks:
                for eps in TEST_EPSILONS:
                    path = out_dir / test_set / attack.name / f"eps{eps}" / f"{stem}.png"
                    plan.append(Pair(stem, test_set, image.label0, attack.name, eps, image.path, path))
    return plan


def build_test_sets(spec: ObliviousSpec, out_dir: pathlib.Path, *, batch_size: int = 16,
                    progress: bool = True) -> list[Pair]:
    """Attack the clean folder into ``out_dir`` (resumes; refuses a folder built with another spec)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SPEC_FILE
    if path.is_file() and read_test_spec(out_dir) != spec:
        raise ValueError(f"{out_dir} holds test sets of another spec: {read_test_spec(out_dir)}")
    write_atomically(path, "w", lambda f: json.dump(dataclasses.asdict(spec), f, indent=1))
    plan = plan_test_sets(spec, out_dir)
    attacks = [attack for group in spec.attacks().values() for attack in group]
    attack_pairs(plan, attacks, seed=0, batch_size=batch_size, progress=progress)
    return plan


def first_images(plan: Sequence[Pair], count: int | None) -> list[Pair]:
    """The test images of the first ``count`` clean images (by file name; ``None``: all of them).

    A cheaper evaluation on a fixed prefix: every row scored on the same prefix is comparable."""
    stems = sorted({pair.image for pair in plan})
    if count is not None and not 1 <= count <= len(stems):
        raise ValueError(f"--images must be in 1..{len(stems)}, got {count}")
    kept = set(stems[:count])
    return [pair for pair in plan if pair.image in kept]


def unseen_class_images(plan: Sequence[Pair], run_dir: pathlib.Path) -> list[Pair]:
    """The test images whose true class the ``hgd.train fit`` run at ``run_dir`` held out of training.

    Table 5 scores a denoiser on classes it never saw: only those images, so that every row of the
    table (the held-out run, the same recipe on every class, the undefended target) is scored on them."""
    config = FitConfig.from_json((run_dir / "config.json").read_text())
    if not config.holdout_classes:
        raise ValueError(f"{run_dir}: trained on every class (no --holdout-classes); no class is unseen")
    heldout = config.heldout()
    kept = [pair for pair in plan if pair.label0 in heldout]
    if not kept:
        raise ValueError(f"{run_dir}: none of the test images is of its {len(heldout)} held-out classes")
    return kept


def read_test_spec(out_dir: pathlib.Path) -> ObliviousSpec:
    raw = json.loads((out_dir / SPEC_FILE).read_text())
    return ObliviousSpec(**{**raw, "training_models": tuple(raw["training_models"])})


def denoiser_of_run(run_dir: pathlib.Path) -> DenoiserSpec:
    """The trained denoiser of a ``hgd.train fit`` run folder (best weights, the run's width and layout),
    or of a defense ``config.json`` (its shared denoiser: the shipped one is trained by a recipe, not a run)."""
    if run_dir.suffix == ".json":
        denoiser = load_config(run_dir).shared_denoiser
        if denoiser is None:
            raise ValueError(f"{run_dir}: no shared 'denoiser' (a row puts one denoiser before its targets)")
        return denoiser
    config = json.loads((run_dir / "config.json").read_text())
    weights = run_dir / "best.weights.h5"
    if not weights.is_file():
        raise FileNotFoundError(f"{run_dir}: no best.weights.h5 yet (has the run finished an epoch?)")
    return DenoiserSpec(weights, width=float(config["width"]), lateral=bool(config["lateral"]))


def defended_targets(targets: Sequence[str], denoisers: Sequence[DenoiserSpec]) -> tuple[list[Member], DenoiserSpec | None]:
    """The members and shared denoiser of a row: no denoiser, one shared by the targets, or one per target."""
    if len(denoisers) > 1 and len(denoisers) != len(targets):
        raise ValueError(f"{len(denoisers)} denoisers for {len(targets)} targets: give one, or one per target")
    own = denoisers if len(denoisers) > 1 else [None] * len(targets)
    members = [Member(get_model(t), denoiser) for t, denoiser in zip(targets, own)]
    return members, denoisers[0] if len(denoisers) == 1 else None


def evaluate(plan: Sequence[Pair], targets: Sequence[str], denoisers: Sequence[DenoiserSpec] = (), *,
             batch_size: int = 16, progress: bool = True) -> dict[str, float]:
    """Accuracy (%) on the clean images, per ``set/attack/eps`` and per ``set/eps`` (mean over the set's attacks).

    ``denoisers``: none (the undefended targets), one (shared in front of every target) or one per target."""
    from hgd.backend import forward_fn

    members, shared = defended_targets(targets, denoisers)
    model = build_defended_model(members, shared_denoiser=shared)
    predict = forward_fn(model)
    clean = {pair.image: pair for pair in plan}.values()
    items = [(CLEAN, pair.clean, pair.label0) for pair in clean]
    items += [(f"{p.split}/{p.attack}/eps{p.epsilon}", p.adversarial, p.label0) for p in plan]
    correct: dict[str, list[bool]] = {}
    with tqdm(total=len(items), unit="img", desc="evaluate", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            pixels = np.stack([load_image(path)[0] for _, path, _ in chunk])
            predicted = predict(pixels).argmax(axis=1)
            for (key, _, label), guess in zip(chunk, predicted):
                correct.setdefault(key, []).append(bool(guess == label))
            bar.update(len(chunk))
    accuracy = {key: 100.0 * float(np.mean(hits)) for key, hits in correct.items()}
    for test_set in (WHITE, BLACK):
        for eps in TEST_EPSILONS:
            parts = [v for k, v in accuracy.items() if k.startswith(f"{test_set}/") and k.endswith(f"/eps{eps}")]
            accuracy[f"{test_set}/eps{eps}"] = float(np.mean(parts))
    return accuracy


SUMMARY_COLUMNS = (CLEAN, f"{WHITE}/eps4", f"{WHITE}/eps16", f"{BLACK}/eps4", f"{BLACK}/eps16")


def markdown_table(rows: dict[str, dict[str, float]], columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """Rows (defenses) x columns (accuracy %), one decimal."""
    lines = ["| defense | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines)


def figures(plan: Sequence[Pair], target: str, denoisers: dict[str, DenoiserSpec], out_dir: pathlib.Path, *,
            attack: str, epsilon: int, count: int, seed: int = 0) -> dict:
    """Figure 5 and Figure 7 (:mod:`hgd.evaluation.layerwise`) on ``count`` images of one test attack; returns the numbers."""
    import keras

    from hgd.evaluation import layerwise as analysis
    from hgd.backend import forward_fn

    chosen = [p for p in plan if f"{p.split}/{p.attack}" == attack and p.epsilon == epsilon][:count]
    if not chosen:
        raise ValueError(f"no test images for {attack} at eps {epsilon}")
    model = get_model(target)

    def normalize(pixels: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(model.normalize()(pixels.astype(np.float32)))

    clean_pixels = np.stack([load_image(p.clean)[0] for p in chosen])
    noise = np.random.default_rng(seed).uniform(-epsilon, epsilon, clean_pixels.shape)
    noisy_pixels = np.clip(np.rint(clean_pixels + noise), 0, 255)
    clean = normalize(clean_pixels)
    adversarial = normalize(np.stack([load_image(p.adversarial)[0] for p in chosen]))
    perturbed = {"adversarial": adversarial, f"random noise (eps {epsilon})": normalize(noisy_pixels)}
    slopes, samples = {}, {}
    rng = np.random.default_rng(seed)
    for name, spec in denoisers.items():
        denoise = forward_fn(spec.build())
        denoised = np.concatenate([denoise(adversarial[i:i + 8]) for i in range(0, len(adversarial), 8)])
        perturbed[f"{name} output"] = denoised
        slopes[name] = analysis.perturbation_slopes(clean, adversarial, denoised)
        pick = rng.choice(clean.size, min(20000, clean.size), replace=False)
        samples[name] = ((adversarial - clean).ravel()[pick], (adversarial - denoised).ravel()[pick])
    probe, layers = analysis.layer_probe(model)
    curves = {name: analysis.layerwise_perturbation(probe, clean, x) for name, x in perturbed.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{target}, {attack} eps {epsilon}, {len(chosen)} images"
    analysis.plot_layerwise(curves, layers, out_dir / "figure5_layerwise_perturbation.png", title)
    if samples:
        analysis.plot_slopes(samples, out_dir / "figure7_perturbation_slopes.png", title)
    return {"layers": layers, "E_l": {k: v.tolist() for k, v in curves.items()},
            "slope_median": {k: float(np.median(v)) for k, v in slopes.items()},
            "slope_mean": {k: float(np.mean(v)) for k, v in slopes.items()}, "images": len(chosen)}


def add_result(path: pathlib.Path, key: str, row: dict) -> dict:
    """Adds one scored row to the results file as it is on disk now, and returns the file's rows.

    A row takes half an hour to score, so two ``evaluate`` runs go side by side on two cores: each
    re-reads the file under a lock before writing, so that neither drops the other's finished rows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.is_file() else {}
        results[key] = row
        write_atomically(path, "w", lambda f: json.dump(results, f, indent=1, sort_keys=True))
    return results
