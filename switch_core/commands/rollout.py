"""SWITCH rollouts for a prompts file: one JSON line per prompt with the tokens, their sources, JSD and threshold.

Input (``--prompts``): JSONL; a row's ``prompt`` (the already formatted prompt text) is used as is, a row without one
(absent or null: the run's ``data/{train,dev,test}.jsonl``) has its ``instruction`` and optional ``input`` formatted
with ``--prompt-format`` (``data.prompt_format``); other fields are ignored.
Output (written atomically, in input order): ``prompt``, ``prompt_token_ids``, ``token_ids`` (generated tokens only,
incl. the stop token), ``sources`` (``"student" | "teacher"`` per token), ``divergence`` (the gate's JSD per token),
``threshold`` (τ_t per token) and ``text`` (decoded without special tokens).

The decoding options are the ``rollout`` config section's fields (`switch_core.config.RolloutConfig`: same defaults,
ranges and help); an option given for another strategy or engine (e.g. ``--skd-top-k`` without ``--strategy skd``,
``--max-draft-tokens`` with ``--engine lockstep``) is ignored with a warning. As in a training run, ``--strategy
switch`` without ``--tau0`` first calibrates τ0 to ``--target-share`` on the first ``--max-prompts`` prompts (the
``calibrate`` command's search). ``--mixed-precision`` (a run's ``optim.mixed_precision``) decodes under the autocast
a training run with that setting uses.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from switch_core.atomic import atomic_write_jsonl
from switch_core.commands.rollout_inputs import (
    add_calibration_arguments,
    add_config_option,
    add_model_arguments,
    ignored_options,
    load_models,
    load_shared_tokenizer,
    precision,
    read_prompts,
    rollout_config,
    search_tau0,
    settings_from_config,
    tokenized_batches,
)
from switch_core.config import RolloutConfig
from switch_core.rollout import RolloutSettings, rollout

USES_CONFIG = False
INTERRUPT_NOTE = "nothing is written before the end: `{command}` starts over"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``rollout`` options."""
    add_model_arguments(parser)
    group = parser.add_argument_group("strategy")
    for field in ("strategy", "tau0", "random_rate", "mixture_alpha", "skd_top_k", "adaswitch_window", "adaswitch_k",
                  "engine", "max_draft_tokens"):
        add_config_option(group, RolloutConfig, field)
    add_calibration_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output JSONL file")


def _decode_all(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batches: list[tuple[list[int], torch.Tensor, torch.Tensor]],
    settings: RolloutSettings,
    seed: int,
) -> Iterator[tuple[int, dict[str, Any]]]:
    generator = torch.Generator(device=student.device).manual_seed(seed)
    for indices, prompt_ids, prompt_mask in tqdm(batches, desc="rollout", unit="batch"):
        batch = rollout(student, teacher, prompt_ids, prompt_mask, settings, generator=generator)
        yield from zip(indices, batch.to_rows(tokenizer), strict=True)


def run(args: argparse.Namespace) -> int:
    """Decode every prompt and write the rows; print the teacher share. Returns 0."""
    tokenizer = load_shared_tokenizer(args)
    prompts = read_prompts(args.prompts, prompt_format=args.prompt_format, tokenizer=tokenizer)
    config = rollout_config(args)
    for warning in ignored_options(args, config):
        print(f"switch-kd rollout: warning: {warning}", file=sys.stderr)
    batches = tokenized_batches(prompts, tokenizer, args, args.prompts)
    settings = settings_from_config(config, tokenizer)
    teacher, student = load_models(args, tokenizer)
    with precision(args):
        if settings.needs_calibration:  # no --tau0: calibrated on the first --max-prompts prompts, as a run does
            chosen = tokenized_batches(prompts[: config.calibration_prompts], tokenizer, args, args.prompts)
            result = search_tau0(student, teacher, chosen, settings, config, args.seed)
            settings = result.settings
            print(f"calibrated tau0 = {settings.tau0:.6g} (teacher share {result.achieved_share:.4f}, target "
                  f"{config.target_teacher_share})", flush=True)
            if result.reason is not None:
                print(result.reason, flush=True)
        rows: list[dict[str, Any]] = [{} for _ in prompts]
        for index, row in _decode_all(teacher, student, tokenizer, batches, settings, args.seed):
            rows[index] = {"prompt": prompts[index], **row}
    atomic_write_jsonl(args.out, rows)
    tokens = sum(len(r["token_ids"]) for r in rows)
    teacher_tokens = sum(s == "teacher" for r in rows for s in r["sources"])
    share = teacher_tokens / tokens if tokens else math.nan
    print(f"{len(rows)} rollouts, {tokens} tokens, teacher share {share:.3f} ({settings.strategy}) -> {args.out}")
    return 0
