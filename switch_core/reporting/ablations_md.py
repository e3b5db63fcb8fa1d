"""docs/ABLATIONS.md assembled from the outputs of the paper's ablations (:func:`write_ablations_doc`): provenance,
the status of each claim, and per ablation its tables, plot and reading.

An ablation is a grid of the ``ablation`` flow whose cells wrote to a run folder (:mod:`switch_core.reporting.
ablations`); the teacher-student gap ablation is two run folders, the small-gap and the large-gap pair, each with
SWITCH and the strongest baseline. Every number is computed from the per-seed values; what is missing (an ablation
not run, a cell still training) is listed, never fatal, so the document renders with any subset of the ablations.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from switch_core.atomic import atomic_write_text
from switch_core.git_info import provenance_lines
from switch_core.grids import varying_axes
from switch_core.reporting.ablation_plots import plot_ablation, plot_gap
from switch_core.reporting.ablation_reading import (
    GAP_TITLE,
    Claim,
    not_run,
    read_decay,
    read_gap,
    read_schedules,
    read_strategies,
)
from switch_core.reporting.ablations import (
    AblationResult,
    AblationSpec,
    CellSettings,
    GapPair,
    Row,
    read_ablation,
    read_gap_pairs,
)
from switch_core.reporting.loading import ReportInputError
from switch_core.reporting.references import REFERENCE_MODELS
from switch_core.reporting.scores import Score
from switch_core.reporting.tables import score_table
from switch_core.reporting.teacher_share import POSITION_EDGES

PAPER_ABLATIONS: dict[str, tuple[str, Callable[[AblationResult | None], Claim]]] = {
    "schedules": ("Threshold schedules", read_schedules),
    "decay": ("Decay λ of the exponential schedule", read_decay),
    "strategies": ("Intervention strategies", read_strategies),
}
"""The paper's grid ablations (presets/grids/paper-ablations.yaml): grid name -> (section title, claim reader)."""
GAP_PLOT = "gap.png"
"""The gap ablation's plot; the grid ablations' are ``<name>.png``."""


@dataclass(frozen=True)
class GapSpec:
    """The teacher-student gap ablation: the run folders of the small-gap and the large-gap pair (None: not given),
    the SWITCH run's name in both, and the baseline's (None: the strongest evaluated in both, :func:`~switch_core.
    reporting.ablations.strongest_baseline`); ``method_of`` (run -> method) keeps SWITCH runs out of the baselines;
    ``labels`` name the folders in the text; ``settings`` (run -> rollout settings) give the runs' τ0 and λ."""

    small_dir: Path | None
    large_dir: Path | None
    switch: str = "switch"
    baseline: str | None = None
    method_of: Mapping[str, str] = field(default_factory=dict)
    labels: tuple[str, str] | None = None
    settings: Mapping[str, CellSettings] = field(default_factory=dict)


@dataclass
class AblationsDoc:
    """What :func:`write_ablations_doc` wrote: the markdown, the plots, and each claim's status."""

    markdown: Path
    plots: list[Path]
    claims: dict[str, str]
    missing: list[str]


def cell_label(point: Mapping[str, object], axes: Sequence[str]) -> str:
    """A cell's row label: its values on ``axes``, ``axis=value`` joined by ``, `` (the last part of a dotted axis)."""
    return ", ".join(f"{axis.rsplit('.', 1)[-1]}={point[axis]}" for axis in axes)


def _keys(result: AblationResult) -> dict[str, str]:
    """Row name -> table key: cells by the grid values that differ between them (:func:`switch_core.grids.varying_axes`,
    as their names; a setting they share is in the settings table), references by name (those of the run folder
    marked)."""
    axes = varying_axes([result.spec.points[c] for c in result.cells])
    keys = {c: cell_label(result.spec.points[c], axes) for c in result.cells}
    return keys | {r: r if r in REFERENCE_MODELS else f"{r} (reference run)" for r in result.references}


def _pct(score: Score | None) -> str:
    return "–" if score is None else Score(100 * score.mean, 100 * score.sd, score.seeds).cell()


