"""The comparison report of a run folder (:func:`build_report`, ``switch-kd report``): ``report.md`` with the
ROUGE-L table over models × benchmarks and the plots, ``results.csv`` (wide), ``results_long.csv`` and the
``metrics.json`` behind ``dvc metrics``.

Inputs (input formats: :mod:`switch_core.reporting.loading`): the evaluations (required), and optional training logs
and rollout traces found by glob; the run name of a log or trace file is the name of the folder that holds it. The
reference rows (teacher, untrained and warmed-up student) come first and are labelled as such, then the methods.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from switch_core.atomic import atomic_write_json, atomic_write_text
from switch_core.reporting.loading import collect_metrics, find_files, read_training_log, run_names
from switch_core.reporting.plots import plot_rouge_by_length, plot_teacher_share, plot_training_curves
from switch_core.reporting.references import references_first
from switch_core.reporting.scores import compact_metrics, results_table
from switch_core.reporting.tables import markdown_table, settings_table
from switch_core.reporting.teacher_share import teacher_share_by_position

TRAIN_LOG_GLOB = "**/metrics.jsonl"
"""Default glob (under ``--runs``) of the training logs the report reads."""

TRACE_GLOB = "**/rollout_traces.jsonl"
"""Default glob (under ``--runs``) of the rollout traces the report reads."""


@dataclass
class ReportResult:
    """Files written by :func:`build_report`, and the inputs it used (for the caller's summary)."""

    markdown: Path
    csv: Path
    csv_long: Path
    plots: list[Path] = field(default_factory=list)
    train_logs: list[Path] = field(default_factory=list)
    traces: list[Path] = field(default_factory=list)


def build_report(
    evals_dir: str | Path,
    out_dir: str | Path,
    *,
    runs_dir: str | Path | None = None,
    train_logs: Sequence[str] = (TRAIN_LOG_GLOB,),
    traces: Sequence[str] = (TRACE_GLOB,),
    models: Sequence[str] | None = None,
    title: str = "switch-kd comparison",
) -> ReportResult:
    """Write ``report.md``, ``results.csv`` (wide), ``results_long.csv`` and the PNG plots to ``out_dir``.

    Args:
        evals_dir: ``{evals_dir}/<model>/<benchmark>/metrics.json``.
        out_dir: output folder (created).
        runs_dir: base of relative ``train_logs`` / ``traces`` globs; None = no training logs or traces unless the
            globs are absolute or existing paths.
        train_logs: globs or paths of training-log JSONL files (see the module docstring).
        traces: globs or paths of rollout-trace JSONL files.
        models: model names to include (default all); the reference rows come first, then the others in this order
            (default sorted).
        title: first heading of the markdown.

    Returns:
        A :class:`ReportResult`; missing training logs or traces only leave their sections out (the markdown says
        which globs matched nothing).

    Raises:
        ReportInputError: no evaluation results, or a malformed input file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = collect_metrics(evals_dir, models)
    order = references_first(metrics["model"])
    metrics = metrics.sort_values("model", key=lambda names: names.map(order.index), kind="stable")
    wide = results_table(metrics)
    csv_path, long_path = out / "results.csv", out / "results_long.csv"
    atomic_write_text(csv_path, wide.to_csv(float_format="%.4f"))
    atomic_write_text(long_path, metrics.drop(columns=["by_length"]).to_csv(index=False, float_format="%.4f"))
    atomic_write_json(out / "metrics.json", compact_metrics(metrics))
    plots = [plot_rouge_by_length(metrics, out / "rouge_by_length.png")]

    log_files, trace_files = find_files(train_logs, runs_dir), find_files(traces, runs_dir)
    where = f" under `{runs_dir}`" if runs_dir else ""
    md = [
        f"# {title}", "", f"Evaluations: `{Path(evals_dir)}`.", "",
        "## ROUGE-L (mean ± sd over seeds)", "",
        (
            "ROUGE-L F-measure with stemming, max over references, ×100, averaged over examples; mean and sample sd "
            "over generation seeds (METHOD.md §5.5). `average` = mean of the benchmark means, shown only for models "
            "evaluated on every benchmark. `n` = examples evaluated; `limit` marks a seeded subsample (a quick run, "
            "not comparable to full-set numbers)."
        ),
        "", markdown_table(metrics), "",
        "BLEU (sacrebleu corpus) and exact match are in `results_long.csv`.", "",
        "Settings per model:", "", settings_table(metrics), "",
        "## ROUGE-L by reference length", "",
        "Reference length = tokens of the first reference under each evaluated model's tokenizer.", "",
        "![ROUGE-L by reference length](rouge_by_length.png)", "",
        "## Teacher share by response position (SWITCH rollouts)", "",
    ]
    if trace_files:
        frames = {name: teacher_share_by_position(path) for name, path in run_names(trace_files).items()}
        plots.append(plot_teacher_share(frames, out / "teacher_share_by_position.png"))
        md += ["Sources: " + ", ".join(f"`{p}`" for p in trace_files), "",
               "![teacher share by position](teacher_share_by_position.png)", ""]
    else:
        md += [f"No rollout traces matched {list(traces)}{where}.", ""]
    md += ["## Training curves", ""]
    if log_files:
        curves = plot_training_curves({name: read_training_log(p) for name, p in run_names(log_files).items()}, out)
        plots += list(curves.values())
        md += ["Sources: " + ", ".join(f"`{p}`" for p in log_files), ""]
        md += [f"![{metric}]({path.name})" for metric, path in curves.items()] + [""]
    else:
        md += [f"No training logs matched {list(train_logs)}{where}.", ""]
    md_path = atomic_write_text(out / "report.md", "\n".join(md))
    return ReportResult(md_path, csv_path, long_path, plots, log_files, trace_files)
