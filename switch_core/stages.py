"""The pipeline's stage graph as ``switch-kd pipeline`` runs it (dvc.yaml declares the same graph for DVC; a test
checks that the two agree): the stages in dependency order and the models that get evaluated."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    stages.append(Stage("gate-profile", ("gate-profile",), layout.gate_profile))
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
