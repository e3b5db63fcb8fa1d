"""Supervised fine-tuning: the teacher (models/teacher-base -> models/teacher) or the student's warm-up
(models/student-init -> models/student-sft), cross-entropy on the ground-truth responses (docs/METHOD.md §6.1); with
``student.warmup_method: kd`` the warm-up's loss is instead the forward KL to the teacher on the same responses
(§6.2).

``--role teacher`` uses ``teacher_optim`` and keeps the checkpoint with the best dev ROUGE-L; ``--role student`` uses
``warmup_optim`` and keeps the one with the lowest dev loss (DistiLLM "init" scripts, docs/METHOD.md §1.2, §5.6).
``optim.select_by`` (of the section used) overrides the criterion. With ``teacher.sft: false`` the teacher is used as
it is: ``--role teacher`` then copies models/teacher-base to models/teacher (hard links), so every later stage and
DVC see the same layout. For several processes set ``SWITCHKD_ACCELERATE_ARGS`` (e.g.
``SWITCHKD_ACCELERATE_ARGS="--multi_gpu --num_processes 2" switch-kd sft ...``: the command re-launches itself under
``accelerate launch``) or run it under ``accelerate launch -m switch_core.cli sft ...``; re-running the command continues a killed or interrupted run from ``state/<teacher|student-sft>``,
``--restart`` starts over (see ``switch_core.commands.training_flags``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from switch_core.commands.training_flags import add_resume_arguments, resume_options
from switch_core.config import Config, flatten, reference_stage_method
from switch_core.layout import RunLayout
from switch_core.models.checkpoint import copy_checkpoint
from switch_core.tracking import Tracker, closing_tracker
from switch_core.training.job import TrainResult
from switch_core.training.loop import train
from switch_core.training.run_setup import (
    build_job,
    is_main_process,
    needs_teacher,
    require,
    resolve_select_by,
    stage_tracker,
)

ROLES = {
    # role: (input checkpoint, its producer, output name, optimiser section, default selection)
    "teacher": ("teacher-base", "setup-teacher", "teacher", "teacher_optim", "rouge_l"),
    "student": ("student-init", "build-student", "student-sft", "warmup_optim", "loss"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", required=True, choices=sorted(ROLES), help="fine-tune the teacher or warm up the student")
    add_resume_arguments(parser)


def sft(
    config: Config, layout: RunLayout, role: str,
    *,
    resume: bool = True,
    restart_if_incompatible: bool = False,
    tracker: Tracker | None = None,
) -> TrainResult:
    """Run the SFT stage of ``role`` (``teacher`` or ``student``); return the training result.

    Raises:
        ValueError: unknown role.
        switch_core.training.run_setup.StageInputError: the input checkpoint or the data splits are missing.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(sorted(ROLES))}")
    source, producer, name, section, default_select = ROLES[role]
    optim = getattr(config, section)
    method_name = config.student.warmup_method if role == "student" else "sft"
    method = reference_stage_method(method_name)
    job = build_job(
        config, layout, name=name, init_dir=require(layout.model(source), producer), method=method, optim=optim,
        select_by=resolve_select_by(optim, default_select),
        train_file=require(layout.split("train"), "prepare-data"), resume=resume, with_teacher=needs_teacher(method),
        restart_if_incompatible=restart_if_incompatible,
    )
    tracker = stage_tracker(config, layout, job, tracker)
    tracker.set_tags({"stage": f"sft-{role}", "run": name, "method": method_name})
    tracker.log_params({f"{section}.{k}": v for k, v in flatten(optim.model_dump()).items()} | {"init_from": source})
    with closing_tracker(tracker):
        return train(job, tracker=tracker)


def state_dir(args: argparse.Namespace) -> Path:
    """The folder of the role's resumable training state (what a re-run continues)."""
    return RunLayout.from_config(args.config, args.project_root).state(ROLES[args.role][2])


def run(args: argparse.Namespace) -> int:
    layout = RunLayout.from_config(args.config, args.project_root)
    if args.role == "teacher" and not args.config.teacher.sft:
        out = copy_checkpoint(require(layout.model("teacher-base"), "setup-teacher"), layout.model("teacher"))
        print(f"sft teacher: teacher.sft is false, the base teacher is used as it is -> {out}")
        return 0
    result = sft(args.config, layout, args.role, **resume_options(args))
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
    if is_main_process():
        print(f"sft {args.role}: best at step {result.best_step}/{result.steps} ({best}) -> {result.output_dir}")
    return 0
