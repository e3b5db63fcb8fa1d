"""docs/RESULTS.md assembled from a run's outputs (:func:`write_results_doc`): provenance, status, data, methods,
score tables, plots, response length and stop tokens, teacher share, the gate, compute time and the rule-based reading
against the paper.

Reads, inside a run folder (:func:`~switch_core.reporting.run_outputs.load_run_outputs`), every piece optional:
evaluations, the data report, training summaries, the SeqKD meta, the gate profile, SWITCH rollout traces and training
logs. Every number is computed from the per-seed values (:mod:`switch_core.reporting.scores`). What is missing (a study
still running) is listed, never fatal.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switch_core.atomic import atomic_write_text
from switch_core.data.prompts import format_prompt
from switch_core.data.splits import read_records
from switch_core.evaluation.evaluate import GENERATIONS_FILE, METRICS_FILE
from switch_core.git_info import provenance_lines
from switch_core.reporting.gate_report import gate_lines, run_thresholds, stop_handling_lines, stop_table
from switch_core.reporting.loading import ReportInputError, collect_metrics
from switch_core.reporting.method_text import MethodDescription, methods_table
from switch_core.reporting.plots import (
    plot_averages,
    plot_jsd_by_position,
    plot_rouge_by_length,
    plot_teacher_share,
)
from switch_core.reporting.reading import ReadingInputs, percent, reading
from switch_core.reporting.references import (
    PAPER_BENCHMARKS,
    PAPER_DOLLY_TRAIN,
    PAPER_MAX_NEW_TOKENS,
    PAPER_TEACHER_SHARE,
    REFERENCE_MODELS,
)
from switch_core.reporting.run_outputs import RunOutputs, load_run_outputs
from switch_core.reporting.scores import (
    average_scores,
    benchmark_scores,
    bucket_scores,
    has_per_seed,
    rollout_batch_share,
    training_stages,
)
from switch_core.reporting.tables import (
    bucket_table,
    compute_summary,
    evaluation_sizes_table,
    evaluation_time_table,
    length_table,
    score_table,
    teacher_share_table,
    training_time_table,
)
from switch_core.rollout.schedules import JSD_MAX


@dataclass
class ResultsDoc:
    """What :func:`write_results_doc` wrote, and the missing inputs it reported."""

    markdown: Path
    plots: list[Path]
    missing: list[str]


def missing_inputs(outputs: RunOutputs, models: Sequence[str], benchmarks: Sequence[str], trained: Sequence[str],
                   runs: Sequence[str], switch_runs: Sequence[str], traced: Sequence[str] | None = None) -> list[str]:
    """Human-readable list of the expected outputs not (yet) in the run folder: the data report, each model's
    evaluation on each benchmark, the train_summary.json of each trained stage and run, the trace of each SWITCH run
    in ``traced`` (default: every one), and the gate profile when there is a SWITCH run."""
    missing = []
    if outputs.data_report is None:
        missing.append("data/data_report.json (prepare-data)")
    for model in models:
        absent = [b for b in benchmarks if b not in outputs.evaluations.get(model, {})]
        if absent:
            missing.append(f"evaluation of `{model}` on {', '.join(absent)}")
    for name, label in training_stages(trained, runs):
        if name not in outputs.summaries:
            missing.append(f"models/{name}/train_summary.json ({label})")
    for run in switch_runs if traced is None else traced:
        if run not in outputs.traces:
            missing.append(f"state/{run}/rollout_traces.jsonl (SWITCH rollouts of `{run}`)")
    if switch_runs and outputs.gate_profile is None:
        missing.append("analysis/gate_profile.json (the warmed-up student's JSD profile, gate-profile)")
    return missing


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
"""Files of a model folder whose rewrite means a new model (a retrained checkpoint)."""


def stale_evaluations(run_dir: str | Path, evaluated: Mapping[str, Sequence[str]]) -> list[tuple[str, list[str]]]:
    """The evaluations older than their model: ``[(model, benchmarks)]`` whose ``eval/<model>/<benchmark>/metrics.json``
    was written before the newest weight file (:data:`WEIGHT_SUFFIXES`) of ``models/<model>`` (modification times),
    i.e. the model was retrained after it was evaluated. Models without a local folder or weights are left out.

    Args:
        run_dir: the run folder.
        evaluated: model -> the benchmarks it has a metrics.json for.
    """
    root = Path(run_dir)
    out = []
    for model, benches in evaluated.items():
        folder = root / "models" / model
        weights = [p.stat().st_mtime_ns for p in folder.iterdir()
                   if p.is_file() and p.suffix in WEIGHT_SUFFIXES] if folder.is_dir() else []
        if not weights:
            continue
        newest = max(weights)
        old = [b for b in benches if (root / "eval" / model / b / METRICS_FILE).stat().st_mtime_ns < newest]
        if old:
            out.append((model, old))
    return out


def data_section(report: dict[str, Any] | None) -> list[str]:
    """Markdown lines on the training data: source, records, split sizes, and how it differs from the paper's."""
    if report is None:
        return ["The data report (data/data_report.json) is not there yet."]
    splits = report.get("splits", {})
    kind, path = report.get("source"), str(report.get("path") or "")
    lines = [(f"- source: `{kind}`" + (f" `{path}`" if path else "") + f"; {report.get('loaded')} records loaded, "
              f"{report.get('used')} used"),
             "- splits: " + ", ".join(f"{name} {count}" for name, count in splits.items())]
    train = int(splits.get("train", 0))
    if kind == "embedded":
        lines.append(f"- training used {train} examples of the embedded procedural suite, not the paper's Dolly data "
                     f"(about {PAPER_DOLLY_TRAIN:,} training examples): the scores are not comparable to the paper's.")
    elif train < PAPER_DOLLY_TRAIN and (kind == "dolly_raw" or "dolly" in path.lower()):
        origin = " — the 1,000 human-written rows of MiniLLM's Dolly dev split" if path.endswith("dolly/dev.jsonl") else ""
        lines.append(f"- **the full databricks-dolly-15k training set is not available here** (no hub access): "
                     f"training used {train} examples from `{path}`{origin}, where the paper trains on about "
                     f"{PAPER_DOLLY_TRAIN:,}.")
    return lines


