"""Configuration + stage layout -> a :class:`~switch_core.training.job.TrainJob` (shared by ``sft`` and ``distill``).

The stage layout (switch_core.layout) fixes where each training stage reads and writes:

=====================  ========================  ===========================  =================  =============
stage                  starts from               writes                       optimiser          selection
=====================  ========================  ===========================  =================  =============
sft --role teacher     models/teacher-base       models/teacher               ``teacher_optim``  dev ROUGE-L
sft --role student     models/student-init       models/student-sft           ``warmup_optim``   dev loss
distill --run NAME     models/<init_from>        models/NAME                  ``optim``          dev ROUGE-L
=====================  ========================  ===========================  =================  =============

(selection: ``select_by: auto``; METHOD.md §5.6). Each run keeps its resumable state in ``state/<name>``. The teacher
of a distillation run is ``models/teacher`` (``teacher.sft: true``) or ``models/teacher-base``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from switch_core.config import Config, MethodConfig, OptimConfig
from switch_core.hashing import checkpoint_fingerprint, files_fingerprint
from switch_core.layout import RunLayout
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.lora import apply_lora
from switch_core.processes import process_state
from switch_core.tracking import NullTracker, Tracker, tracker_from_config
from switch_core.training.examples import load_dev, load_examples
from switch_core.training.job import TrainJob
from switch_core.training.losses import LossSpec
from switch_core.training.state import (
    check_resumable,
    engine_strategy,
    lenient_keys,
    resume_decision,
    resume_fingerprint,
)


class StageInputError(ValueError):
    """A training stage's input (checkpoint or data file) is missing; the message names the command producing it."""


def require(path: Path, producer: str) -> Path:
    """``path`` if it exists.

    Raises:
        StageInputError: it does not; the message says which command produces it.
    """
    if not path.exists():
        raise StageInputError(f"{path} does not exist; run `switch-kd {producer}` first")
    return path


def teacher_dir(config: Config, layout: RunLayout) -> Path:
    """The teacher a distillation uses: the SFT'd teacher, or the base teacher when ``teacher.sft`` is false."""
    if config.teacher.sft:
        return require(layout.model("teacher"), "sft --role teacher")
    return require(layout.model("teacher-base"), "setup-teacher")


def resolve_select_by(optim: OptimConfig, default: Literal["rouge_l", "loss"]) -> Literal["rouge_l", "loss"]:
    """``optim.select_by`` with ``auto`` replaced by the stage's default."""
    return default if optim.select_by == "auto" else optim.select_by


def input_fingerprints(
    config: Config, layout: RunLayout, *, name: str, init_dir: Path, train_file: Path, with_teacher: bool
) -> dict[str, Any]:
    """What a training stage starts from, fingerprinted (the resume check of :class:`TrainJob` ``inputs``).

    Returns:
        ``{"student_init", "teacher", "train", "dev", "lora", "data"}``: checkpoint and file hashes
        (:mod:`switch_core.hashing`; ``teacher`` None without a teacher), the LoRA settings the student gets (None for
        full fine-tuning) and the tokenisation settings (``data`` section).
    """
    lora = config.student.lora if name != "teacher" else None
    return {
        "student_init": checkpoint_fingerprint(init_dir),
        "teacher": checkpoint_fingerprint(teacher_dir(config, layout)) if with_teacher else None,
        "train": files_fingerprint([train_file]),
        "dev": files_fingerprint([require(layout.split("dev"), "prepare-data")]),
        "lora": lora.model_dump() if lora is not None else None,
        "data": config.data.model_dump(include={"max_length", "max_prompt_length", "prompt_format"}),
    }


