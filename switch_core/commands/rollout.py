"""SWITCH rollouts for a prompts file: one JSON line per prompt with the tokens, their sources, JSD and threshold.

Input: JSONL whose rows carry a ``prompt`` field with the already formatted prompt text (other fields are ignored).
Output (written atomically, in input order): ``prompt``, ``prompt_token_ids``, ``token_ids`` (generated tokens only,
incl. the stop token), ``sources`` (``"student" | "teacher"`` per token), ``divergence`` (the gate's JSD per token),
``threshold`` (τ_t per token) and ``text`` (decoded without special tokens).
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from switch_core.atomic import atomic_write_jsonl
from switch_core.data.tokenize import left_pad, tokenize_prompt
from switch_core.rollout import ENGINES, SCHEDULES, STRATEGIES, RolloutSettings, rollout

USES_CONFIG = False


class PromptFileError(ValueError):
    """The prompts file is missing, empty or has a bad line (the message names the line)."""


class OptionError(ValueError):
    """A command-line option is out of range (the message names it)."""


def read_prompts(path: Path) -> list[str]:
    """Read the ``prompt`` field of every non-blank line of a JSONL file.

    Raises:
        PromptFileError: missing or empty file, a line that is not a JSON object, or one without a string ``prompt``.
    """
    if not path.is_file():
        raise PromptFileError(f"prompts file {path} does not exist")
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptFileError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise PromptFileError(
                    f"{path}:{number}: each line must be a JSON object with a string field 'prompt' (the formatted "
                    "prompt text)"
                )
            prompts.append(row["prompt"])
    if not prompts:
        raise PromptFileError(f"prompts file {path} holds no prompts")
    return prompts


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``rollout`` and ``calibrate``: models, prompts, batching, decoding and schedule."""
    models = parser.add_argument_group("models and prompts")
    models.add_argument("--teacher", required=True, help="checkpoint folder, .gguf file, hub name or 'embedded'")
    models.add_argument("--student", required=True, help="checkpoint folder, .gguf file or hub name")
    models.add_argument("--prompts", required=True, type=Path, help="JSONL file with a 'prompt' field per line")
    models.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    models.add_argument("--device", default="cpu", help="device of both models, e.g. cpu or cuda:0 (default: cpu)")
    models.add_argument("--batch-size", type=int, default=8, help="prompts per rollout batch (default: 8)")
    models.add_argument("--max-prompt-length", type=int, default=256, help="prompt tokens kept, head first (256)")
    models.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--max-new-tokens", type=int, default=256, help="response length limit (default: 256)")
    decoding.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    decoding.add_argument("--temperature", type=float, default=1.0, help="sampling and gate temperature (1.0)")
    decoding.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0 = off (default: 0)")
    decoding.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, 1.0 = off (default: 1.0)")
    decoding.add_argument("--schedule", default="exponential", choices=SCHEDULES, help="threshold schedule")
    decoding.add_argument("--decay", type=float, default=0.1, help="λ per response token (default: 0.1)")
    decoding.add_argument("--horizon", type=int, default=None, help="linear schedule horizon (default: max-new-tokens)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``rollout`` options."""
    add_model_arguments(parser)
    group = parser.add_argument_group("strategy")
    group.add_argument("--strategy", default="switch", choices=STRATEGIES, help="token source rule (default: switch)")
    group.add_argument("--tau0", type=float, default=0.2, help="τ0 in nats (default: 0.2; calibrate it)")
    group.add_argument("--random-rate", type=float, default=0.5, help="teacher rate of --strategy random (0.5)")
    group.add_argument("--mixture-alpha", type=float, default=0.2, help="teacher weight of --strategy mixture (0.2)")
    group.add_argument("--engine", default="speculative", choices=ENGINES,
                       help="speculative (draft and verify) or lockstep; same rollout (default: speculative)")
    parser.add_argument("--out", required=True, type=Path, help="output JSONL file")


def load_shared_tokenizer(args: argparse.Namespace) -> PreTrainedTokenizerBase:
    """The teacher's tokenizer (shared with the student, see :func:`load_models`).

    Raises:
        switch_core.models.loading.ModelLoadError: it cannot be loaded.
    """
    from switch_core.models.loading import load_tokenizer

    return load_tokenizer(args.teacher)


def load_models(
    args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """Load teacher and student and check that they fit together and with both tokenizers.

    Raises:
        switch_core.models.loading.ModelLoadError: a model or the student's tokenizer cannot be loaded.
        switch_core.models.compat.IncompatibleModelsError: different vocabularies or tokenizers.
    """
    from switch_core.models.compat import check_compatible
    from switch_core.models.loading import load_causal_lm, load_tokenizer

    student_tokenizer = load_tokenizer(args.student)
    teacher = load_causal_lm(args.teacher, dtype=args.dtype, device=args.device)
    student = load_causal_lm(args.student, dtype=args.dtype, device=args.device)
    check_compatible(teacher, student, tokenizer, student_tokenizer)
    return teacher, student


def settings_from_args(
    args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, **overrides: Any
) -> RolloutSettings:
    """Rollout settings from the command-line options; pad and stop ids from the tokenizer (stop = eos).

    Raises:
        switch_core.rollout.RolloutSettingsError: an option is out of range.
    """
    values: dict[str, Any] = {
        "pad_token_id": int(tokenizer.pad_token_id),
        "stop_token_ids": (int(tokenizer.eos_token_id),),
        "schedule": args.schedule,
        "decay": args.decay,
        "horizon": args.horizon,
        "max_new_tokens": args.max_new_tokens,
        "greedy": args.greedy,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
    }
    for name in ("strategy", "tau0", "random_rate", "mixture_alpha", "engine"):
        if hasattr(args, name):
            values[name] = getattr(args, name)
    values.update(overrides)
    return RolloutSettings(**values)


def tokenized_batches(
    prompts: list[str], tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace, source: Path
) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Tokenise (``add_special_tokens=True``, head kept) and batch prompts, longest first, left-padded.

    Returns:
        ``(original indices, prompt_ids [B, Lp], prompt_mask [B, Lp])`` per batch.

    Raises:
        OptionError: ``--batch-size`` or ``--max-prompt-length`` below 1.
        switch_core.data.tokenize.EmptyExampleError: a prompt is empty after tokenisation (names the line).
    """
    if args.batch_size < 1:
        raise OptionError(f"--batch-size {args.batch_size} must be >= 1")
    if args.max_prompt_length < 1:
        raise OptionError(f"--max-prompt-length {args.max_prompt_length} must be >= 1")
    ids = [
        tokenize_prompt(text, tokenizer, max_prompt_length=args.max_prompt_length, record_id=f"{source}:{n + 1}")
        for n, text in enumerate(prompts)
    ]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = []
    for start in range(0, len(order), args.batch_size):
        indices = order[start : start + args.batch_size]
        prompt_ids, prompt_mask = left_pad([ids[i] for i in indices], int(tokenizer.pad_token_id))
        batches.append((indices, prompt_ids, prompt_mask))
    return batches


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
    prompts = read_prompts(args.prompts)
    tokenizer = load_shared_tokenizer(args)
    settings = settings_from_args(args, tokenizer)
    batches = tokenized_batches(prompts, tokenizer, args, args.prompts)
    teacher, student = load_models(args, tokenizer)
    rows: list[dict[str, Any]] = [{} for _ in prompts]
    for index, row in _decode_all(teacher, student, tokenizer, batches, settings, args.seed):
        rows[index] = {"prompt": prompts[index], **row}
    atomic_write_jsonl(args.out, rows)
    tokens = sum(len(r["token_ids"]) for r in rows)
    teacher_tokens = sum(s == "teacher" for r in rows for s in r["sources"])
    share = teacher_tokens / tokens if tokens else math.nan
    print(f"{len(rows)} rollouts, {tokens} tokens, teacher share {share:.3f} ({settings.strategy}) -> {args.out}")
    return 0
