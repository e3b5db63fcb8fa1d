"""Run every stage in order, in this process: data -> teacher -> student -> gate profile -> SeqKD data -> distill
runs -> evaluate -> report. Finished stages are skipped (their output exists and was made with the same configuration), so an
interrupted pipeline continues where it stopped; ``--force`` reruns everything.

This is the dependency-free driver behind ``make run``; ``dvc repro`` and the Prefect flows run the same stages.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time

from switch_core.atomic import atomic_write_json
from switch_core.config import Config
from switch_core.layout import RunLayout
from switch_core.stages import pipeline_stages


def _fingerprint(config: Config) -> str:
    return hashlib.sha256(json.dumps(config.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    from switch_core.cli import main  # the stages run through the same CLI entry as DVC's

    layout = RunLayout.from_config(args.config, args.project_root)
    stamp_file = layout.root / "pipeline_stamps.json"
    stamps = json.loads(stamp_file.read_text()) if stamp_file.exists() and not args.force else {}
    fingerprint = _fingerprint(args.config)
    config_args = ["--params", args.params] + (["--preset", args.preset] if args.preset else [])
    for override in args.overrides:
        config_args += ["--set", override]
    stages = pipeline_stages(args.config, layout)
    start = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        if stamps.get(stage.name) == fingerprint and stage.output.exists():
            print(f"[{i}/{len(stages)}] {stage.name}: up to date, skipped")
            continue
        print(f"[{i}/{len(stages)}] {stage.name}: switch-kd {' '.join(stage.argv)}", flush=True)
        t0 = time.perf_counter()
        code = main([*stage.argv, *config_args])
        if code:
            print(f"pipeline stopped at {stage.name} (exit {code}); fix the problem and re-run to continue")
            return code
        stamps[stage.name] = fingerprint
        atomic_write_json(stamp_file, stamps)
        print(f"[{i}/{len(stages)}] {stage.name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"pipeline finished in {time.perf_counter() - start:.0f} s; outputs in {layout.root}")
    report = layout.report_dir / "report.md"
    if report.exists():
        print(report.read_text())
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rerun every stage")
