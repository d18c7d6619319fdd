"""How robust a defense is, honestly (``python -m hgd.cli.security DEFENSE_DIR DATASET_DIR OUT_DIR``).

The competition scored defenses against attacks that never saw them. This evaluation attacks the
defense itself, as an adaptive attacker would (Athalye & Carlini 2018 broke HGD this way), and sets
the result beside what an oblivious attacker gets. Per epsilon, on the dataset's images:

* ``fgsm``: one gradient-sign step through the whole defense (defense-aware, single step);
* ``pgd``: PGD through the whole defense (denoisers + classifiers; BPDA around an input
  transformation, EOT over a random one), margin loss, random starts, ``restarts`` of them, each
  image stopped at its first iterate that fools the defense as saved (``early_stop``);
* ``transfer``: PGD on the defense's classifiers without it (the surrogate; ``transfer_steps``,
  one start, no early stop), then classified by the defense: an oblivious attacker, as in the
  competition;
* ``transfer_<name>``: each of ``transfer_attacks``, the shipped attacks built to transfer past
  denoisers and input transformations (DI, TI, SI-NI: :data:`hgd.attacks.factory.SHIPPED_TRANSFER_ATTACKS`,
  the settings of ``attacks/<name>``), crafted on the same surrogate and classified by the defense.
  Transfer examples do not depend on the defense, so defenses over the same classifiers can share
  them (``--transfer-cache``); a defense that is its own surrogate (no denoiser, no transformation)
  has no transfer rows;
* ``square``: the Square attack on the defense's outputs only, at ``check_epsilon`` (gradient-free:
  if it beats ``pgd``, the gradients are masked).

Accuracy vs epsilon for each (``pgd`` goes on doubling epsilon past the last one until accuracy
reaches 0, or 255), the per-example worst case over all of them, and sanity checks that flag a
suspicious result: iterative beats single-step, white-box beats transfer and gradient-free,
accuracy falls with epsilon, twice the steps and one more restart do not help, ``pgd`` reaches 0.
Results go to ``OUT_DIR``: ``results.json`` (resumable: rerun the same command to go on, batch by
batch), ``security.md`` (tables and checks), ``curves.png``, ``loss_curve.png``, ``per_example.csv``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import pathlib
import zlib
from collections.abc import Iterator

import numpy as np

from hgd.attacks.factory import SHIPPED_TRANSFER_ATTACKS, make_attack, make_transfer_attack
from hgd.io.datasets import load_pixels, read_dataset
from hgd.io.files import write_atomically

log = logging.getLogger(__name__)

RESULTS_FILE, REPORT_FILE = "results.json", "security.md"
CURVES_FILE, LOSS_CURVE_FILE, PER_EXAMPLE_FILE = "curves.png", "loss_curve.png", "per_example.csv"
TRANSFER = "transfer"
"""The PGD transfer row's kind; each shipped transfer attack's is ``transfer_<name>`` (:func:`transfer_kind`)."""
SEEDING = "per-batch"
"""How the random attacks are seeded: each batch by (seed, run, first image), so sharding changes nothing."""
DEFENSE_AWARE = ("fgsm", "pgd", "square")


@dataclasses.dataclass(frozen=True)
class SecuritySpec:
    """The evaluation's budget (a resumed run must ask for the same).

    Attributes:
        epsilons: the curve's epsilons (pixel levels); ``pgd`` continues past the last until 0.
        steps, restarts: the defense-aware PGD's budget; step size 2.5 eps / steps (Madry).
        transfer_steps: the transfer attack's PGD steps (one start): iterative attacks transfer
            worse the longer they fit the surrogate (Kurakin et al. 2017, Dong et al. 2018), so
            the competition's usual 10, not ``steps``.
        transfer_attacks: the shipped transfer attacks (names of
            :data:`hgd.attacks.factory.SHIPPED_TRANSFER_ATTACKS`) run beside the PGD transfer: a
            denoiser tuned against PGD's noise can let through what these were built to carry.
        queries: the Square attack's budget per image (0: no Square attack).
        check_epsilon: where the stronger PGD (2x steps, restarts + 1) checks convergence.
        limit: only the first N images (sorted by ImageId).
        tolerance: how much worse (in accuracy) an attack may do than one it should beat before
            a check flags it (sampling noise of a random start).
        seed: seeds every random start and square, with each batch's run and first image.
    """

    epsilons: tuple[int, ...] = (1, 2, 4, 8, 16)
    steps: int = 100
    restarts: int = 2
    transfer_steps: int = 10
    transfer_attacks: tuple[str, ...] = ("di_mifgsm", "ti_di_mifgsm", "si_ni_ti_di_fgsm")
    queries: int = 1000
    check_epsilon: int = 4
    limit: int | None = None
    tolerance: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilons", tuple(sorted(set(self.epsilons))))
        object.__setattr__(self, "transfer_attacks", tuple(dict.fromkeys(self.transfer_attacks)))
        unknown = [name for name in self.transfer_attacks if name not in SHIPPED_TRANSFER_ATTACKS]
        if unknown:
            raise ValueError(f"unknown transfer attack(s) {unknown}; shipped: {sorted(SHIPPED_TRANSFER_ATTACKS)}")
        if not self.epsilons or not all(1 <= e <= 255 for e in self.epsilons):
            raise ValueError(f"epsilons must be in 1..255, got {self.epsilons}")
        if self.steps < 1 or self.restarts < 1 or self.transfer_steps < 1 or self.queries < 0:
            raise ValueError("steps, restarts and transfer_steps must be >= 1, queries >= 0")
        if self.check_epsilon not in self.epsilons:
            raise ValueError(f"check_epsilon {self.check_epsilon} must be one of the epsilons {self.epsilons}")

    def attack(self, kind: str, epsilon: int, *, stronger: bool = False, record_loss: bool = False,
               seed: int | None = None):
        """The attack object of ``kind`` at ``epsilon`` (``stronger``: the convergence check's PGD), seeded
        by ``seed`` (default: the spec's)."""
        seed = self.seed if seed is None else seed
        if kind == "fgsm":
            return make_attack("fgsm")
        if kind == "square":
            return make_attack("square", queries=self.queries, loss="margin", seed=seed)
        if (name := transfer_attack_name(kind)) is not None:
            return make_transfer_attack(name, seed=seed)
        if kind == TRANSFER:
            steps, restarts = self.transfer_steps, 1
        else:
            steps, restarts = (2 * self.steps, self.restarts + 1) if stronger else (self.steps, self.restarts)
        # Through the defense, an image stops at its first saved success (what the evaluation counts;
        # a broken defense then costs a few steps per image, not 100). The transfer attack runs every
        # step on the surrogate: barely fooling the surrogate would transfer worse.
        return make_attack("pgd", steps=steps, alpha=2.5 * epsilon / steps, seed=seed, loss="margin",
                           restarts=restarts, record_loss=record_loss, early_stop=kind == "pgd")

    def transfer_kinds(self) -> tuple[str, ...]:
        """The oblivious rows: the PGD transfer, then each of ``transfer_attacks``."""
        return (TRANSFER, *(transfer_kind(name) for name in self.transfer_attacks))

    def transfer_settings(self, kind: str) -> dict:
        """What the examples of the transfer row ``kind`` depend on, besides the images (their cache key)."""
        if kind == TRANSFER:
            return {"attack": "pgd", "steps": self.transfer_steps, "loss": "margin", "seed": self.seed}
        return {**SHIPPED_TRANSFER_ATTACKS[transfer_attack_name(kind)], "seed": self.seed}


def transfer_kind(name: str) -> str:
    """The run kind of the shipped transfer attack ``name``."""
    return f"{TRANSFER}_{name}"


def transfer_attack_name(kind: str) -> str | None:
    """The shipped transfer attack a run kind runs (``transfer_di_mifgsm`` -> ``di_mifgsm``); None for another kind."""
    return kind.removeprefix(f"{TRANSFER}_") if kind.startswith(f"{TRANSFER}_") else None


def run_key(kind: str, epsilon: int, stronger: bool = False) -> str:
    return f"{kind}{'_stronger' if stronger else ''}@{epsilon}"


class DefenseUnderAttack:
    """The defense's models, built from its folder (here, or on a cluster node), and one batch of one run.

    Each batch's attack is seeded by the evaluation's seed, the run and the batch's first image, so a
    batch gives the same result whatever ran before it and wherever it runs.
    """

    def __init__(self, defense_dir: pathlib.Path, spec: SecuritySpec) -> None:
        from hgd.attacks.config import defense_model
        from hgd.defenses.defended import Member, build_defended_model, load_config

        config = load_config(defense_dir / "config.json")
        config.require_weights()
        self.spec = spec
        self.attacked = defense_model(config)  # EOT over a random transform
        random = config.transform is not None and config.transform.random
        # What scores the images: one draw of a random transform, as the submission classifies.
        self.deployed = defense_model(config, eot_draws=None) if random else self.attacked
        self.surrogate = build_defended_model([Member(m.target) for m in config.members])  # no denoiser
        self.own_surrogate = config.transform is None and not config.denoisers()
        self.members = [m.target.name.value for m in config.members]

    def correct(self, images: np.ndarray, labels: np.ndarray) -> list[bool]:
        from hgd.attacks import as_model

        logits = as_model(self.deployed).logits(images.astype(np.float32))
        return (logits.argmax(axis=1) == labels).tolist()

    def attack_batch(self, kind: str, epsilon: int, stronger: bool, start: int, images: np.ndarray,
                     labels: np.ndarray, given: np.ndarray | None = None,
                     ) -> tuple[list[bool], list[float] | None, np.ndarray | None]:
        """One batch of one run: which images the defense still gets right, the mean loss curve (PGD at
        ``check_epsilon``), and the transfer examples made now (for the cache; ``given``: made earlier).

        Args:
            start: the batch's first image index (it seeds the batch's attack).
        """
        spec = self.spec
        key = run_key(kind, epsilon, stronger)
        record = kind == "pgd" and epsilon == spec.check_epsilon and not stronger
        seed = zlib.crc32(f"{spec.seed}/{key}/{start}".encode())
        attack = spec.attack(kind, epsilon, stronger=stronger, record_loss=record, seed=seed)
        made = None
        if kind in spec.transfer_kinds():
            adversarial = given if given is not None else attack(self.surrogate, images, labels, epsilon=epsilon)
            made = None if given is not None else adversarial
        else:
            adversarial = attack(self.attacked, images, labels, epsilon=epsilon)
        curve = (np.nanmean(attack.loss_curve[0], axis=1).tolist()  # restart 0, mean over images
                 if record and attack.loss_curve is not None else None)
        return self.correct(adversarial, labels), curve, made


class Evaluation:
    """One defense on one dataset: the models, the images, and the resumable results file.

    ``cluster``: the batches of every run go to the Ray cluster this process joined, one per free worker
    (each builds the defense's models once, from the defense folder sent through the object store); the
    results file is written here as they come back in order, so the results equal the ones on one machine.
    """

    def __init__(self, defense_dir: pathlib.Path, dataset_dir: pathlib.Path, out_dir: pathlib.Path,
                 spec: SecuritySpec, batch_size: int, transfer_cache: pathlib.Path | None = None,
                 cluster: bool = False) -> None:
        self.spec, self.batch_size, self.out_dir, self.cluster = spec, batch_size, out_dir, cluster
        self.defense_dir = defense_dir.resolve()
        self.ids, self.images, self.labels = load_pixels(read_dataset(dataset_dir, spec.limit))
        self.models = DefenseUnderAttack(self.defense_dir, spec)
        self.own_surrogate = self.models.own_surrogate
        self.transfer_cache, self.dataset_dir = transfer_cache, dataset_dir
        self.results = self._load(defense_dir, dataset_dir)

    def kinds(self, epsilon: int) -> tuple[str, ...]:
        """The attacks run at ``epsilon``: Square only at ``check_epsilon``, where the masking check needs
        it (its queries are the dearest); the transfer rows only for a defense that is not its own
        surrogate (for an undefended ensemble they would be white-box attacks on it)."""
        spec = self.spec
        transfer = () if self.own_surrogate else spec.transfer_kinds()
        square = ("square",) if spec.queries and epsilon == spec.check_epsilon else ()
        return ("fgsm", "pgd", *transfer, *square)

    def _load(self, defense_dir: pathlib.Path, dataset_dir: pathlib.Path) -> dict:
        path = self.out_dir / RESULTS_FILE
        header = {"defense": str(defense_dir.resolve()), "dataset": str(dataset_dir.resolve()),
                  "spec": dataclasses.asdict(self.spec), "images": self.ids, "seeding": SEEDING}
        if path.is_file():
            results = json.loads(path.read_text())
            if {k: results.get(k) for k in header} != json.loads(json.dumps(header)):
                raise ValueError(f"{path} holds another evaluation (or one seeded by an earlier version); use "
                                 "another OUT_DIR or the same arguments")
            return results
        return {**header, "runs": {}, "loss_curves": {}}

    def _save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.out_dir / RESULTS_FILE, "w", lambda f: json.dump(self.results, f))

    def correct(self, images: np.ndarray, labels: np.ndarray) -> list[bool]:
        return self.models.correct(images, labels)

    def run(self, kind: str, epsilon: int, *, stronger: bool = False) -> float:
        """Accuracy under ``kind`` at ``epsilon``; batches already in the results file are kept."""
        key = run_key(kind, epsilon, stronger)
        done: list[bool] = self.results["runs"].setdefault(key, [])
        starts = range(len(done), len(self.ids), self.batch_size)
        shards = ((kind, epsilon, stronger, start, self.images[start:start + self.batch_size],
                   self.labels[start:start + self.batch_size], self._cached_transfer(kind, epsilon, start))
                  for start in starts)
        for start, (correct, curve, made) in zip(starts, self._attack_batches(shards)):
            if made is not None:
                self._cache_transfer(made, kind, epsilon, start)
            done += correct
            if curve is not None:
                self.results["loss_curves"].setdefault(key, []).append(curve)
            self._save()
            log.info("%s: %d/%d images, accuracy so far %.3f", key, len(done), len(self.ids), np.mean(done))
        return float(np.mean(done))

    def _attack_batches(self, shards: Iterator[tuple]) -> Iterator[tuple]:
        """Each shard's ``attack_batch`` result, in order: here, or on the cluster."""
        if not self.cluster:
            return (self.models.attack_batch(*shard) for shard in shards)
        from hgd.cluster.bundles import pack
        from hgd.cluster.shards import map_shards

        bundle = pack(self.defense_dir)
        return map_shards(functools.partial(_remote_defense, bundle, self.spec), "attack_batch", shards)

    def transfer_dir(self, kind: str) -> pathlib.Path | None:
        """Where the transfer row ``kind``'s examples are cached (``--transfer-cache``): a folder named by
        everything they depend on, so evaluations of other defenses over the same classifiers find them."""
        if self.transfer_cache is None or kind not in self.spec.transfer_kinds():
            return None
        what = {"surrogate": self.models.members, "dataset": str(self.dataset_dir.resolve()), "images": self.ids,
                "attack": self.spec.transfer_settings(kind), "batch_size": self.batch_size}
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
        return self.transfer_cache / f"{'+'.join(self.models.members)}-{kind}-{digest}"

    def _cached_transfer(self, kind: str, epsilon: int, start: int) -> np.ndarray | None:
        """The batch's transfer examples when another evaluation made them (``--transfer-cache``)."""
        folder = self.transfer_dir(kind)
        path = None if folder is None else folder / f"eps{epsilon}_{start:05d}.npy"
        return np.load(path) if path is not None and path.is_file() else None

    def _cache_transfer(self, adversarial: np.ndarray, kind: str, epsilon: int, start: int) -> None:
        folder = self.transfer_dir(kind)
        if folder is None:
            return
        path = folder / f"eps{epsilon}_{start:05d}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, "wb", lambda f: np.save(f, adversarial))

    def clean(self) -> float:
        if "clean" not in self.results:
            self.results["clean"] = [c for start in range(0, len(self.ids), self.batch_size)
                                     for c in self.correct(self.images[start:start + self.batch_size],
                                                           self.labels[start:start + self.batch_size])]
            self._save()
        return float(np.mean(self.results["clean"]))


def _remote_defense(bundle, spec: SecuritySpec) -> DefenseUnderAttack:
    """The defense's models on a cluster node, from its folder sent as a bundle."""
    from hgd.cluster.bundles import unpack

    return DefenseUnderAttack(unpack(bundle), spec)


def evaluate(evaluation: Evaluation) -> dict:
    """Every run the spec asks for (resuming), then the checks; returns the summary the report shows."""
    spec = evaluation.spec
    evaluation.clean()
    for epsilon in spec.epsilons:
        for kind in evaluation.kinds(epsilon):
            evaluation.run(kind, epsilon)
    epsilon = spec.epsilons[-1]
    while evaluation.run("pgd", epsilon) > 0 and epsilon < 255:
        epsilon = min(2 * epsilon, 255)
    evaluation.run("pgd", spec.check_epsilon, stronger=True)
    return summarize(evaluation.results, spec)


def accuracy_table(results: dict) -> dict[str, dict[int, float]]:
    """kind -> epsilon -> accuracy, over the runs in ``results`` (finished ones only)."""
    table: dict[str, dict[int, float]] = {}
    for key, correct in results["runs"].items():
        if len(correct) == len(results["images"]):
            kind, epsilon = key.split("@")
            table.setdefault(kind, {})[int(epsilon)] = float(np.mean(correct))
    return table


def worst_case(results: dict) -> dict[int, list[bool]]:
    """epsilon -> per image: correct under every attack run at that epsilon (and clean); finished runs only."""
    out: dict[int, list[bool]] = {}
    for key, correct in results["runs"].items():
        if len(correct) != len(results["images"]):
            continue  # an interrupted run: its images so far would shorten every row
        epsilon = int(key.split("@")[1])
        base = out.get(epsilon, results["clean"])
        out[epsilon] = [a and b for a, b in zip(base, correct)]
    return dict(sorted(out.items()))


def sanity_checks(table: dict[str, dict[int, float]], spec: SecuritySpec) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for every rule a trustworthy evaluation obeys."""
    tol, checks = spec.tolerance + 1e-9, []  # exactly `tolerance` worse is still within it (0.12 + 0.02 != 0.14)
    pgd = table.get("pgd", {})
    names = {"fgsm": "iterative >= single-step", TRANSFER: "white-box >= transfer",
             "square": "white-box >= gradient-free"}
    names |= {kind: f"white-box >= transfer ({transfer_attack_name(kind)})"
              for kind in table if transfer_attack_name(kind) is not None}
    for weaker, name in names.items():
        for epsilon, value in sorted(table.get(weaker, {}).items()):
            if epsilon in pgd:
                checks.append((f"{name} (eps {epsilon})", pgd[epsilon] <= value + tol,
                               f"pgd {pgd[epsilon]:.3f} vs {weaker} {value:.3f}"))
    for kind, curve in table.items():
        epsilons = sorted(curve)
        for low, high in zip(epsilons, epsilons[1:]):
            checks.append((f"{kind}: accuracy falls with eps ({low} -> {high})", curve[high] <= curve[low] + tol,
                           f"{curve[low]:.3f} -> {curve[high]:.3f}"))
    stronger = table.get("pgd_stronger", {}).get(spec.check_epsilon)
    if stronger is not None and spec.check_epsilon in pgd:
        checks.append((f"more steps/restarts do not help (eps {spec.check_epsilon})",
                       stronger >= pgd[spec.check_epsilon] - tol,
                       f"pgd {pgd[spec.check_epsilon]:.3f}; {2 * spec.steps} steps, {spec.restarts + 1} restarts "
                       f"{stronger:.3f}"))
    if pgd:
        top = max(pgd)
        checks.append(("pgd reaches 0 accuracy", pgd[top] == 0, f"{pgd[top]:.3f} at eps {top}"))
    return checks


def summarize(results: dict, spec: SecuritySpec) -> dict:
    table = accuracy_table(results)
    return {"clean": float(np.mean(results["clean"])), "table": table,
            "worst": {e: float(np.mean(c)) for e, c in worst_case(results).items()},
            "checks": sanity_checks(table, spec)}


def write_report(evaluation: Evaluation, summary: dict, command: str,
                 oblivious_score: tuple[str, float] | None) -> None:
    """``security.md``, ``per_example.csv``, ``curves.png`` and ``loss_curve.png``."""
    out, results, spec = evaluation.out_dir, evaluation.results, evaluation.spec
    table, epsilons = summary["table"], sorted({e for curve in summary["table"].values() for e in curve})
    lines = [f"# Security evaluation of `{results['defense']}`", "", "Produced by:", "", f"    {command}", "",
             f"{len(results['images'])} images of `{results['dataset']}`; clean accuracy "
             f"{summary['clean']:.3f}. PGD: {spec.steps} steps of 2.5 eps / steps, margin loss, "
             f"{spec.restarts} random starts; Square: {spec.queries} queries at eps {spec.check_epsilon}. "
             f"Defense-aware: {', '.join(DEFENSE_AWARE)}; oblivious, crafted on the undefended classifiers: "
             f"transfer ({spec.transfer_steps}-step PGD)"
             + "".join(f", {transfer_kind(name)}" for name in spec.transfer_attacks)
             + " (the shipped attacks' settings).", ""]
    if oblivious_score is not None:
        lines += [f"Competition (oblivious) normalized score, from `{oblivious_score[0]}`: "
                  f"**{oblivious_score[1]:.3f}**; defense-aware accuracy at eps {spec.check_epsilon}: "
                  f"**{table.get('pgd', {}).get(spec.check_epsilon, float('nan')):.3f}**.", ""]
    lines += ["## Accuracy vs epsilon", "", "| attack | " + " | ".join(f"eps {e}" for e in epsilons) + " |",
              "|---|" + "---|" * len(epsilons)]
    for kind, curve in table.items():
        lines.append(f"| {kind} | " + " | ".join(f"{curve[e]:.3f}" if e in curve else "" for e in epsilons) + " |")
    lines.append("| **worst case** | " + " | ".join(
        f"**{summary['worst'][e]:.3f}**" if e in summary["worst"] else "" for e in epsilons) + " |")
    lines += ["", "Worst case: an image counts only if it is classified correctly under every attack run at "
              "that epsilon (`per_example.csv`).", "", "## Sanity checks", ""]
    lines += [f"- {'ok' if ok else '**SUSPICIOUS**'}: {name}: {detail}" for name, ok, detail in summary["checks"]]
    lines += ["", f"![accuracy vs epsilon]({CURVES_FILE})", "", f"![PGD loss curve]({LOSS_CURVE_FILE})", ""]
    write_atomically(out / REPORT_FILE, "w", lambda f: f.write("\n".join(lines)))
    worst = worst_case(results)
    rows = ["ImageId,Clean," + ",".join(f"WorstEps{e}" for e in worst)]
    rows += [",".join([image, str(int(results["clean"][i]))] + [str(int(worst[e][i])) for e in worst])
             for i, image in enumerate(results["images"])]
    write_atomically(out / PER_EXAMPLE_FILE, "w", lambda f: f.write("\n".join(rows) + "\n"))
    _plot(out, summary, results)


def _plot(out: pathlib.Path, summary: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, curve in summary["table"].items():
        if not kind.endswith("_stronger"):
            ax.plot(sorted(curve), [curve[e] for e in sorted(curve)], marker="o", label=kind)
    ax.plot(list(summary["worst"]), list(summary["worst"].values()), "k--", label="worst case")
    ax.set(xscale="log", xlabel="epsilon (pixel levels)", ylabel="accuracy", ylim=(0, 1))
    ax.legend()
    fig.savefig(out / CURVES_FILE, dpi=120, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, curves in results["loss_curves"].items():
        ax.plot(np.mean(curves, axis=0), label=f"{key} (mean over images, restart 0)")
    ax.set(xlabel="PGD step", ylabel="margin loss (ascended)")
    ax.legend()
    fig.savefig(out / LOSS_CURVE_FILE, dpi=120, bbox_inches="tight")
    plt.close(fig)


def read_oblivious_score(runner_output: pathlib.Path, name: str) -> tuple[str, float]:
    """The defense's normalized score in a runner output folder (``defense_results.csv``)."""
    import csv

    path = runner_output / "defense_results.csv"
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["SubmissionID"] == name and row["Score"]:
                return str(path), float(row["Score"])
    raise ValueError(f"{path}: no score for the defense {name!r}")
