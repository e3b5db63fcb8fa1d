"""Find SWITCH's τ0 for a target teacher share by bisection over real rollouts (docs/METHOD.md §1.2).

The teacher share depends on the response length, the schedule, λ, the decoding settings and the precision
(``--mixed-precision``, the run's ``optim.mixed_precision``): calibrate with the settings the training run will use.
Prints every evaluated (τ0, share) and the result; ``--out`` writes it as JSON.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from switch_core.atomic import atomic_write_json
from switch_core.commands.rollout_inputs import (
    add_calibration_arguments,
    add_model_arguments,
    load_models,
    load_shared_tokenizer,
    precision,
    read_prompts,
    rollout_config,
    search_tau0,
    settings_from_config,
    tokenized_batches,
)

USES_CONFIG = False
INTERRUPT_NOTE = "nothing is written before the end: `{command}` starts over"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``calibrate`` options."""
    add_model_arguments(parser)
    add_calibration_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON to this file")


def run(args: argparse.Namespace) -> int:
    """Calibrate, print and optionally write the result. Returns 0."""
    config = rollout_config(args)
    tokenizer = load_shared_tokenizer(args)
    prompts = read_prompts(args.prompts, prompt_format=args.prompt_format, tokenizer=tokenizer)
    prompts = prompts[: config.calibration_prompts]
    settings = settings_from_config(config, tokenizer)
    batches = tokenized_batches(prompts, tokenizer, args, args.prompts)
    teacher, student = load_models(args, tokenizer)
    with precision(args):
        result = search_tau0(student, teacher, batches, settings, config, args.seed)
    print(f"tau0 = {result.tau0:.6g} gives teacher share {result.achieved_share:.4f} "
          f"(target {config.target_teacher_share}) on {len(prompts)} prompts, {settings.schedule} schedule, "
          f"decay {settings.decay}")
    if result.reason is not None:
        print(result.reason)
    if args.out is not None:
        payload = {
            **result.to_dict(),
            "prompts": len(prompts),
            "schedule": settings.schedule,
            "decay": settings.decay,
            "max_new_tokens": settings.max_new_tokens,
            "greedy": settings.greedy,
            "temperature": settings.temperature,
            "seed": args.seed,
            "dtype": args.dtype,
            "mixed_precision": args.mixed_precision,
        }
        atomic_write_json(args.out, payload)
    return 0
