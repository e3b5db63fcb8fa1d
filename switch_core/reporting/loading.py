"""Reading a run's outputs for the reports: evaluations, training summaries, data report, SeqKD meta, training logs and
rollout traces. Every reader names the file (and line) it cannot read.

Formats:

- evaluations: ``eval/<model>/<benchmark>/metrics.json`` written by :mod:`switch_core.evaluation.evaluate`;
- training logs: JSONL, either the :class:`~switch_core.tracking.JsonlTracker` form ``{"event": "metrics", "step":
  int, "metrics": {"train/loss": ..., ...}}`` or the bare ``{"step": int, "metrics": {...}}``; other lines (params,
  tags, artifacts) are ignored;
- rollout traces: JSONL whose lines carry the per-position sources of rollouts, either ``{"sources": ["student",
  "teacher", ...]}`` (``RolloutBatch.to_rows()``; booleans or 0/1 are accepted too, 1/True = teacher) or an aggregate
  ``{"step": int, "teacher_share_by_position": [...], "count_by_position": [...]}`` (counts default to 1 per
  position). A step written twice (a resumed run repeating a step) counts once: its last line wins;
- timings: the wall-clock keys (``wall_seconds``, ``throughput``, ``created``) are kept out of the tracked outputs, in
  a ``timings.json`` of the run's untracked folders (``state/<run>/`` for training, ``timings/eval/<model>/<benchmark>/``
  and ``timings/seqkd/``, :meth:`~switch_core.layout.RunLayout.timings`); files written before that carry them
  themselves; a key found nowhere is shown as n/a.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from switch_core.evaluation.evaluate import METRICS_FILE

TIMINGS_FILE = "timings.json"
"""Untracked file holding an output's wall-clock keys (module docstring)."""
TRACE_FILE = "rollout_traces.jsonl"
"""A training run's rollout trace, in its state folder."""


class ReportInputError(ValueError):
    """A report input that is missing or unreadable (no metrics.json found, a malformed file); names the file."""


