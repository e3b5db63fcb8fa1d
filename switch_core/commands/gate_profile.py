"""Measure where SWITCH's gate could act before any distillation: the warmed-up student's JSD to the teacher by
response position, written to run_dir/analysis/gate_profile.json (``switch-kd gate-profile``).

The student that distillation starts from (``models/student-sft``; ``models/student-init`` without a warm-up)
answers ``gate_profile.prompts`` dev prompts alone (a subset drawn with ``seed``, in dev-file order): the ``rollout``
section's decoding settings with strategy ``student``, the teacher run alongside so that the gate's JSD (β = 0.5,
after the temperature, docs/METHOD.md §1.1) is recorded at every token; under the autocast of
``optim.mixed_precision``, as the distillation runs decode their rollouts (recorded under ``decoding`` when it is not
``no``). The file holds the profile (:func:`switch_core.reporting.gate_profile.jsd_profile`: quantiles, mean and
count per position and per position bucket), the share of tokens above τ_t when ``rollout.tau0`` is set, and the
per-token values themselves (so a report can compare them with any run's τ_t). Batch i is decoded with a generator
seeded ``seed + i``: the same inputs give the same file, byte for byte; it holds no timing.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from switch_core.atomic import atomic_write_json
from switch_core.config import Config
from switch_core.data.prompts import format_prompt
from switch_core.data.records import InstructionRecord
from switch_core.data.splits import read_records
from switch_core.data.tokenize import left_pad, tokenize_prompt
from switch_core.layout import RunLayout
from switch_core.models.compat import check_compatible
from switch_core.models.device import model_device
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.processes import autocast, process_state
from switch_core.reporting.gate_profile import exceed_shares, jsd_profile, schedule_thresholds
from switch_core.rollout import RolloutSettings, rollout
from switch_core.training.run_setup import require, teacher_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options besides the configuration's."""


def profiled_student(config: Config) -> tuple[str, str]:
    """``(checkpoint name, the command that makes it)`` of the student profiled: the warmed-up student, or the
    untrained one when ``student.warmup`` is off (what distillation then starts from)."""
    if config.student.warmup:
        return "student-sft", "sft --role student"
    return "student-init", "build-student"


def profile_records(records: list[InstructionRecord], count: int, seed: int) -> list[InstructionRecord]:
    """``count`` records (all when fewer) drawn with ``seed`` (``torch.randperm``), kept in file order."""
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    return [records[i] for i in sorted(order[:count])]


def student_settings(config: Config, tokenizer: Any) -> RolloutSettings:
    """The ``rollout`` section's decoding settings with strategy ``student``, the JSD computed at every token."""
    base = RolloutSettings.from_config(
        config.rollout, pad_token_id=int(tokenizer.pad_token_id), stop_token_ids=(int(tokenizer.eos_token_id),)
    )
    return dataclasses.replace(base, strategy="student", compute_divergence=True, keep_teacher_logits=False)


def decode_divergences(
    student: torch.nn.Module, teacher: torch.nn.Module, prompts: list[list[int]], settings: RolloutSettings, seed: int,
    batch_size: int,
) -> list[list[float]]:
    """The gate's JSD at every response token of each prompt's rollout, in prompt order (batches of ``batch_size``
    in order, batch i sampled with a generator seeded ``seed + i`` on the student's device)."""
    device = model_device(student)
    out: list[list[float]] = []
    for index, start in enumerate(range(0, len(prompts), batch_size)):
        prompt_ids, prompt_mask = left_pad(prompts[start : start + batch_size], settings.pad_token_id)
        generator = torch.Generator(device=device).manual_seed(seed + index)
        batch = rollout(student, teacher, prompt_ids, prompt_mask, settings, generator=generator)
        out += [row["divergence"] for row in batch.to_rows()]
    return out


def gate_profile(config: Config, layout: RunLayout) -> Path:
    """Decode the profile prompts with the student alone and write ``layout.gate_profile``; return its path.

    Raises:
        switch_core.training.run_setup.StageInputError: the dev split, the student or the teacher is missing.
        switch_core.models.compat.IncompatibleModelsError: teacher and student do not share a vocabulary.
    """
    name, producer = profiled_student(config)
    student_dir = require(layout.model(name), producer)
    teacher_folder = teacher_dir(config, layout)
    records = profile_records(read_records(require(layout.split("dev"), "prepare-data")), config.gate_profile.prompts,
                              config.seed)
    tokenizer = load_tokenizer(teacher_folder)
    device = process_state().device
    teacher = load_causal_lm(teacher_folder, dtype=config.teacher.dtype, device=device)
    student = load_causal_lm(student_dir, dtype="float32", device=device)
    check_compatible(teacher, student, tokenizer, load_tokenizer(student_dir))
    prompts = [
        tokenize_prompt(format_prompt(r, style=config.data.prompt_format, tokenizer=tokenizer), tokenizer,
                        max_prompt_length=config.data.max_prompt_length, record_id=r.id)
        for r in records
    ]
    settings = student_settings(config, tokenizer)
    precision = config.optim.mixed_precision
    with autocast(precision, device):
        jsd = decode_divergences(student, teacher, prompts, settings, config.seed, config.rollout.batch_size)
    steps = settings.max_new_tokens
    rollout_config = config.rollout
    payload: dict[str, Any] = {
        "student": name, "teacher": teacher_folder.name, "records": [r.id for r in records], "seed": config.seed,
        "decoding": {"strategy": settings.strategy, "max_new_tokens": steps, "greedy": settings.greedy,
                     "temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p},
        **jsd_profile(jsd, steps=steps),
    }
    if precision != "no":  # recorded only then: a float32 profile stays the file it was before the setting existed
        payload["decoding"]["mixed_precision"] = precision
    if rollout_config.tau0 is not None:
        spec = {"tau0": rollout_config.tau0, "schedule": rollout_config.schedule, "decay": rollout_config.decay,
                "horizon": rollout_config.horizon, "max_new_tokens": steps}
        payload["threshold"] = spec | exceed_shares(jsd, schedule_thresholds(spec, steps), steps=steps)
    payload["jsd"] = jsd
    out = atomic_write_json(layout.gate_profile, payload)
    median = payload["overall"]["p50"]
    print(f"gate-profile: {name} on {len(records)} dev prompts, {payload['tokens']} tokens, median JSD "
          f"{'n/a' if median is None else f'{median:.4f} nats'} -> {out}")
    return out


def run(args: argparse.Namespace) -> int:
    gate_profile(args.config, RunLayout.from_config(args.config, args.project_root))
    return 0
