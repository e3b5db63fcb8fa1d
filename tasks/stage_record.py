"""What the MLflow run of a finished pipeline stage records: DVC hashes, configuration, metrics, artifacts.

Called by the Prefect task after ``dvc repro`` ran the stage (:mod:`tasks.prefect_tasks`). Training metrics per
step reach MLflow directly when the stage process uses the ``mlflow`` tracker backend; otherwise (``jsonl``, or a CLI
without the plugin) the stage's JSONL tracker file is replayed into the run, so the run has its curves either way.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from switch_core.config import Config
from switch_core.evaluation.evaluate import METRICS_FILE
from switch_core.layout import RunLayout
from switch_core.reporting.loading import TRACE_FILE, check_metrics, read_json
from switch_core.reporting.scores import average_scores, has_per_seed
from switch_core.reporting.teacher_share import teacher_share, teacher_share_by_position
from tasks.dvc_stages import dep_hashes, lock_entry, out_hashes, stage_group
from tasks.mlflow_tracking import WEIGHT_SUFFIXES, MlflowRun, replay_jsonl

RUN_STAGES = frozenset({"distill", "evaluate"})
"""Stage groups whose ``@item`` is a ``runs`` entry (their configuration is that run's)."""

TRAINED_MODEL = {"sft-teacher": "teacher", "sft-student": "student-sft"}
"""Training stages -> the model (and tracker log) name they write; ``distill@NAME`` writes ``NAME``."""

SAMPLE_LINES = 20
"""Generations per benchmark kept as the run's sample artifact."""


def run_of_stage(name: str) -> str | None:
    """The ``runs`` entry a stage belongs to (``distill@switch`` -> ``switch``), None for shared stages."""
    group, _, item = name.partition("@")
    return item if group in RUN_STAGES and item else None


def trained_model(name: str) -> str | None:
    """The model a training stage writes (``sft-teacher`` -> ``teacher``, ``distill@kd`` -> ``kd``), else None."""
    group, _, item = name.partition("@")
    return item if group == "distill" else TRAINED_MODEL.get(group)


def eval_metrics(eval_dir: str | Path, timings_dir: str | Path | None = None) -> dict[str, float]:
    """Flat evaluation metrics of one model from ``<eval_dir>/<benchmark>/metrics.json`` (tokens/s from
    ``<timings_dir>/<benchmark>/timings.json``, or from metrics.json files written before timings moved out).

    Keys ``<benchmark>/rouge_l`` (mean over seeds), ``<benchmark>/rouge_l_sd``, ``<benchmark>/bleu``,
    ``<benchmark>/exact_match``, ``<benchmark>/tokens_per_s``; empty when nothing was evaluated.

    Raises:
        ValueError: a metrics.json that is not valid JSON or lacks ``aggregate`` (names the file).
    """
    metrics: dict[str, float] = {}
    for path in sorted(Path(eval_dir).glob("*/metrics.json")):
        bench = path.parent.name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            agg = data["aggregate"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path}: not an evaluation metrics file ({err})") from None
        metrics[f"{bench}/rouge_l"] = float(agg["rouge_l"]["mean"])
        metrics[f"{bench}/rouge_l_sd"] = float(agg["rouge_l"]["sd"])
        metrics[f"{bench}/bleu"] = float(agg["bleu"]["mean"])
        metrics[f"{bench}/exact_match"] = float(agg["exact_match"]["mean"])
        timings = Path(timings_dir) / bench / "timings.json" if timings_dir is not None else None
        if timings is not None and timings.is_file():
            data = json.loads(timings.read_text(encoding="utf-8"))
        if isinstance(data.get("throughput"), dict) and "tokens_per_s" in data["throughput"]:
            metrics[f"{bench}/tokens_per_s"] = float(data["throughput"]["tokens_per_s"])
    return metrics


def cell_metrics(layout: RunLayout, run: str) -> dict[str, float]:
    """What an ablation's compare view ranks its cells by, computed as docs/ABLATIONS.md does
    (:mod:`switch_core.reporting.ablations`): over the benchmarks ``run`` was evaluated on, per seed, then mean over
    seeds, ``average/rouge_l`` (``average/rouge_l_sd``: the sd over two or more seeds), ``average/stop_rate`` (% of
    answers ended by a stop token) and ``average/tokens_per_answer`` (response length); ``rollout/teacher_share`` (% of
    its training rollouts' tokens the teacher wrote) when it left a rollout trace. Empty when nothing was evaluated or
    traced. ``average/rouge_l`` sorts first: the MLflow compare view plots the first metric the runs share.

    Raises:
        ReportInputError: an output file that exists but is not readable (names the file).
    """
    evals = {}
    for path in sorted(layout.eval_dir(run).glob(f"*/{METRICS_FILE}")):
        evals[path.parent.name] = check_metrics(path, read_json(path))
    out: dict[str, float] = {}
    for key, metric, scale in (("rouge_l", "rouge_l", 1.0), ("stop_rate", "stopped_fraction", 100.0),
                               ("tokens_per_answer", "mean_prediction_length", 1.0)):
        if evals and has_per_seed({run: evals}, metric):
            score = average_scores({run: evals}, sorted(evals), metric).get(run)
            if score is not None:
                out[f"average/{key}"] = scale * score.mean
                if key == "rouge_l" and not math.isnan(score.sd):
                    out["average/rouge_l_sd"] = score.sd
    trace = layout.state(run) / TRACE_FILE
    if trace.is_file():
        share, tokens = teacher_share(teacher_share_by_position(trace))
        if tokens:
            out["rollout/teacher_share"] = 100.0 * share
    return out


def train_summary_metrics(model_dir: str | Path) -> dict[str, float]:
    """``best/<metric>`` and ``final/<metric>`` from a checkpoint's ``train_summary.json`` (empty if absent)."""
    path = Path(model_dir) / "train_summary.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, float] = {}
    for section in ("best", "final"):
        for key, value in (data.get(section) or {}).items():
            if isinstance(value, (int, float)):
                out[f"{section}/{key}"] = float(value)
    if isinstance(data.get("tau0"), (int, float)):
        out["tau0"] = float(data["tau0"])
    return out


def _log_generation_samples(run: MlflowRun, eval_dir: Path) -> None:
    for gen in sorted(eval_dir.glob("*/generations.jsonl")):
        with gen.open(encoding="utf-8") as handle:
            lines = [line for _, line in zip(range(SAMPLE_LINES), handle)]
        run.client.log_text(run.run_id, "".join(lines), f"samples/{gen.parent.name}_generations.jsonl")


def record_stage(
    run: MlflowRun, root: Path, name: str, config: Config, *, started: float, dvc_output: str
) -> dict[str, str]:
    """Record a stage that ``dvc repro`` just ran into its MLflow ``run``; return the outputs' md5s.

    Args:
        run: the stage's MLflow run.
        root: the project folder.
        name: the DVC stage.
        config: the configuration params.yaml gives (the stage's run overrides are applied here).
        started: Unix time the stage started (JSONL events from before are not replayed).
        dvc_output: what ``dvc repro`` printed (tells a run-cache restore from a real run).
    """
    entry = lock_entry(root, name)
    outs = out_hashes(entry)
    run.set_tags(
        {f"dvc.dep.{path}": md5 for path, md5 in dep_hashes(entry).items()}
        | {f"dvc.out.{path}": md5 for path, md5 in outs.items()}
        | {"dvc.restored_from_run_cache": str("skipping run" in dvc_output).lower()}
    )
    run_name = run_of_stage(name)
    run.log_config(config, root / "params.yaml", run_name)
    layout = RunLayout.from_config(config, root)
    model = trained_model(name)
    if model is not None:
        log = layout.root / "tracking" / model / "metrics.jsonl"
        if not run.metric_keys() and log.is_file():
            replay_jsonl(run, log, since=started)
        summary = train_summary_metrics(layout.model(model))
        if summary:
            run.log_metrics(summary, step=0)
    for path, md5 in outs.items():
        out = root / path
        if out.is_dir() and any(p.suffix in WEIGHT_SUFFIXES for p in out.rglob("*")):
            run.log_reference(out, md5=md5)
    group = stage_group(name)
    if group in ("evaluate", "evaluate-base"):
        eval_dir = root / next(iter(outs))
        run.log_metrics(eval_metrics(eval_dir, layout.timings(eval_dir)), step=0)
        for path in sorted(eval_dir.glob("*/metrics.json")):
            run.client.log_artifact(run.run_id, str(path), f"metrics/{path.parent.name}")
        _log_generation_samples(run, eval_dir)
    elif group == "report":
        run.log_artifact(layout.report_dir, "report")
    elif group == "prepare-data" and layout.data_report.is_file():
        run.log_artifact(layout.data_report)
    elif group == "gate-profile" and layout.gate_profile.is_file():
        run.log_artifact(layout.gate_profile)
    elif group == "seqkd-data" and (layout.seqkd_data.parent / "meta.json").is_file():
        run.log_artifact(layout.seqkd_data.parent / "meta.json")
    return outs


def stage_tags(name: str, config: Config, signature: str) -> dict[str, Any]:
    """Tags known before a stage runs: DVC stage and group, signature, and the run's method and name."""
    tags: dict[str, Any] = {
        "dvc.stage": name, "switchkd.stage_group": stage_group(name), "switchkd.signature": signature,
    }
    run_name = run_of_stage(name)
    if run_name and run_name in config.runs:
        tags.update({"run": run_name, "method": config.runs[run_name].method})
    return tags