def training_overlap(run_dir: str | Path, benchmarks: Sequence[str], models: Sequence[str]) -> list[tuple[str, int, int]]:
    """Evaluation prompts that also occur in the training split: ``[(benchmark, in_train, evaluated)]``.

    A prompt counts when the benchmark's prompt text equals a training record's MiniLLM-template prompt
    (:func:`~switch_core.data.prompts.format_prompt`, docs/METHOD.md §5.2). The evaluated prompts are read from the
    ``generations.jsonl`` of the first model in ``models`` evaluated on the benchmark; benchmarks without one, and all
    of them when the training split is missing, are left out.

    Raises:
        switch_core.data.records.DataFormatError: a training split with a bad row.
    """
    run_dir = Path(run_dir)
    train_file = run_dir / "data" / "train.jsonl"
    if not train_file.is_file():
        return []
    train = {format_prompt(record) for record in read_records(train_file)}
    out = []
    for bench in benchmarks:
        file = next((f for m in models if (f := run_dir / "eval" / m / bench / GENERATIONS_FILE).is_file()), None)
        if file is None:
            continue
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        prompts = {row["id"]: row["prompt"] for row in rows}
        out.append((bench, sum(p in train for p in prompts.values()), len(prompts)))
    return out


def _caveats(outputs: RunOutputs, runs: Sequence[str], benchmarks: Sequence[str]) -> list[str]:
    lines = [("Every method is trained once (one training seed): the ± is the spread over generation seeds only, so it "
             "understates the run-to-run spread of training.")]
    steps = sorted({int(outputs.summaries[r]["steps"]) for r in runs if r in outputs.summaries})
    if steps:
        lines.append(f"Distillation runs took {' / '.join(str(s) for s in steps)} optimizer steps (the paper's scripts "
                     "train 10–20 epochs of ~14k examples).")
    files = [b[x] for b in outputs.evaluations.values() for x in benchmarks if x in b]
    ns = sorted({int(f["num_examples"]) for f in files})
    tokens = sorted({int(f["protocol"]["max_new_tokens"]) for f in files})
    if ns:
        lines.append(f"Each benchmark is scored on {' / '.join(str(n) for n in ns)} prompts with up to "
                     f"{' / '.join(str(t) for t in tokens)} new tokens (protocol: the full sets, "
                     f"{PAPER_MAX_NEW_TOKENS} tokens), so long responses are cut and small differences are noisy.")
    return lines