def build_job(
    config: Config,
    layout: RunLayout,
    *,
    name: str,
    init_dir: Path,
    method: MethodConfig,
    optim: OptimConfig,
    select_by: Literal["rouge_l", "loss"],
    train_file: Path,
    resume: bool,
    with_teacher: bool,
    restart_if_incompatible: bool = False,
) -> TrainJob:
    """Load the models and data of one training stage into a :class:`TrainJob`.

    Args:
        config: the (run's) configuration.
        layout: stage layout of ``config.run_dir``.
        name: run name; output ``models/<name>``, state ``state/<name>``.
        init_dir: checkpoint the student starts from.
        method: batch source and loss.
        optim: optimisation settings.
        select_by: best-checkpoint criterion.
        train_file: training split (ground truth or SeqKD data).
        resume: continue from the saved state if any.
        with_teacher: load the teacher (``teacher.dtype``).
        restart_if_incompatible: with ``resume``, start over when the saved state belongs to other settings, inputs
            or code instead of raising.

    Raises:
        StageInputError: a missing checkpoint or split file.
        switch_core.models.loading.ModelLoadError: a checkpoint that does not load.
        switch_core.models.lora.LoraSetupError: ``student.lora`` targets modules the student does not have.
    """
    inputs = input_fingerprints(
        config, layout, name=name, init_dir=init_dir, train_file=train_file, with_teacher=with_teacher
    )
    tokenizer = load_tokenizer(init_dir)
    student = load_causal_lm(init_dir, dtype="float32")
    if inputs["lora"] is not None:  # LoRA for the student's stages; teacher SFT is full
        student = apply_lora(student, config.student.lora, seed=optim.seed)
    teacher = load_causal_lm(teacher_dir(config, layout), dtype=config.teacher.dtype) if with_teacher else None
    dev_file = require(layout.split("dev"), "prepare-data")
    return TrainJob(
        name=name, student=student, tokenizer=tokenizer,
        train=load_examples(train_file, tokenizer, config.data),
        dev=load_dev(dev_file, tokenizer, config.data, rouge_examples=optim.eval_examples, seed=optim.seed),
        optim=optim, method=method, output_dir=layout.model(name), state_dir=layout.state(name),
        select_by=select_by, teacher=teacher, rollout=config.rollout, generation=config.eval,
        max_prompt_length=config.data.max_prompt_length, resume=resume,
        restart_if_incompatible=restart_if_incompatible, inputs=inputs, distributed=config.distributed,
    )


def needs_teacher(method: MethodConfig) -> bool:
    """Whether a method's loss or batches need the teacher."""
    return LossSpec.from_method(method).needs_teacher or method.data in ("rollout", "mixed", "adaptive")


def stage_tracker(config: Config, layout: RunLayout, job: TrainJob, tracker: Tracker | None) -> Tracker:
    """The tracker of a stage: ``tracker`` if given, else the configured one (``tracking/<name>/metrics.jsonl``); a
    :class:`~switch_core.tracking.NullTracker` on every process but the main one. Every process checks the saved
    state, so all ranks refuse an incompatible one alike (none is left waiting in a collective).

    The JSONL log continues when the run will resume its saved state, starts afresh when the run starts over, and is
    left alone when the run would refuse an incompatible state (:func:`~switch_core.training.state.resume_decision`),
    so it always describes the one run whose state is in ``state/<name>``.

    Raises:
        switch_core.training.state.StateMismatchError: the run would refuse its saved state (raised here, before
            anything is logged).
    """
    state = process_state()
    decision = resume_decision(job, state.num_processes)
    if decision == "refuse":  # every rank fails here, before the tracker records anything or a collective starts
        check_resumable(
            job.state_dir, resume_fingerprint(job), state.num_processes, lenient=lenient_keys(job),
            strategy=engine_strategy(job, state.num_processes),
        )
    if not state.is_main_process:
        return NullTracker()
    jsonl = layout.root / "tracking" / job.name / "metrics.jsonl"
    if tracker is None and decision == "fresh":
        jsonl.unlink(missing_ok=True)
    return tracker or tracker_from_config(config, jsonl, name=job.name)


def is_main_process() -> bool:
    """True on the main process (or when not distributed)."""
    return process_state().is_main_process