def read_json(path: Path, timings: Path | None = None) -> dict[str, Any]:
    """A JSON object from ``path``, merged with the JSON object in ``timings`` when that file exists (its keys win).

    Raises:
        ReportInputError: the file is not readable as JSON, or holds something other than an object.
    """
    data = _json_object(path)
    if timings is not None and timings.is_file():
        data = data | _json_object(timings)
    return data


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ReportInputError(f"{path}: not readable as JSON ({err}); rerun the stage that writes it") from None
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_metrics(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` when it carries the per-seed values the results document is computed from.

    Raises:
        ReportInputError: no ``per_seed`` list with seed, rouge_l, bleu, exact_match and by_length for every seed.
    """
    per_seed = data.get("per_seed")
    ok = isinstance(per_seed, list) and per_seed and all(
        isinstance(s, dict) and {"seed", "rouge_l", "bleu", "exact_match", "by_length"} <= set(s) for s in per_seed
    )
    if not ok:
        raise ReportInputError(
            f"{path}: no per_seed list with seed, rouge_l, bleu, exact_match and by_length for every seed; it was "
            "not written by `switch-kd evaluate` (rerun that evaluation)"
        )
    return data


def collect_metrics(evals_dir: str | Path, models: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (model, benchmark) from ``{evals_dir}/<model>/<benchmark>/metrics.json`` (aggregates only).

    Args:
        evals_dir: the evaluations folder.
        models: model folder names to include, in this order; None = every folder holding a metrics.json (sorted).

    Returns:
        Columns ``model, benchmark, rouge_l_mean, rouge_l_sd, bleu_mean, bleu_sd, exact_match_mean,
        exact_match_sd, n, available, limit, seeds, max_new_tokens, dtype, model_path, by_length`` (``by_length`` is
        the aggregate dict ``{label: {"n", "mean", "sd"}}``); ``limit`` is None when the full set was used; ``dtype``
        is the evaluated weights' dtype (``float32`` when the protocol does not name one).

    Raises:
        ReportInputError: no metrics.json found, a requested model has none, or a file is not valid JSON.
    """
    root = Path(evals_dir)
    files = sorted(root.glob(f"*/*/{METRICS_FILE}"))
    if models is not None:
        wanted = list(models)
        missing = [m for m in wanted if not any(f.parent.parent.name == m for f in files)]
        if missing:
            raise ReportInputError(f"no {METRICS_FILE} under {root}/<model>/<benchmark>/ for model(s) {missing}")
        files = [f for m in wanted for f in files if f.parent.parent.name == m]
    if not files:
        raise ReportInputError(
            f"no evaluation results under {root}: expected {root}/<model>/<benchmark>/{METRICS_FILE} "
            "(run `switch-kd evaluate --out {root}/<model>` first)"
        )
    rows = []
    for path in files:
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
            agg = m["aggregate"]
            rows.append({
                "model": path.parent.parent.name,
                "benchmark": m.get("benchmark", path.parent.name),
                "rouge_l_mean": agg["rouge_l"]["mean"],
                "rouge_l_sd": agg["rouge_l"]["sd"],
                "bleu_mean": agg["bleu"]["mean"],
                "bleu_sd": agg["bleu"]["sd"],
                "exact_match_mean": agg["exact_match"]["mean"],
                "exact_match_sd": agg["exact_match"]["sd"],
                "n": m["num_examples"],
                "available": m.get("available_examples"),
                "limit": m.get("limit"),
                "seeds": ",".join(str(s) for s in m["protocol"]["seeds"]),
                "max_new_tokens": m["protocol"]["max_new_tokens"],
                "dtype": m["protocol"].get("dtype", "float32"),
                "model_path": m.get("model"),
                "by_length": agg.get("by_length", {}),
            })
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ReportInputError(f"{path}: not a metrics.json written by switch-kd evaluate ({err!r})") from None
    return pd.DataFrame(rows)


def find_files(patterns: Sequence[str], base: str | Path | None) -> list[Path]:
    """Files matching glob patterns: absolute ones as they are, relative ones under ``base`` (skipped when ``base`` is
    None); an existing file path matches itself.

    Returns:
        Sorted unique paths (empty when nothing matches).
    """
    found: set[Path] = set()
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_file():
            found.add(p)
        elif p.is_absolute():
            found.update(f for f in Path(p.anchor).glob(str(p.relative_to(p.anchor))) if f.is_file())
        elif base is not None:
            found.update(f for f in Path(base).glob(pattern) if f.is_file())
    return sorted(found)


def run_names(paths: Sequence[Path]) -> dict[str, Path]:
    """Run name -> file: the name of the folder holding it (its full path when two files share a folder name)."""
    names: dict[str, Path] = {}
    for path in paths:
        name = path.parent.name or path.stem
        names[name if name not in names else str(path)] = path
    return names


def _jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportInputError(f"{path}:{number}: not a JSON line ({err.msg})") from None
        if isinstance(row, dict):
            yield number, row


def read_training_log(path: str | Path) -> pd.DataFrame:
    """Metric values of one training log as a long table.

    Returns:
        Columns ``step, metric, value`` (floats; non-numeric values such as ``"nan"`` become NaN).

    Raises:
        ReportInputError: a line that is not JSON (names file and line).
    """
    rows = []
    for _, row in _jsonl(Path(path)):
        if row.get("event", "metrics") != "metrics" or "step" not in row or not isinstance(row.get("metrics"), dict):
            continue
        for name, value in row["metrics"].items():
            try:
                rows.append({"step": int(row["step"]), "metric": str(name), "value": float(value)})
            except (TypeError, ValueError):
                continue
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def metric_series(log: pd.DataFrame | None, name: str) -> pd.DataFrame:
    """Columns ``step, value`` of one metric of a training log (:func:`read_training_log`), by step; empty if none."""
    if log is None or log.empty:
        return pd.DataFrame(columns=["step", "value"])
    return log[log["metric"] == name].sort_values("step")[["step", "value"]]


def read_trace(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """The lines of a rollout trace as ``(line number, row)``, one per step: of lines with the same ``step`` only the
    last is kept (a resumed run may write a step again), in the place of that step's first line; lines without a
    ``step`` are all kept.

    Raises:
        ReportInputError: a line that is not JSON (names file and line).
    """
    rows: dict[Any, tuple[int, dict[str, Any]]] = {}
    for number, row in _jsonl(Path(path)):
        step = row.get("step")
        rows[("step", step) if isinstance(step, int) and not isinstance(step, bool) else ("line", number)] = (number,
                                                                                                              row)
    return list(rows.values())
