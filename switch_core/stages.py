"""The pipeline's stage graph as ``switch-kd pipeline`` runs it (dvc.yaml declares the same graph for DVC; a test
checks that the two agree): the stages in dependency order, what each depends on, and the models that get evaluated."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from switch_core.config import Config
from switch_core.layout import RunLayout

EVAL_DECODING = tuple(f"eval.{k}" for k in ("max_new_tokens", "temperature", "top_k", "top_p", "no_repeat_ngram_size",
                                             "batch_size"))
"""The eval settings of the dev evaluation inside a training stage."""

ROLLOUT_DECODING = tuple(f"rollout.{k}" for k in ("tau0", "schedule", "decay", "horizon", "max_new_tokens", "greedy",
                                                  "temperature", "top_k", "top_p", "batch_size", "engine",
                                                  "max_draft_tokens"))
"""The rollout settings the gate-profile stage decodes with."""


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its name, the CLI arguments that run it, the output it leaves, the config keys it reads
    (dotted, a whole section or one key: dvc.yaml's ``params``) and the files and folders it reads (dvc.yaml's
    ``deps`` under the run folder)."""

    name: str
    argv: tuple[str, ...]
    output: Path
    params: tuple[str, ...] = ()
    inputs: tuple[Path, ...] = ()


def evaluated_models(config: Config) -> list[str]:
    """Models the pipeline evaluates: the teacher, the untrained and warmed-up student, then every run."""
    base = ["teacher", "student-init"] + (["student-sft"] if config.student.warmup else [])
    return base + list(config.runs)


def _distill(config: Config, layout: RunLayout, name: str) -> Stage:
    run = config.runs[name]
    init_from = "student-init" if run.init_from == "student-sft" and not config.student.warmup else run.init_from
    seqkd = (layout.seqkd_data,) if config.method_config(name).data == "seqkd" else ()
    return Stage(
        f"distill-{name}", ("distill", "--run", name, "--resume-compatible"), layout.model(name),
        params=(f"runs.{name}", f"methods.{run.method}", "optim", "rollout", "data", "teacher.dtype", "teacher.sft",
                "student.lora", *EVAL_DECODING),
        inputs=(layout.data_dir, *seqkd, layout.model("teacher"), layout.model(init_from)),
    )


def pipeline_stages(config: Config, layout: RunLayout) -> list[Stage]:
    """The stages of a run in dependency order (the same DAG, params and run-folder deps as dvc.yaml; a distill stage
    reads the SeqKD data only when its method trains on it, and starts from ``student-init`` without a warm-up)."""
    stages = [
        Stage("prepare-data", ("prepare-data",), layout.data_report, params=("data",)),
        Stage("setup-teacher", ("setup-teacher",), layout.model("teacher-base"), params=("teacher", "data.max_length"),
              inputs=(layout.split("train"),)),
        Stage("sft-teacher", ("sft", "--role", "teacher", "--resume-compatible"), layout.model("teacher"),
              params=("teacher.sft", "teacher_optim", "data", *EVAL_DECODING),
              inputs=(layout.data_dir, layout.model("teacher-base"))),
        Stage("build-student", ("build-student",), layout.model("student-init"),
              params=("student", "data.max_length", "data.max_prompt_length", "data.prompt_format", "seed"),
              inputs=(layout.split("train"), layout.model("teacher-base"))),
    ]
    if config.student.warmup:
        stages.append(Stage("sft-student", ("sft", "--role", "student", "--resume-compatible"),
                            layout.model("student-sft"),
                            params=("student.warmup", "student.warmup_method", "student.lora", "warmup_optim",
                                    "teacher.dtype", "teacher.sft", "data", *EVAL_DECODING),
                            # the teacher only for warmup_method kd; declared always, as dvc.yaml is static
                            inputs=(layout.data_dir, layout.model("student-init"), layout.model("teacher"))))
    student = "student-sft" if config.student.warmup else "student-init"
    stages.append(Stage("gate-profile", ("gate-profile",), layout.gate_profile,
                        params=("gate_profile", "seed", "student.warmup", "teacher.dtype", "teacher.sft",
                                "optim.mixed_precision", "data.prompt_format", "data.max_prompt_length",
                                *ROLLOUT_DECODING),
                        inputs=(layout.split("dev"), layout.model("teacher"), layout.model(student))))
    if any(config.method_config(name).data == "seqkd" for name in config.runs):
        stages.append(Stage("seqkd-data", ("seqkd-data",), layout.seqkd_data,
                            params=("data", "seed", "teacher.dtype", "teacher.sft", "optim.mixed_precision",
                                    "eval.batch_size"),
                            inputs=(layout.data_dir, layout.model("teacher"))))
    stages += [_distill(config, layout, n) for n in config.runs]
    stages += [
        Stage(f"evaluate-{m}", ("evaluate", "--model", str(layout.model(m)), "--out", str(layout.eval_dir(m))),
              layout.eval_dir(m), params=("eval", "data.prompt_format", "seed"),
              inputs=(layout.data_dir, layout.model(m)))
        for m in evaluated_models(config)
    ]
    stages.append(Stage("report", ("report", "--models", ",".join(evaluated_models(config))),
                        layout.report_dir / "report.md", inputs=(layout.root / "eval",)))
    return stages
