"""Several security evaluations side by side (``python -m hgd.cli.security_compare NAME=OUT_DIR ... --out DIR``).

Each ``OUT_DIR`` is a finished (or partly finished) ``python -m hgd.cli.security`` run. The comparison
is one markdown table (``comparison.md``: clean accuracy, the competition's oblivious score where a
runner output has one, defense-aware PGD per epsilon, the worst case over every attack, and the
checks each evaluation flags) and one plot (``comparison.png``: worst-case accuracy vs epsilon per
defense). Runs must share their images, or the rows would not be comparable; that is checked.
"""

from __future__ import annotations

import contextlib
import json
import pathlib

from hgd.io.files import write_atomically
from hgd.evaluation.security import (RESULTS_FILE, TRANSFER, SecuritySpec, read_oblivious_score, summarize,
                                     transfer_attack_name)

TABLE_FILE, PLOT_FILE = "comparison.md", "comparison.png"


def load(out_dir: pathlib.Path) -> tuple[dict, dict]:
    """An evaluation's results and its summary (finished runs only)."""
    results = json.loads((out_dir / RESULTS_FILE).read_text())
    spec = SecuritySpec(**{**results["spec"], "epsilons": tuple(results["spec"]["epsilons"])})
    return results, summarize(results, spec)


def markdown_table(rows: dict[str, dict], scores: dict[str, float], check: int) -> str:
    """One row per defense: clean, oblivious score, PGD and worst case per epsilon, other attacks at ``check``
    (every transfer row any evaluation ran)."""
    epsilons = sorted({e for summary in rows.values() for e in summary["table"].get("pgd", {})})
    transfer = dict.fromkeys(kind for summary in rows.values() for kind in summary["table"]
                             if kind == TRANSFER or transfer_attack_name(kind) is not None)
    others = ("fgsm", *transfer, "square", "pgd_stronger")
    header = (["defense", "clean", "oblivious score"] + [f"PGD eps {e}" for e in epsilons]
              + [f"worst eps {e}" for e in epsilons] + [f"{k} eps {check}" for k in others] + ["flagged"])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, summary in rows.items():
        cells = [name, f"{summary['clean']:.2f}", f"{scores[name]:.3f}" if name in scores else "-"]
        cells += [_cell(summary["table"].get("pgd", {}).get(e)) for e in epsilons]
        cells += [_cell(summary["worst"].get(e)) for e in epsilons]
        cells += [_cell(summary["table"].get(k, {}).get(check)) for k in others]
        flagged = [checked for checked, ok, _ in summary["checks"] if not ok]
        cells.append("; ".join(flagged) if flagged else "none")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(rows: dict[str, dict], path: pathlib.Path) -> None:
    """Worst-case accuracy vs epsilon, one line per defense (clean accuracy at eps 0)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, summary in rows.items():
        epsilons = [0, *summary["worst"]]
        ax.plot(epsilons, [summary["clean"], *summary["worst"].values()], marker="o", label=name)
    ax.set(xscale="symlog", xlabel="epsilon (pixel levels; 0 = clean)", ylabel="worst-case accuracy", ylim=(0, 1))
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def compare(named: dict[str, pathlib.Path], out: pathlib.Path, runner_output: pathlib.Path | None) -> str:
    """Write the table and plot of the evaluations ``named`` into ``out``; returns the table."""
    loaded = {name: load(out_dir) for name, out_dir in named.items()}
    (first, _), *_ = loaded.values()
    reference, check = next(iter(named.values())), first["spec"]["check_epsilon"]
    scores = {}
    for name, (results, _) in loaded.items():
        for key, value, expected in (("images", results["images"], first["images"]),
                                     ("dataset", results["dataset"], first["dataset"]),
                                     ("check_epsilon", results["spec"]["check_epsilon"], check)):
            if value != expected:
                raise ValueError(f"{named[name]}: other {key} than {reference}; rows would not compare")
        if runner_output is not None:
            with contextlib.suppress(ValueError):  # a defense not in the runner's run: its cell says "-"
                scores[name] = read_oblivious_score(runner_output, pathlib.Path(results["defense"]).name)[1]
    rows = {name: summary for name, (_, summary) in loaded.items()}
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, scores, check)
    write_atomically(out / TABLE_FILE, "w", lambda f: f.write(table))
    plot(rows, out / PLOT_FILE)
    return table
