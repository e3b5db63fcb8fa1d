"""Find SWITCH's τ0 for a target teacher share by bisection over real rollouts (method.md §1.2).

The teacher share depends on the response length, the schedule, λ and the decoding settings: calibrate with the
settings the training run will use. Prints every evaluated (τ0, share) and the result; ``--out`` writes it as JSON.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from switch_core.atomic import atomic_write_json
from switch_core.commands.rollout import (
    OptionError,
    add_model_arguments,
    load_models,
    load_shared_tokenizer,
    read_prompts,
    settings_from_args,
    tokenized_batches,
)
from switch_core.rollout import calibrate_tau0

USES_CONFIG = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``calibrate`` options."""
    add_model_arguments(parser)
    group = parser.add_argument_group("calibration")
    group.add_argument("--target-share", type=float, default=0.53, help="wanted teacher share (default: 0.53)")
    group.add_argument("--tolerance", type=float, default=0.02, help="stop when |share - target| <= this (0.02)")
    group.add_argument("--max-evaluations", type=int, default=12, help="rollout passes allowed (default: 12)")
    group.add_argument("--max-prompts", type=int, default=64, help="use the first N prompts (default: 64)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON to this file")


def run(args: argparse.Namespace) -> int:
    """Calibrate, print and optionally write the result. Returns 0."""
    if args.max_prompts < 1:
        raise OptionError(f"--max-prompts {args.max_prompts} must be >= 1")
    prompts = read_prompts(args.prompts)[: args.max_prompts]
    tokenizer = load_shared_tokenizer(args)
    settings = settings_from_args(args, tokenizer, strategy="switch")
    batches = [(ids, mask) for _, ids, mask in tokenized_batches(prompts, tokenizer, args, args.prompts)]
    teacher, student = load_models(args, tokenizer)
    result = calibrate_tau0(
        student, teacher, batches, settings, target_share=args.target_share, tolerance=args.tolerance,
        max_evaluations=args.max_evaluations, seed=args.seed,
        progress=lambda tau0, share: print(f"tau0 {tau0:.6g}: teacher share {share:.4f}", flush=True),
    )
    print(f"tau0 = {result.tau0:.6g} gives teacher share {result.achieved_share:.4f} (target {args.target_share}) "
          f"on {len(prompts)} prompts, {settings.schedule} schedule, decay {settings.decay}")
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
        }
        atomic_write_json(args.out, payload)
    return 0
