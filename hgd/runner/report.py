"""``report.md`` and ``report.html``: what a person reads after a run.

One list of blocks (headings, paragraphs, tables, the heatmap, lists) rendered
twice, as Markdown and as HTML, so the two never disagree. The accuracy matrix
(rows = defenses, columns = attacks, the share of the N images each defense
labelled correctly) is drawn as an annotated heatmap (``accuracy_matrix.png``,
matplotlib's Agg backend, no display needed).
"""

from __future__ import annotations

import dataclasses
import html
import io
import pathlib
from collections.abc import Mapping, Sequence

from hgd.io.files import write_bytes_atomic, write_text_atomic
from hgd.runner.results import ATTACK, DEFENSE, TARGETED_ATTACK, Results, cost_sentence
from hgd.runner.scoring import EpsilonCounts, RunStats, WorstCase, epsilons, ranking

HEATMAP_FILE = "accuracy_matrix.png"
PROBLEMS_PER_SUBMISSION = 8


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str
    code: bool = False


@dataclasses.dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclasses.dataclass(frozen=True)
class Picture:
    path: str
    alt: str


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


Block = Heading | Paragraph | Table | Picture | Bullets


def _score(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _worst(case: WorstCase) -> str:
    return _score(case.score) + (f" ({case.opponent})" if case.opponent else "")


def _seconds(values: Sequence[float], stats) -> str:
    summary = stats.summary(values)
    return "-" if summary is None else f"{summary[1]:.1f}"


def blocks(results: Results, *, command: str, heatmap: bool) -> list[Block]:
    """The report's content."""
    return [*_introduction(results, command), *_accuracy_section(heatmap), *_scoring_rules(),
            *_defense_section(results), *_defense_aware_section(results), *_attack_sections(results),
            *_epsilon_section(results), *_timing_section(results), *_nodes_section(results),
            *_problems_section(results), *_files_section()]


def _introduction(results: Results, command: str) -> list[Block]:
    """The title, the command that made the report and what the run covered, so the report can be reproduced."""
    return [
        Heading("Attacks vs defenses: competition results", 1),
        Paragraph("Produced by:"),
        Paragraph(command, code=True),
        Paragraph(_run_description(results)),
    ]


def _run_description(results: Results) -> str:
    """The dataset, the rules, the submissions and the work done, in one paragraph, for context."""
    outcome, settings = results.outcome, results.settings
    cost = cost_sentence(outcome)
    return (f"Dataset `{settings.get('dataset_dir', outcome.dataset.folder)}`: {results.num_images} images in "
            f"{len(outcome.batches)} batch(es) of up to {settings.get('batch_size', '?')}; "
            f"epsilon {settings.get('epsilon', '?')}; executor `{settings.get('executor', '?')}`, "
            f"time limit {settings.get('time_limit', '?')} s per batch. "
            f"{len(results.attacks)} attack(s), {len(results.targeted_attacks)} targeted attack(s), "
            f"{len(results.defenses)} defense(s). This invocation ran {outcome.pieces_run} piece(s) and "
            f"reused {outcome.pieces_reused} finished one(s)" + (
                f"; {cost}." if cost else ".") + (
                f" {outcome.attacks_kept} reused attack piece(s) were made by an earlier version of their "
                "attack's folder (`--keep-attacks`): their adversarial images are that version's."
                if outcome.attacks_kept else ""))


def _accuracy_section(heatmap: bool) -> list[Block]:
    """What the accuracy matrix means, and its heatmap when there is one to draw."""
    return [
        Heading("Accuracy matrix"),
        Paragraph("Share of the N images each defense (row) labelled correctly under each attack (column); "
                  "a missing adversarial image or prediction is never correct. Counts: `accuracy_matrix.csv`."),
        Picture(HEATMAP_FILE, "accuracy matrix heatmap") if heatmap
        else Paragraph("(no heatmap: no attack or no defense)"),
    ]


def _scoring_rules() -> list[Block]:
    """How the scores below are computed, so a reader can interpret the tables."""
    return [Heading("Scoring rules"), Paragraph(
        "Official (EVAL) normalized scores in [0, 1]: defense = correct labels / (|A| N) over the attacks A "
        "that produced all N images; attack = wrong labels (targeted: target-class hits) / (|D| N) over the "
        "defenses D that labelled every adversarial image produced. Errored defense batches (no readable "
        "result.csv) are ignored, which makes the defense ineligible to score attacks. Worst case = the "
        "minimum over the same opponents. DEV scores are raw counts without eligibility: attack = "
        "N x #defenses - correct, targeted = hits, defense = correct over all attacks. Defense-aware "
        "attacks (marked in their metadata; the competition had none) do not count in defense scores: "
        "they are reported beside them.")]


def _defense_section(results: Results) -> list[Block]:
    """The defenses' ranking table, one row per defense."""
    ev = results.eval
    total = sum(ev.produced.values())
    rows = []
    for rank, (name, score) in enumerate(ranking(ev.defense), 1):
        worst = ev.worst_defense[name]
        stats = results.stats[name]
        rows.append([str(rank), name, _score(score),
                     _worst(worst), "yes" if name in ev.eligible_defenses else "no",
                     f"{ev.counts.processed.get(name, 0)}/{total}", f"{stats.with_error}/{stats.completed}",
                     _score(results.dev.defense[name])])
    return [Heading("Defenses"), Table(["rank", "defense", "score", "worst case (attack)", "scores attacks",
                                        "images labelled", "batches with error", "DEV score"], rows)]


def _defense_aware_section(results: Results) -> list[Block]:
    """Each defense's oblivious score beside its worst defense-aware accuracy; nothing without such attacks."""
    ev = results.eval
    if not ev.defense_aware:
        return []
    return [
        Heading("Oblivious score vs defense-aware accuracy"),
        Paragraph(
            f"The competition score counts attacks that never saw the defenses; the defense-aware attacks "
            f"({', '.join(f'`{a}`' for a in ev.defense_aware)}) attack a defense end to end. Each defense's worst "
            "accuracy under each kind, side by side (`defense_aware_scores.csv`). A defense-aware attack built for "
            "one defense is a transfer attack against the others."),
        Table(["defense", "oblivious score", "worst oblivious accuracy (attack)",
               "worst defense-aware accuracy (attack)"],
              [[name, _score(score), _worst(ev.worst_defense[name]), _worst(ev.worst_defense_aware[name])]
               for name, score in ranking(ev.defense)]),
    ]


def _attack_sections(results: Results) -> list[Block]:
    """The non-targeted and the targeted attacks' ranking tables, in that order."""
    ev, dev = results.eval, results.dev
    return [*_attack_section(results, "Non-targeted attacks", ev.attack, ev.worst_attack, dev.attack),
            *_attack_section(results, "Targeted attacks", ev.targeted_attack, ev.worst_targeted_attack,
                             dev.targeted_attack)]


def _attack_section(results: Results, title: str, scores: Mapping[str, float | None],
                    worst_of: Mapping[str, WorstCase], dev_of: Mapping[str, int]) -> list[Block]:
    """One kind of attack's ranking table, or "none" when that kind has no attack."""
    ev, n = results.eval, results.num_images
    rows = []
    for rank, (name, score) in enumerate(ranking(scores), 1):
        worst = worst_of[name]
        stats = results.stats[name]
        rows.append([str(rank), name + (" (defense-aware)" if name in ev.defense_aware else ""), _score(score),
                     _worst(worst), "yes" if name in ev.eligible_attacks else "no", f"{ev.produced[name]}/{n}",
                     f"{stats.with_error}/{stats.completed}", _score(dev_of[name])])
    return [Heading(title), Table(["rank", "attack", "score", "worst case (defense)", "scores defenses",
                                   "images produced", "batches with error", "DEV score"], rows) if rows
            else Paragraph("none")]


def _epsilon_section(results: Results) -> list[Block]:
    """Each defense's accuracy per attack and epsilon, when the run used several (``--eps cycle``):
    the matrix's one count per attack hides how a defense gives way as the bound grows."""
    cells = results.by_epsilon
    if len(epsilons(cells)) < 2:
        return []
    rows = []
    for attack in results.all_attacks:
        for eps in epsilons(cells):
            mine = [cells.get((defense, attack, eps)) for defense in results.defenses]
            images = max((cell.images for cell in mine if cell is not None), default=0)
            if images:
                rows.append([attack, str(eps), str(images),
                             *[_epsilon_cell(cell, attack in results.targeted_attacks) for cell in mine]])
    return [
        Heading("Accuracy by epsilon"),
        Paragraph("Correct labels of the adversarial images each attack made at each epsilon (target-class "
                  "labels in brackets for targeted attacks). All cells: `accuracy_by_epsilon.csv`."),
        Table(["attack", "epsilon", "images", *results.defenses], rows),
    ]


def _epsilon_cell(cell: EpsilonCounts | None, targeted: bool) -> str:
    """``correct = pct %`` (and ``(hits)`` for a targeted attack); ``-`` for no images."""
    if cell is None or not cell.images:
        return "-"
    return f"{cell.correct} = {100 * cell.correct / cell.images:.1f} %" + (f" ({cell.hit})" if targeted else "")


def _timing_section(results: Results) -> list[Block]:
    """How long each submission took per batch, the figures the competition's tables quote."""
    kinds = [(ATTACK, results.attacks), (TARGETED_ATTACK, results.targeted_attacks), (DEFENSE, results.defenses)]
    rows = [_timing_row(name, kind, results.stats[name]) for kind, names in kinds for name in names]
    return [
        Heading("Timing"),
        Paragraph("Wall seconds per batch, model loading included, over batches that ended cleanly "
                  "(exit 0 within the time limit); per 100 images is what the competition's tables "
                  "quote. All values: `timing.csv`."),
        Table(["submission", "type", "batches", "clean", "timed out", "median s/batch",
               "median s/100 images", "min s", "max s"], rows),
    ]


def _nodes_section(results: Results) -> list[Block]:
    """Where this invocation's pieces ran, one line per cluster node (nothing on one machine)."""
    nodes = results.outcome.nodes
    if not results.outcome.on_cluster:
        return []
    rows = [[name, str(work.pieces), f"{work.busy_seconds:.1f}", str(work.retried)]
            for name, work in sorted(nodes.items())]
    return [
        Heading("Cluster nodes"),
        Paragraph(f"Pieces run by this invocation, by the node that finished them; busy seconds are the submissions' "
                  f"run time there. {results.outcome.pieces_retried} piece(s) were started again after their node "
                  "died (retried); a piece the cluster gave up on is listed as `lost` and runs again on resume."),
        Table(["node", "pieces", "busy s", "retried"], rows),
    ]


def _timing_row(name: str, kind: str, stats: RunStats) -> list[str]:
    """One submission's row of the timing table."""
    summary = stats.summary(stats.seconds)
    return [name, kind, str(stats.completed), str(stats.completed - stats.with_error),
            str(stats.timed_out), _seconds(stats.seconds, stats), _seconds(stats.per_100, stats),
            "-" if summary is None else f"{summary[0]:.1f}",
            "-" if summary is None else f"{summary[3]:.1f}"]


def _problems_section(results: Results) -> list[Block]:
    """The problems logged during the run (capped per submission), or "none"."""
    out: list[Block] = [Heading(f"Problems ({len(results.problems)})")]
    if results.problems:
        out.append(Bullets(problem_lines(results.problems)))
        out.append(Paragraph("All of them: `problems.csv`; the last lines of every run's output: `logs/`."))
    else:
        out.append(Paragraph("none"))
    return out


def _files_section() -> list[Block]:
    """Where the full results are, since the report shows only a summary."""
    return [Heading("Files"), Paragraph(
        "EVAL: `accuracy_matrix.csv`, `error_matrix.csv`, `hit_target_class_matrix.csv`, `defense_results.csv`, "
        "`attack_results.csv`, `targeted_attack_results.csv`. DEV: `accuracy_on_attacks.csv`, "
        "`accuracy_on_targeted_attacks.csv`, `hit_target_class.csv`, `defense_ranking.csv`, `attack_ranking.csv`, "
        "`targeted_attack_ranking.csv`. Also `all_classification.csv`, `accuracy_by_epsilon.csv`, "
        "`worst_case_scores.csv`, `defense_aware_scores.csv`, "
        "`eligibility.csv`, `timing.csv`, `problems.csv`, `run_summary.json`; adversarial images in `adv/`, "
        "finished pieces in `pieces/` (rerun the same command to resume).")]


def problem_lines(problems, per_submission: int = PROBLEMS_PER_SUBMISSION) -> list[str]:
    """The problems as lines, at most ``per_submission`` per submission (the rest counted)."""
    groups: dict[tuple[str, str], list] = {}
    for p in problems:
        groups.setdefault((p.kind, p.submission), []).append(p)
    lines = []
    for (kind, submission), group in groups.items():
        for p in group[:per_submission]:
            lines.append(f"{kind} {submission}" + (f", {p.piece}" if p.piece else "") + f": {p.message}")
        if len(group) > per_submission:
            lines.append(f"{kind} {submission}: ... and {len(group) - per_submission} more")
    return lines


# ----------------------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(content: Sequence[Block]) -> str:
    lines: list[str] = []
    for block in content:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += (["```", block.text, "```"] if block.code else [block.text]) + [""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Picture):
            lines += [f"![{block.alt}]({block.path})", ""]
        elif isinstance(block, Bullets):
            lines += [f"- {_md_cell(item)}" for item in block.items] + [""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    """Escapes text; `code` spans become <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


_STYLE = ("body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.2em .6em;"
          "text-align:left}th{background:#eee}pre{background:#f4f4f4;padding:.6em;overflow-x:auto}"
          "img{max-width:100%}")


def to_html(content: Sequence[Block], title: str) -> str:
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>"]
    for block in content:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<pre>{html.escape(block.text)}</pre>" if block.code else f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif isinstance(block, Picture):
            parts.append(f"<p><img src=\"{html.escape(block.path)}\" alt=\"{html.escape(block.alt)}\"></p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def draw_heatmap(results: Results, path: pathlib.Path) -> None:
    """The accuracy matrix (share correct of N) as an annotated heatmap PNG.

    Draws on matplotlib's Agg canvas directly (no pyplot, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    defenses, attacks = results.defenses, results.all_attacks
    n = results.num_images
    values = [[results.eval.counts.correct[d, a] / n for a in attacks] for d in defenses]
    width = max(4.0, 1.1 * len(attacks) + 2.5)
    height = max(2.5, 0.6 * len(defenses) + 2.0)
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(attacks)), labels=[a + (" (T)" if a in results.targeted_attacks else "")
                                                 for a in attacks], rotation=35, ha="right")
    axes.set_yticks(range(len(defenses)), labels=defenses)
    axes.set_xlabel("attack ((T) = targeted)")
    axes.set_ylabel("defense")
    axes.set_title(f"accuracy under attack ({n} images)")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            axes.text(j, i, f"{100 * value:.0f}%", ha="center", va="center", fontsize=9,
                      color="black" if 0.2 <= value <= 0.8 else "white")
    figure.colorbar(image, ax=axes, label="share correct")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_bytes_atomic(path, buffer.getvalue())


def write(results: Results, output_dir: pathlib.Path, *, command: str) -> list[pathlib.Path]:
    """Writes ``report.md``, ``report.html`` and the heatmap; returns their paths."""
    written = []
    heatmap = bool(results.defenses and results.all_attacks)
    if heatmap:
        draw_heatmap(results, output_dir / HEATMAP_FILE)
        written.append(output_dir / HEATMAP_FILE)
    else:
        (output_dir / HEATMAP_FILE).unlink(missing_ok=True)
    content = blocks(results, command=command, heatmap=heatmap)
    write_text_atomic(output_dir / "report.md", to_markdown(content))
    write_text_atomic(output_dir / "report.html", to_html(content, "Attacks vs defenses"))
    return [*written, output_dir / "report.md", output_dir / "report.html"]
