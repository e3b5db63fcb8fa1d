"""Run every stage in order, in this process: data -> teacher -> student -> SeqKD data -> distill runs -> evaluate
-> report. Finished stages are skipped (their output exists and was made with the same configuration), so an
interrupted pipeline continues where it stopped; ``--force`` reruns everything.

This is the dependency-free driver behind ``make run``; ``dvc repro`` and the Prefect flows run the same stages.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from switch_core.atomic import atomic_write_json
from switch_core.config import Config
from switch_core.layout import RunLayout


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its name, the CLI arguments that run it, the output it leaves."""

    name: str
    argv: tuple[str, ...]
    output: Path


def evaluated_models(config: Config) -> list[str]:
    """Models the pipeline evaluates: the teacher, the untrained and warmed-up student, then every run."""
    base = ["teacher", "student-init"] + (["student-sft"] if config.student.warmup else [])
    return base + list(config.runs)


def pipeline_stages(config: Config, layout: RunLayout) -> list[Stage]:
    """The stages of a run in dependency order (the same DAG as dvc.yaml)."""
    stages = [
        Stage("prepare-data", ("prepare-data",), layout.data_report),
        Stage("setup-teacher", ("setup-teacher",), layout.model("teacher-base")),
        Stage("sft-teacher", ("sft", "--role", "teacher", "--resume-compatible"), layout.model("teacher")),
        Stage("build-student", ("build-student",), layout.model("student-init")),
    ]
    if config.student.warmup:
        stages.append(Stage("sft-student", ("sft", "--role", "student", "--resume-compatible"), layout.model("student-sft")))
    if any(config.method_config(name).data == "seqkd" for name in config.runs):
        stages.append(Stage("seqkd-data", ("seqkd-data",), layout.seqkd_data))
    stages += [Stage(f"distill-{n}", ("distill", "--run", n, "--resume-compatible"), layout.model(n)) for n in config.runs]
    stages += [
        Stage(f"evaluate-{m}", ("evaluate", "--model", str(layout.model(m)), "--out", str(layout.eval_dir(m))),
              layout.eval_dir(m))
        for m in evaluated_models(config)
    ]
    stages.append(Stage("report", ("report", "--models", ",".join(evaluated_models(config))),
                        layout.report_dir / "report.md"))
    return stages


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