def _settings_cells(row: Row) -> tuple[str, str]:
    """τ0 and λ in force: τ0 from the run's summary (calibrated or set) only where it gates, i.e. for SWITCH's strategy
    (a reference model without rollout settings, teacher or student-sft, has none); λ only where the exponential
    schedule gates SWITCH's strategy."""
    tau0 = "–" if row.tau0 is None else f"{row.tau0:.4f} ({row.tau0_source})"
    s = row.settings
    if s is None:
        return ("–" if row.name in REFERENCE_MODELS else tau0), "–"
    if s.strategy != "switch":
        return "–", f"– (strategy {s.strategy})"
    if s.schedule == "exponential":
        return tau0, f"{s.decay:g}"
    horizon = f", T = {s.horizon}" if s.schedule == "linear" and s.horizon is not None else ""
    return tau0, f"– ({s.schedule} schedule{horizon})"


def behaviour_lines(rows: Sequence[tuple[str, Row]]) -> str:
    """Markdown table of ``(label, row)`` rows: τ0 and λ in force, teacher share over all rollout tokens, stop rate (%)
    and response length (tokens) of the evaluation answers, mean ± sd over seeds."""
    lines = ["| cell | τ0 | λ | teacher share (rollout tokens) | ended by a stop token (%) | response length (tokens) |",
             "|---|---|---|---|---|---|"]
    for label, row in rows:
        tau0, decay = _settings_cells(row)
        share = "–" if row.share is None else f"{100 * row.share[0]:.1f}% of {row.share[1]}"
        length = "–" if row.length is None else row.length.cell()
        lines.append(f"| {label} | {tau0} | {decay} | {share} | {_pct(row.stop)} | {length} |")
    return "\n".join(lines)


def behaviour_table(result: AblationResult) -> str:
    """:func:`behaviour_lines` of an ablation's cells, then its references."""
    keys = _keys(result)
    return behaviour_lines([(keys[n], result.rows[n]) for n in [*result.cells, *result.references]])


