"""Run one distillation run: ``switch-kd distill --run NAME`` (NAME a key of ``runs`` in params.yaml).

A run is a method (``runs.NAME.method``: kd, seqkd, imitkd, gkd, distillm, switch, minillm, sft), the checkpoint it
starts from (``runs.NAME.init_from``: student-init, student-sft — student-init when ``student.warmup`` is false —, or
another run, which chains stages, e.g. SFT warm-up -> SWITCH with a high τ0 -> SWITCH with a lower τ0) and dotted config overrides for this run only (``runs.NAME.overrides``).
It trains with ``optim`` and writes the checkpoint with the best dev ROUGE-L to ``models/NAME`` with
``train_summary.json`` when it ends; its resumable state goes to ``state/NAME``: re-running the command continues
a killed or interrupted run, ``--restart`` starts over (see ``switch_core.commands.training_flags``).
``--method NAME`` is accepted for ``--run NAME``. For several processes set ``SWITCHKD_ACCELERATE_ARGS`` (e.g.
``SWITCHKD_ACCELERATE_ARGS="--multi_gpu --num_processes 2" switch-kd distill ...``: the command re-launches
itself under ``accelerate launch``) or run it under ``accelerate launch -m switch_core.cli distill ...``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from switch_core.commands.training_flags import add_resume_arguments, resume_options
from switch_core.config import Config, flatten
from switch_core.layout import RunLayout
from switch_core.tracking import Tracker, closing_tracker
from switch_core.training.job import TrainResult
from switch_core.training.lm_corpus import load_lm_corpus
from switch_core.training.loop import train
from switch_core.training.run_setup import (
    build_job,
    is_main_process,
    needs_teacher,
    require,
    resolve_select_by,
    stage_tracker,
)

BASE_CHECKPOINTS = {"student-init": "build-student", "student-sft": "sft --role student"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a key of `runs` in the params file")
    which.add_argument("--method", help="same as --run (the default runs are named after their method)")
    add_resume_arguments(parser)


def distill(
    config: Config, layout: RunLayout, run_name: str,
    *,
    resume: bool = True,
    restart_if_incompatible: bool = False,
    tracker: Tracker | None = None,
) -> TrainResult:
    """Train the distillation run ``run_name`` (module docstring) and return its result.

    Raises:
        ConfigError: unknown run, or its overrides do not validate.
        switch_core.training.run_setup.StageInputError: the start checkpoint, the teacher, the data splits or the
            SeqKD data are missing (the message names the command that produces them).
        switch_core.training.lm_corpus.LMCorpusError: MiniLLM's pre-training corpus (``lm_data``, read when
            ``lm_coef > 0``; relative paths from the working directory, as ``data.path``) cannot be used.
    """
    cfg = config.run_config(run_name)
    run = cfg.runs[run_name]
    method = cfg.method_config(run_name)
    init_from = run.init_from
    if init_from == "student-sft" and not cfg.student.warmup:
        init_from = "student-init"  # no warm-up stage: start from the untrained student
    producer = BASE_CHECKPOINTS.get(init_from, f"distill --run {init_from}")
    train_file = layout.seqkd_data if method.data == "seqkd" else layout.split("train")
    job = build_job(
        cfg, layout, name=run_name, init_dir=require(layout.model(init_from), producer), method=method,
        optim=cfg.optim, select_by=resolve_select_by(cfg.optim, "rouge_l"),
        train_file=require(train_file, "seqkd-data" if method.data == "seqkd" else "prepare-data"), resume=resume,
        with_teacher=needs_teacher(method), restart_if_incompatible=restart_if_incompatible,
    )
    if method.lm_coef > 0:
        job.lm_corpus = load_lm_corpus(Path(method.lm_data), job.tokenizer, max_length=cfg.data.max_length)
    tracker = stage_tracker(cfg, layout, job, tracker)
    tracker.set_tags({"stage": "distill", "run": run_name, "method": run.method, "init_from": init_from})
    tracker.log_params(flatten(cfg.model_dump(exclude={"runs", "methods"})) | {
        **{f"method.{k}": v for k, v in method.model_dump().items()}, "method": run.method, "init_from": init_from,
    })
    with closing_tracker(tracker):
        return train(job, tracker=tracker)


def state_dir(args: argparse.Namespace) -> Path:
    """The folder of the run's resumable training state (what a re-run continues)."""
    return RunLayout.from_config(args.config, args.project_root).state(args.run or args.method)


def run(args: argparse.Namespace) -> int:
    name = args.run or args.method
    layout = RunLayout.from_config(args.config, args.project_root)
    result = distill(args.config, layout, name, **resume_options(args))
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
    if is_main_process():
        print(f"distill {name}: best at step {result.best_step}/{result.steps} ({best}) -> {result.output_dir}")
    return 0