def write_results_doc(
    run_dir: str | Path,
    out_md: str | Path,
    *,
    commands: Sequence[str],
    commit: str | None,
    models: Sequence[str] | None = None,
    benchmarks: Sequence[str] | None = None,
    methods: Mapping[str, str] | None = None,
    trained: Sequence[str] = ("teacher", "student-sft"),
    target_share: float | None = None,
    decays: Mapping[str, float] | None = None,
    schedules: Mapping[str, Mapping[str, Any]] | None = None,
    rollout_training: Mapping[str, Mapping[str, Any]] | None = None,
    traced: Sequence[str] | None = None,
    plots_dir: str | Path | None = None,
    run_label: str | None = None,
    title: str = "Results",
    commands_note: str | None = None,
    notes: Sequence[str] = (),
    method_descriptions: Mapping[str, MethodDescription] | None = None,
    generated_with: str | None = None,
) -> ResultsDoc:
    """Write the results document of a run (markdown + PNG plots) from its outputs alone.

    Args:
        run_dir: the run folder.
        out_md: the markdown file (e.g. ``docs/RESULTS.md``); its folder is created.
        commands: the commands that produced the run, shown verbatim.
        commit: the git commit of the code that produced the run (None: shown as unknown).
        models: models expected in the tables, in order (default: the evaluated ones, references first).
        benchmarks: benchmarks expected (default: the evaluated ones).
        methods: distillation run name -> method (default: every evaluated non-reference model, named after its
            method). The SWITCH run the reading is about is the one named ``switch``, else the first ``switch`` method.
        trained: which of ``teacher`` (teacher SFT) and ``student-sft`` (warm-up) were trained in this run.
        target_share: the τ0 calibration target (``rollout.target_teacher_share``).
        decays: SWITCH run -> λ of its exponential threshold schedule (``rollout.decay`` with the run's overrides;
            runs of another schedule left out).
        schedules: SWITCH run -> its threshold schedule ``{"schedule", "decay", "horizon", "max_new_tokens", "tau0"}``
            (the ``rollout`` section with the run's overrides; ``tau0`` None when calibrated): the gate section's τ_t
            (runs left out get no τ_t, and τ0 only from their training summary).
        rollout_training: run trained on rollouts -> ``{"data", "supervise_stop"}`` (its ``methods.<m>`` settings):
            the rows of the stop-token table (default: every run whose log has ``rollout/stop_rate``, settings
            unknown).
        traced: the SWITCH runs whose training writes rollout traces (default: all of them); the others (e.g.
            ``rollout.strategy: student``, :func:`~switch_core.reporting.run_outputs.writes_rollout_traces`) are not
            missing a trace.
        plots_dir: where the PNGs go (default: ``<out_md folder>/results``); linked relatively.
        run_label: how the run folder is named in the text (default: ``run_dir`` as given).
        title: the first heading.
        commands_note: a line under the commands (e.g. that they were reconstructed).
        notes: remarks of whoever ran the study (machine conditions...), listed under Provenance as operator's notes.
        method_descriptions: stage label (e.g. ``teacher SFT``) or run name -> what it trains on and with which loss
            (:mod:`switch_core.reporting.method_text`); shown as the Methods table, with each run's logged share of
            rollout batches, when given.
        generated_with: the git commit of the code writing the document, stated when it is not ``commit``.

    Returns:
        A :class:`ResultsDoc` with the files written and the missing inputs listed in the document.

    Raises:
        ReportInputError: ``run_dir`` holds none of the outputs (nothing is written: a wrong ``--run-dir``, or a
            checkout without the study, must not overwrite a published document), or an output file that exists but
            is not readable (names the file).
    """
    out_md = Path(out_md)
    plots = Path(plots_dir) if plots_dir is not None else out_md.parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    outputs = load_run_outputs(run_dir, list(methods or ()))
    if outputs.empty():
        raise ReportInputError(
            f"no run outputs in {outputs.run_dir} (no data report, training summary or evaluation): run the study "
            "first (dvc repro or switch-kd pipeline) or give its folder with --run-dir; nothing written"
        )
    evaluated = list(outputs.evaluations)
    if methods is None:
        methods = {m: m for m in evaluated if m not in REFERENCE_MODELS}
    if models is None:
        models = [m for m in REFERENCE_MODELS if m in evaluated] + list(methods)
    if benchmarks is None:
        benchmarks = sorted({b for benches in outputs.evaluations.values() for b in benches})
    runs = list(methods)
    switch_runs = [m for m in runs if methods[m] == "switch"]
    switch = "switch" if "switch" in switch_runs else (switch_runs[0] if switch_runs else None)
    done = [b for b in benchmarks if any(b in outputs.evaluations.get(m, {}) for m in models)]
    evals = {m: outputs.evaluations[m] for m in models if m in outputs.evaluations}
    rouge, averages = benchmark_scores(evals), average_scores(evals, done)
    buckets = bucket_scores(evals, done)
    traced_runs = [r for r in switch_runs if traced is None or r in traced]
    missing = missing_inputs(outputs, models, benchmarks, trained, runs, switch_runs, traced_runs)

    written: list[Path] = []
    links: dict[str, str] = {}

    def keep(name: str, path: Path) -> None:
        written.append(path)
        links[name] = Path(os.path.relpath(path, out_md.parent)).as_posix()

    if averages:
        keep("average", plot_averages(averages, models, plots / "rouge_average.png"))
    if evals:
        frame = collect_metrics(outputs.run_dir / "eval", [m for m in models if m in evals])
        keep("by_length", plot_rouge_by_length(frame, plots / "rouge_by_length.png"))
    share_runs = [r for r in dict.fromkeys([*switch_runs, *outputs.traces]) if r in outputs.traces]
    if share_runs:
        keep("share", plot_teacher_share({r: outputs.traces[r] for r in share_runs},
                                         plots / "teacher_share_by_position.png"))
    schedules = dict(schedules or {})
    if outputs.gate_profile is not None:
        steps = int(outputs.gate_profile["decoding"]["max_new_tokens"])
        keep("jsd", plot_jsd_by_position(outputs.gate_profile, run_thresholds(outputs, switch_runs, schedules, steps),
                                         plots / "jsd_by_position.png", jsd_max=JSD_MAX))
    if rollout_training is None:
        rollout_training = {r: {} for r in runs if r in outputs.logs
                            and (outputs.logs[r]["metric"] == "rollout/stop_rate").any()}

    bleu, em = benchmark_scores(evals, "bleu"), benchmark_scores(evals, "exact_match")
    measured = has_per_seed(evals, "mean_prediction_length") and has_per_seed(evals, "stopped_fraction")
    lengths = average_scores(evals, done, "mean_prediction_length") if measured else {}
    stops = average_scores(evals, done, "stopped_fraction") if measured else {}
    tau0 = {r: float(outputs.summaries[r]["tau0"]) for r in switch_runs
            if outputs.summaries.get(r, {}).get("tau0") is not None}
    shares = {r: share for r in runs if (share := rollout_batch_share(outputs.logs.get(r))) is not None}
    inputs = ReadingInputs(switch, runs, methods, averages, rouge, buckets, done, outputs.traces, target_share,
                           tau0=tau0, decay=dict(decays or {}), rollout_share=shares, stop_rate=stops)
    label = run_label or str(run_dir)
    md = [
        f"# {title}", "",
        (f"Generated by `switch-kd results-doc` from the outputs in `{label}`; do not edit by hand (rerun the "
        "command)."), "",
        "## Provenance", "",
        *provenance_lines(commit, generated_with, "the run"),
    ]
    md += [
        "- commands:", "", "```", *commands, "```", "",
    ]
    if commands_note:
        md += [commands_note, ""]
    if notes:
        md += ["Operator's notes (given with `--note`, not generated):", "", *[f"- {n}" for n in notes], ""]
    md += ["## Status", ""]
    stale = stale_evaluations(outputs.run_dir, {m: list(outputs.evaluations[m]) for m in models
                                                if m in outputs.evaluations})
    md += (["Missing (the study may still be running; tables show `–`):", ""] + [f"- {m}" for m in missing]
           if missing else [(f"Complete: {len(models)} models × {len(benchmarks)} benchmarks, every training summary "
                            "and expected SWITCH trace present" + (", but some evaluations are stale." if stale else
                                                                   "."))])
    if stale:
        md += ["", ("Stale (the model files were written after its evaluation, e.g. retrained: these scores are of an "
                    "earlier model; rerun `switch-kd evaluate` for it):"), "",
               *[f"- `{m}` on {', '.join(b)}" for m, b in stale]]
    overlap = training_overlap(outputs.run_dir, done, models)
    md += ["", "## Data", "", *data_section(outputs.data_report)]
    if overlap:
        md += ["- evaluation prompts that also occur in the training split (same prompt text): "
               + ", ".join(f"{b} {n}/{total}" for b, n, total in overlap)]
    absent = [f"{b} ({label})" for b, label in PAPER_BENCHMARKS.items() if b not in benchmarks]
    if absent:
        md += [(f"- not evaluated: {', '.join(absent)} (of the paper's five benchmarks, METHOD.md §5.1; not among this "
               "run's benchmarks)")]
    md += ["", "Evaluation sets:", "",
           evaluation_sizes_table(evals, benchmarks), ""]
    if method_descriptions:
        def label(name: str) -> str:
            return f"`{name}`" if name in runs else name

        logged = {label(name): percent(share) for name, share in shares.items() if name in method_descriptions}
        md += ["## Methods", "",
               ("Settings in force for each training stage (the configuration with each run's overrides). p is the "
                "teacher's next-token distribution, q the student's; a loss is per response token, averaged. The kept "
                "checkpoint is the one evaluated below (unless listed as stale under Status). `rollout batches (logged)`: the share of the run's optimizer "
                "steps that actually trained on rollouts rather than dataset examples, from its training log."), "",
               methods_table({label(n): d for n, d in method_descriptions.items()}, logged), ""]
    md += [
        "## ROUGE-L", "",
        ("ROUGE-L F (stemming, max over references, ×100), mean ± sample sd over generation seeds (METHOD.md §5.5). "
        f"`average` = per-seed mean over the {len(done)} evaluated benchmarks ({', '.join(done) or 'none yet'}), then "
        "mean ± sd over seeds; shown for models evaluated on all of them. Bold: the best distillation method per "
        "column (reference rows are not ranked)."), "",
        score_table(rouge, models, done, averages, runs), "",
    ]
    if "average" in links:
        md += [f"![average ROUGE-L]({links['average']})", ""]
    md += ["## BLEU and exact match", "", "BLEU (sacrebleu corpus, ×100):", "", score_table(bleu, models, done), "",
           "Exact match (%):", "", score_table(em, models, done), ""]
    if em and all(score.mean == 0 for benches in em.values() for score in benches.values()):
        md += [("Exact match is 0 for every model and benchmark: free-form answers never equal a reference word for "
               "word here, so this table separates nothing; it is kept because the protocol reports it."), ""]
    md += ["## ROUGE-L by reference length", "",
           ("Reference length = tokens of the first reference under the model's tokenizer. Pooled over the "
           "benchmarks: per seed, the example-weighted mean of each benchmark's bucket mean."), ""]
    md += [bucket_table(buckets, models) if buckets else "No model is evaluated on every benchmark yet.", ""]
    if "by_length" in links:
        md += [f"![ROUGE-L by reference length]({links['by_length']})", ""]
    if stops:
        md += ["## Response length", "",
               ("Tokens generated per answer and share of answers that end with a stop token (the rest run to the "
                "`max new tokens` cap), averaged over the benchmarks per seed, then mean ± sd over seeds."), "",
               length_table(lengths, stops, models), ""]
    md += ["## Stop tokens in rollout training", ""]
    if rollout_training:
        md += [("Per run trained on rollouts, from its training log: the share of the step's rollouts that ended with a "
                "stop token, their mean length, and the teacher's p(stop) and the student's q(stop) where they stopped "
                "(temperature 1), first and last logged value (docs/METHOD.md §6.10). `data`: `rollout` trains on "
                "rollouts only, `mixed` / `adaptive` / `policy_gradient` mix them with dataset batches or policy "
                "updates; `supervise_stop` on: rollouts cut without a stop token get one appended and supervised."),
               "", stop_table(outputs, rollout_training), "",
               *[x for line in stop_handling_lines(rollout_training, stops, models) for x in (line, "")]]
    else:
        md += ["No run trained on rollouts.", ""]
    md += ["## SWITCH teacher share", "",
           (f"Share of response tokens the teacher emitted in the training rollouts ({100 * PAPER_TEACHER_SHARE:.0f}% "
           "at decay 1/10 by a secondary source on the paper, METHOD.md §1.1). A τ0 not set in the configuration is "
           "calibrated at the start of the run, on the run's starting checkpoint (its `init_from`, e.g. the warmed-up "
           "student), for the target share. The headline figure is the share over all rollout tokens (last column); the calibrated share is measured on "
           "the calibration prompts only, the logged shares per training step."), ""]
    md += [teacher_share_table(outputs, switch_runs, target_share) if switch_runs else "No SWITCH run.", ""]
    if "share" in links:
        md += [f"![teacher share by position]({links['share']})", ""]
        others = [f"`{r}`" for r in share_runs if r not in switch_runs]
        if others:
            md += [(f"The plot also draws the rollout traces of {', '.join(others)}, which have no gate: there the "
                    "teacher share is that of the run's own sampler (MiniLLM's mixture α·p + (1−α)·q draws a token from "
                    "the teacher's component with probability α, `rollout.mixture_alpha`; docs/METHOD.md §6.5)."), ""]
    md += ["## The gate", "", *gate_lines(outputs, switch_runs, schedules, links.get("jsd"))]
    md += ["## Training and evaluation time", "", training_time_table(outputs.summaries, trained, runs), "",
           evaluation_time_table(evals, models), "", compute_summary(outputs, trained, runs, models), ""]
    md += ["## Reading against the paper", "", *[f"- {line}" for line in reading(inputs)],
           *[f"- {line}" for line in _caveats(outputs, runs, done)], ""]
    atomic_write_text(out_md, "\n".join(md))
    for name in ("rouge_average.png", "rouge_by_length.png", "teacher_share_by_position.png", "jsd_by_position.png"):
        stale = plots / name
        if stale not in written:
            stale.unlink(missing_ok=True)
    return ResultsDoc(out_md, written, missing)