def position_lines(rows: Sequence[tuple[str, Row]]) -> str | None:
    """Markdown table of the teacher share per response-position bucket (:data:`~switch_core.reporting.
    teacher_share.POSITION_EDGES`) of each ``(label, row)`` with a rollout trace, tokens in brackets; None when none
    has one."""
    traced = [(label, row.buckets) for label, row in rows if row.buckets]
    if not traced:
        return None
    labels = list(dict.fromkeys(lab for _, buckets in traced for lab, _, _ in buckets))
    lines = ["| cell | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for label, buckets in traced:
        found = {lab: f"{100 * share:.1f}% ({tokens})" for lab, share, tokens in buckets}
        lines.append(f"| {label} | " + " | ".join(found.get(lab, "–") for lab in labels) + " |")
    return "\n".join(lines)


def position_table(result: AblationResult) -> str | None:
    """:func:`position_lines` of an ablation's cells."""
    keys = _keys(result)
    return position_lines([(keys[c], result.rows[c]) for c in result.cells])


def _status(claim: Claim) -> str:
    return f"{claim.status}: {'; '.join(claim.missing)}" if claim.missing else claim.status


def _ablation_section(result: AblationResult, title: str, claim: Claim | None, plot: str | None) -> list[str]:
    spec = result.spec
    label = spec.label or str(spec.run_dir)
    md = [f"## {title} (`{spec.name}`)", "",
          (f"Grid `{spec.grid_spec}`, study `{spec.study}`, run folder `{label}`; cells: "
           + ", ".join(f"`{c}`" for c in result.cells) + "."), ""]
    if not result.ran():
        md += [f"Not run yet: no evaluation, training summary or rollout trace of these cells in `{label}`.", ""]
        return md + ([f"Reading: {claim.lines[0]}", ""] if claim else [])
    keys = _keys(result)
    scores = {keys[n]: dict(result.rows[n].per_benchmark) for n in [*result.cells, *result.references]}
    averages = {keys[n]: result.rows[n].average for n in [*result.cells, *result.references]
                if result.rows[n].average is not None}
    models = [keys[n] for n in [*result.cells, *result.references]]
    md += [("ROUGE-L F (×100), mean ± sample sd over generation seeds; `average` = per-seed mean over the "
            f"{len(result.benchmarks)} benchmarks evaluated ({', '.join(result.benchmarks) or 'none yet'}), then mean "
            "± sd over seeds. Bold: the best cell per column (reference rows are not ranked)."), "",
           score_table(scores, models, result.benchmarks, averages, [keys[c] for c in result.cells]), "",
           ("Settings in force and behaviour: τ0 of the run's train_summary.json, λ of its configuration (the teacher "
            "writes token t when the JSD exceeds τ_t: exponential schedule τ_t = τ0·exp(−λ·t), linear τ_t = "
            "τ0·max(0, 1 − t/T), constant τ_t = τ0, t = 0 at the first response token); teacher share over all tokens "
            "of the cell's training rollouts (its rollout trace); stop rate and response length of the evaluation "
            "answers, averaged over the benchmarks per seed, then mean ± sd over seeds."), "",
           behaviour_table(result), ""]
    positions = position_table(result)
    if positions:
        edges = ", ".join(str(e) for e in POSITION_EDGES)
        md += [f"Teacher share by response position (buckets starting at 0, {edges}; tokens in brackets):", "",
               positions, ""]
    if plot:
        md += [f"![{spec.name}]({plot})", ""]
    if result.missing:
        md += ["Missing (tables show `–`):", "", *[f"- {m}" for m in result.missing], ""]
    if claim:
        md += ["Reading:", "", *[f"- {line}" for line in claim.lines], ""]
    return md


def _gap_section(pairs: tuple[GapPair, GapPair] | None, gap: GapSpec | None, baseline: str | None, claim: Claim,
                 plot: str | None) -> list[str]:
    md = ["## Teacher-student gap", ""]
    if pairs is None:
        return md + [f"Reading: {claim.lines[0]}", ""]
    lines = ["| pair | student size | run folder | benchmarks | SWITCH | baseline | teacher | student |",
             "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        student = "–" if p.student is None else f"{p.student[1].cell()} (`{p.student[0]}`)"
        cells = [s.cell() if s is not None else "–" for s in (p.switch, p.baseline, p.teacher)]
        lines.append(f"| {p.label} | {p.layers_text() or '–'} | `{p.run_dir}` | {', '.join(p.benchmarks) or '–'} | "
                     + " | ".join(cells) + f" | {student} |")
    md += [(f"Average ROUGE-L over the benchmarks SWITCH (`{gap.switch}`) was evaluated on in each run folder, mean ± "
            f"sd over seeds; baseline: `{baseline or 'none'}`"
            + (" (given)." if gap.baseline else " (of the baselines evaluated in both folders, the strongest on the "
                                                "small-gap pair). Student size: decoder layers of the warmed-up student "
                                                "and of the teacher (their config.json).")),
           "", "\n".join(lines), ""]
    rows = [(f"{p.label}: {name}", row) for p in pairs for name, row in p.rows.items()]
    if rows:
        md += [("Settings in force and behaviour of each pair's runs and warmed-up student (columns as in the tables "
                "above):"), "", behaviour_lines(rows), ""]
    positions = position_lines(rows)
    if positions:
        md += ["Teacher share by response position of their training rollouts (tokens in brackets):", "", positions, ""]
    if plot:
        md += [f"![gap]({plot})", ""]
    return md + ["Reading:", "", *[f"- {line}" for line in claim.lines], ""]


def write_ablations_doc(
    ablations: Sequence[AblationSpec],
    out_md: str | Path,
    *,
    benchmarks: Sequence[str],
    commands: Sequence[str],
    commit: str | None,
    gap: GapSpec | None = None,
    generated_with: str | None = None,
    commands_note: str | None = None,
    notes: Sequence[str] = (),
    plots_dir: str | Path | None = None,
    title: str = "Ablations",
) -> AblationsDoc:
    """Write the ablations document (markdown + PNG plots) from the ablations' outputs alone.

    Args:
        ablations: the grid ablations, in document order; the paper's (:data:`PAPER_ABLATIONS`) carry a claim, others
            only their tables and plot. A paper ablation not in ``ablations`` is listed as not run.
        out_md: the markdown file (e.g. ``docs/ABLATIONS.md``); its folder is created.
        benchmarks: the benchmarks expected.
        commands: the commands that produced the ablations, shown verbatim.
        commit: the git commit of the code that produced the runs (None: shown as unknown).
        gap: the teacher-student gap ablation (None: listed as not run).
        generated_with: the git commit of the code writing the document, stated when it is not ``commit``.
        commands_note: a line under the commands (e.g. that they were reconstructed).
        notes: remarks of whoever ran the ablations, listed under Provenance as operator's notes.
        plots_dir: where the PNGs go (default: ``<out_md folder>/ablations``); linked relatively. Plots of the paper's
            ablations and of the gap that are not drawn this time are removed from it.
        title: the first heading.

    Returns:
        An :class:`AblationsDoc`.

    Raises:
        ReportInputError: no ablation and no gap pair left any output (nothing is written: a wrong run folder must not
            overwrite a published document), or an output file that exists but is not readable (names the file).
    """
    out_md = Path(out_md)
    plots = Path(plots_dir) if plots_dir is not None else out_md.parent / "ablations"
    results = [read_ablation(spec, benchmarks) for spec in ablations]
    pairs, baseline = None, None
    if gap is not None and gap.small_dir is not None and gap.large_dir is not None:
        small, large, baseline = read_gap_pairs(gap.small_dir, gap.large_dir, switch=gap.switch, baseline=gap.baseline,
                                                benchmarks=benchmarks, method_of=gap.method_of, labels=gap.labels,
                                                settings=gap.settings)
        pairs = (small, large)
    gap_ran = pairs is not None and any(p.switch is not None or p.baseline is not None for p in pairs)
    if not any(r.ran() for r in results) and not gap_ran:
        where = ", ".join(sorted({f"`{r.spec.label or r.spec.run_dir}`" for r in results})) or "no run folder"
        raise ReportInputError(f"no output of any ablation cell in {where}, and no gap pair: run the ablations first "
                               "(python -m flows.ablation --grid presets/grids/paper-ablations.yaml:NAME --study "
                               "abl-NAME) or give their run folder with --ablation NAME=RUN_DIR; nothing written")
    plots.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def link(path: Path) -> str:
        written.append(path)
        return Path(os.path.relpath(path, out_md.parent)).as_posix()

    by_name = {r.spec.name: r for r in results}
    claims = {name: reader(by_name.get(name)) for name, (_, reader) in PAPER_ABLATIONS.items()}
    if pairs is None:
        claims["gap"] = not_run(GAP_TITLE, [f"no {size}-gap run folder given (--gap-{size})" for size, folder in
                                            (("small", gap and gap.small_dir), ("large", gap and gap.large_dir))
                                            if folder is None])
    else:
        claims["gap"] = read_gap(pairs[0], pairs[1], baseline, gap.switch)
    sections: list[str] = []
    for result in results:
        name = result.spec.name
        plot = None
        if result.ran():
            keys = _keys(result)
            averages = {n: result.rows[n].average for n in [*result.cells, *result.references]
                        if result.rows[n].average is not None}
            traces = result.traces if name in ("schedules", "decay") else {}
            if averages or traces:
                plot = link(plot_ablation(averages, [*result.cells, *result.references], keys, result.references,
                                          traces, plots / f"{name}.png"))
        title_text = PAPER_ABLATIONS.get(name, (f"Ablation {name}", None))[0]
        sections += _ablation_section(result, title_text, claims.get(name), plot)
    for name, (title_text, _) in PAPER_ABLATIONS.items():
        if name not in by_name:
            sections += [f"## {title_text} (`{name}`)", "", f"Reading: {claims[name].lines[0]}", ""]
    gap_plot = None
    if pairs is not None and baseline is not None and gap_ran:
        gap_plot = link(plot_gap(list(pairs), gap.switch, baseline, plots / GAP_PLOT))
    sections += _gap_section(pairs, gap, baseline, claims["gap"], gap_plot)

    md = [f"# {title}", "",
          ("Generated by `switch-kd ablation-doc` from the outputs of the ablation flow; do not edit by hand (rerun "
           "the command)."), "",
          "## Provenance", "",
          *provenance_lines(commit, generated_with, "the runs")]
    md += ["- commands:", "", "```", *commands, "```", ""]
    if commands_note:
        md += [commands_note, ""]
    if notes:
        md += ["Operator's notes (given with `--note`, not generated):", "", *[f"- {n}" for n in notes], ""]
    titles = {name: claims[name].title for name in claims}
    md += ["## Status of the paper's claims", "",
           ("\"clear\" means a difference of more than twice the pooled sd over generation seeds "
            "(sqrt((sd_a² + sd_b²) / 2); for the gap's change of margin, a contrast of four scores, "
            "sqrt((sd_1² + sd_2² + sd_3² + sd_4²) / 2)); each cell is trained once, so the spread between training "
            "runs is not measured. Differences are computed from the unrounded means, so they may differ from the "
            "rounded table values in the last digit."), "",
           "| claim | status |", "|---|---|",
           *[f"| {titles[n]} | {_status(claims[n])} |" for n in claims], ""]
    md += sections
    atomic_write_text(out_md, "\n".join(md))
    for stale in [*(plots / f"{n}.png" for n in PAPER_ABLATIONS), plots / GAP_PLOT]:
        if stale not in written and stale.exists():
            stale.unlink()
    missing = [m for r in results for m in r.missing]
    return AblationsDoc(out_md, written, {n: c.status for n, c in claims.items()}, missing)
