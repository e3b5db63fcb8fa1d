"""Tables and plots comparing evaluated models: report.md, results.csv, results_long.csv and PNG plots.

Reads ``EVALS/<model>/<benchmark>/metrics.json``; training logs and SWITCH rollout traces are optional (globs under
``--runs``; see :mod:`switch_core.reporting.loading` for the formats).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from switch_core.layout import RunLayout
from switch_core.reporting.report_md import TRACE_GLOB, TRAIN_LOG_GLOB, build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evals", default=None, help="evaluations folder (default: {run_dir}/eval)")
    parser.add_argument("--runs", default=None, help="base folder of training logs and traces (default: run_dir)")
    parser.add_argument("--out", default=None, help="output folder (default: {run_dir}/report)")
    parser.add_argument("--models", default=None, help="comma-separated model names to include, in order")
    parser.add_argument(
        "--train-logs", action="append", default=None, metavar="GLOB",
        help=f"training-log JSONL glob, relative to --runs or absolute (repeatable; default {TRAIN_LOG_GLOB})",
    )
    parser.add_argument(
        "--traces", action="append", default=None, metavar="GLOB",
        help=f"rollout-trace JSONL glob, relative to --runs or absolute (repeatable; default {TRACE_GLOB})",
    )
    parser.add_argument("--title", default="switch-kd comparison", help="report heading")


def _resolve(path: str | None, default: Path, root: Path) -> Path:
    if path is None:
        return default
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def run(args: argparse.Namespace) -> int:
    root = Path(args.project_root)
    layout = RunLayout.from_config(args.config, root)
    evals = _resolve(args.evals, layout.root / "eval", root)
    runs = _resolve(args.runs, layout.root, root)
    out = _resolve(args.out, layout.report_dir, root)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    result = build_report(
        evals, out, runs_dir=runs, train_logs=args.train_logs or [TRAIN_LOG_GLOB], traces=args.traces or [TRACE_GLOB],
        models=models, title=args.title,
    )
    print(f"report: {result.markdown}")
    print(f"tables: {result.csv}, {result.csv_long}")
    print(f"plots: {', '.join(p.name for p in result.plots)}")
    print(f"training logs read: {len(result.train_logs)}; rollout traces read: {len(result.traces)}")
    return 0
