"""How far training moved each denoiser from where it started: a table and a plot of fit runs.

A run's validation loss means little alone (each loss has its own scale: pixels, guide features,
logits, cross-entropy); divided by the starting denoiser's (``initial_val_loss`` in ``state.json``,
the identity for a fresh DUNET), it reads the same for every row: below 1, training removed that
share of the error the identity leaves; above 1, the denoiser is worse than doing nothing.

    python -m hgd.cli.train curves PGD=~/hgd-work/runs/table2_pgd FGD=~/hgd-work/runs/table2_fgd \\
        --out docs/results/table2_training.png [--x cpu-hours]
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import pathlib
from collections.abc import Mapping

from hgd.train.fit import CONFIG_FILE, HISTORY_FILE, STATE_FILE


@dataclasses.dataclass(frozen=True)
class RunCurve:
    """One run's validation losses per epoch, relative to its starting denoiser's."""

    guidance: str
    steps_per_epoch: int
    initial: float
    val_loss: tuple[float, ...]
    hours: float
    cpu_hours: tuple[float, ...] | None = None  # after each epoch, from the start; None: not recorded

    def x(self, axis: str) -> list[float]:
        """The plot's x values, from the start (0) to the last epoch: training ``steps`` or ``cpu-hours``."""
        if axis == "steps":
            return [self.steps_per_epoch * i for i in range(len(self.val_loss) + 1)]
        if self.cpu_hours is None:
            raise ValueError("this run's history has no cpu_seconds (it predates them): plot against steps")
        return [0.0, *self.cpu_hours]

    @property
    def relative(self) -> tuple[float, ...]:
        return tuple(v / self.initial for v in self.val_loss)

    @property
    def best(self) -> float:
        return min(self.relative)


def read_run(run_dir: pathlib.Path) -> RunCurve:
    """The curve of a ``hgd.train fit`` run folder (it must have finished an epoch)."""
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    state = json.loads((run_dir / STATE_FILE).read_text())
    if state.get("initial_val_loss") is None:
        raise ValueError(f"{run_dir}: no initial_val_loss in {STATE_FILE} (a run started before fit measured it)")
    history = run_dir / HISTORY_FILE
    if not history.is_file():
        raise FileNotFoundError(f"{run_dir}: no {HISTORY_FILE} yet (has the run finished an epoch?)")
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    losses = tuple(float(row["val_loss"]) for row in rows)
    cpu_hours = None
    if rows and all(row.get("cpu_seconds") for row in rows):
        cpu_hours = tuple(itertools.accumulate(float(row["cpu_seconds"]) / 3600 for row in rows))
    if config.get("steps_per_epoch") is None:
        raise ValueError(f"{run_dir}: epochs of one pass over the pairs; the plot needs steps_per_epoch")
    return RunCurve(config["guidance"], int(config["steps_per_epoch"]), float(state["initial_val_loss"]), losses,
                    float(state["hours"]), cpu_hours)


def markdown_table(curves: Mapping[str, RunCurve]) -> str:
    """One row per run: steps, hours, the starting denoiser's (identity or init weights) and the best
    validation loss, their ratio."""
    lines = ["| row | loss | steps | hours | start | best | best / start |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, c in curves.items():
        lines.append(f"| {name} | {c.guidance} | {c.steps_per_epoch * len(c.val_loss)} | {c.hours:.2f} | "
                     f"{c.initial:.5f} | {min(c.val_loss):.5f} | {c.best:.3f} |")
    return "\n".join(lines)


def plot(curves: Mapping[str, RunCurve], path: pathlib.Path, x: str = "steps") -> None:
    """Relative validation loss against training ``steps`` or ``cpu-hours``, one line per run; 1 = the start.

    Per CPU-hour is how options that change a step's cost (width, dtype policy, batch) compare; relative
    to each run's own start, runs validated under different dtype policies compare on one scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for name, c in curves.items():
        axis.plot(c.x(x), [1.0, *c.relative], marker="o", label=f"{name} ({c.guidance})")
    axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("training steps (batches)" if x == "steps" else "CPU-hours of training (process CPU time)")
    axis.set_ylabel("validation loss / starting denoiser's")
    axis.set_title("below 1: better than the starting denoiser (a fresh DUNET: the identity)", fontsize=10)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
