"""A run folder's outputs, read at once for the results document (:func:`load_run_outputs`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from switch_core.config import ROLLOUT_DATA
from switch_core.evaluation.evaluate import METRICS_FILE
from switch_core.layout import RunLayout
from switch_core.reporting.loading import (
    TIMINGS_FILE,
    TRACE_FILE,
    ReportInputError,
    check_metrics,
    read_json,
    read_training_log,
)
from switch_core.reporting.teacher_share import teacher_share_by_position


def writes_rollout_traces(data: str, strategy: str) -> bool:
    """Whether training writes ``state/<run>/rollout_traces.jsonl`` for a run of method data source ``data`` and
    rollout generator ``strategy`` (``method.rollout_strategy or rollout.strategy``): the training loop records the
    teacher share by position only for rollouts that may take teacher tokens, i.e. on rollout data and with a
    generator other than the student alone (switch_core/training/loop.py)."""
    return data in ROLLOUT_DATA and strategy != "student"


@dataclass
class RunOutputs:
    """What :func:`load_run_outputs` found in a run folder; absent pieces are None or missing keys.

    ``traces`` holds each run's teacher share by position
    (:func:`~switch_core.reporting.teacher_share.teacher_share_by_position`), ``logs`` its training log
    (:func:`~switch_core.reporting.loading.read_training_log`), ``gate_profile`` the ``gate-profile`` stage's file
    (:mod:`switch_core.commands.gate_profile`).
    """

    run_dir: Path
    evaluations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data_report: dict[str, Any] | None = None
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    seqkd_meta: dict[str, Any] | None = None
    traces: dict[str, pd.DataFrame] = field(default_factory=dict)
    logs: dict[str, pd.DataFrame] = field(default_factory=dict)
    gate_profile: dict[str, Any] | None = None

    def empty(self) -> bool:
        """Whether the folder holds none of the outputs (no evaluation, training summary, data report, trace or gate
        profile)."""
        return not (self.evaluations or self.summaries or self.data_report or self.traces or self.gate_profile)


PROFILE_KEYS = ("student", "decoding", "rollouts", "tokens", "overall", "buckets", "positions", "jsd")
"""Keys the reports read from ``analysis/gate_profile.json``."""


def read_gate_profile(path: Path) -> dict[str, Any]:
    """The ``gate-profile`` stage's file.

    Raises:
        ReportInputError: not a JSON object, or without one of :data:`PROFILE_KEYS` (names the file and the keys).
    """
    profile = read_json(path)
    absent = [key for key in PROFILE_KEYS if key not in profile]
    if absent:
        raise ReportInputError(f"{path} lacks {', '.join(absent)}: not a gate-profile output (rerun `switch-kd "
                               "gate-profile`)")
    return profile


def load_run_outputs(run_dir: str | Path, runs: Sequence[str] = ()) -> RunOutputs:
    """Read every output the results document uses from a run folder; nothing is required.

    Reads ``eval/<model>/<benchmark>/metrics.json``, ``data/data_report.json``, ``models/<name>/train_summary.json``,
    ``seqkd/meta.json``, ``analysis/gate_profile.json``, ``state/<run>/rollout_traces.jsonl`` and
    ``tracking/<run>/metrics.jsonl``.

    Args:
        run_dir: the run folder (``run_dir`` of the configuration).
        runs: distillation run names whose rollout trace and training log are read (besides any other run that has a
            trace file).

    Returns:
        The :class:`RunOutputs`; evaluations keyed ``[model][benchmark]``.

    Raises:
        ReportInputError: a file that exists but is not valid JSON, a metrics.json without per-seed values, a gate
            profile without its keys, or a trace or log line that is not JSON (names file and line).
    """
    layout = RunLayout(Path(run_dir))
    out = RunOutputs(layout.root)
    for path in sorted(layout.root.glob(f"eval/*/*/{METRICS_FILE}")):
        metrics = read_json(path, layout.timings(path.parent) / TIMINGS_FILE)
        out.evaluations.setdefault(path.parent.parent.name, {})[path.parent.name] = check_metrics(path, metrics)
    if layout.data_report.is_file():
        out.data_report = read_json(layout.data_report)
    for path in sorted(layout.root.glob("models/*/train_summary.json")):
        out.summaries[path.parent.name] = read_json(path, layout.state(path.parent.name) / TIMINGS_FILE)
    if layout.seqkd_meta.is_file():
        out.seqkd_meta = read_json(layout.seqkd_meta, layout.timings(layout.seqkd_meta.parent) / TIMINGS_FILE)
    if layout.gate_profile.is_file():
        out.gate_profile = read_gate_profile(layout.gate_profile)
    traced = {p.parent.name for p in layout.root.glob(f"state/*/{TRACE_FILE}")}
    for name in list(dict.fromkeys([*runs, *sorted(traced)])):
        trace = layout.state(name) / TRACE_FILE
        if trace.is_file():
            out.traces[name] = teacher_share_by_position(trace)
        log = layout.root / "tracking" / name / "metrics.jsonl"
        if log.is_file():
            out.logs[name] = read_training_log(log)
    return out
