"""Throughput of SWITCH rollouts vs plain generation with each model and vs a no-cache reference decoder.

Pair: the embedded SmolLM2-135M-Instruct teacher and its 6-layer pruned copy as student. For each batch size, every
method generates exactly ``--new-tokens`` tokens per row (stopping at EOS disabled; ``generate`` with
``min_new_tokens = max_new_tokens``, ``do_sample=True``, ``top_k=0``, temperature 1):

- (a) SWITCH: :func:`switch_core.rollout.rollout` (exponential schedule, τ0 = 1, λ = 0.1), split into teacher
  forward, student forward and token selection (JSD gate + sampling + bookkeeping) with the engine's timing hooks;
- (b) Hugging Face ``generate`` with the student alone; (c) with the teacher alone;
- (d) a no-cache reference: the same gate and sampling, but both models re-read the whole sequence at every step.
  It is slow, so it runs ``--reference-tokens`` steps and its time is extrapolated to ``--new-tokens`` assuming a
  step costs proportionally to the sequence length (marked "extrapolated").

The target is (a) / ((b) + (c)) <= 1.0: a lockstep rollout should cost no more than running the two models'
generation separately. Each cell gives the wall seconds and, in parentheses, the CPU seconds of this process: on a
CPU shared with other work the CPU-time ratio is the steadier one. Repeats are interleaved (a, b, c, a, b, c, ...) and
the best of ``--repeats`` is kept. Prints a markdown table (and writes it with ``--out``); compare only numbers from
one run. ``--threads 1`` avoids OpenMP spin-waiting inflating the CPU times.

    .venv/bin/python bench/bench_rollout.py [--batch-sizes 1,8,32] [--new-tokens 128] [--repeats 1] [--quick]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from switch_core.atomic import atomic_write_text
from switch_core.data.embedded import generate_embedded_suite
from switch_core.data.prompts import format_prompt
from switch_core.data.tokenize import left_pad, tokenize_prompt
from switch_core.divergences import jensen_shannon
from switch_core.models.embedded import embedded_teacher_dir
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.student import count_parameters, prune_layers
from switch_core.rollout import GATE_BETA, RolloutSettings, RolloutTimer, rollout


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Run ``fn`` once: ``(wall seconds, CPU seconds of this process, result)``."""
    _sync()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    _sync()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _generate(model: nn.Module, ids: Tensor, mask: Tensor, new_tokens: int, pad: int, seed: int) -> Tensor:
    torch.manual_seed(seed)
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
        top_k=0, top_p=1.0, temperature=1.0, pad_token_id=pad,
    )


def _no_cache_switch(
    student: nn.Module, teacher: nn.Module, ids: Tensor, mask: Tensor, settings: RolloutSettings,
    steps: int, generator: torch.Generator,
) -> Tensor:
    """SWITCH decoding without KV caches: full forward passes over the whole sequence at every step."""
    taus = settings.thresholds(ids.device)
    with torch.no_grad():
        for t in range(steps):
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            q = student(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                        logits_to_keep=1).logits[:, -1]
            p = teacher(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                        logits_to_keep=1).logits[:, -1]
            use_teacher = jensen_shannon(q, p, beta=GATE_BETA) > taus[t]
            probs = torch.softmax(torch.where(use_teacher[:, None], p, q).float(), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, token], dim=1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    return ids


def _measure(
    student: nn.Module, teacher: nn.Module, ids: Tensor, mask: Tensor, settings: RolloutSettings,
    args: argparse.Namespace,
) -> str:
    """One table row: time every method on one left-padded batch (repeats interleaved, best of each kept)."""
    size, new_tokens, pad = ids.shape[0], settings.max_new_tokens, settings.pad_token_id
    tokens = size * new_tokens
    timer = RolloutTimer()

    def switch() -> object:
        timer.seconds = dict.fromkeys(timer.seconds, 0.0)
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        batch = rollout(student, teacher, ids, mask, settings, generator=generator, timer=timer)
        assert batch.response_mask.all() and batch.tokens.shape == (size, new_tokens)
        return dict(timer.seconds)

    def generate(model: nn.Module) -> Callable[[], object]:
        def run() -> object:
            out = _generate(model, ids, mask, new_tokens, pad, args.seed)
            assert out.shape[1] == ids.shape[1] + new_tokens
            return out

        return run

    methods = {"switch": switch, "student": generate(student), "teacher": generate(teacher)}
    wall = dict.fromkeys(methods, float("inf"))
    cpu = dict.fromkeys(methods, float("inf"))
    split: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved, so a change of machine load hits every method alike
        for name, fn in methods.items():
            seconds, cpu_seconds, result = _timed(fn)
            cpu[name] = min(cpu[name], cpu_seconds)
            if seconds < wall[name]:
                wall[name] = seconds
                if name == "switch":
                    split = {k: v / sum(result.values()) for k, v in result.items()}
    reference = "skipped | -"
    if args.reference_tokens > 0:
        steps = min(args.reference_tokens, new_tokens)
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        reference_s, _, _ = _timed(lambda: _no_cache_switch(student, teacher, ids, mask, settings, steps, generator))
        label = f"{reference_s:.1f}"
        if steps < new_tokens:  # step t re-reads (prompt length + t) tokens
            length = ids.shape[1]
            reference_s *= sum(length + t for t in range(new_tokens)) / sum(length + t for t in range(steps))
            label = f"{reference_s:.1f} (extrapolated from {steps} steps)"
        reference = f"{label} | {reference_s / wall['switch']:.1f}x"
    return (
        f"| {size} | {wall['switch']:.2f} ({cpu['switch']:.2f}) | {wall['student']:.2f} ({cpu['student']:.2f}) | "
        f"{wall['teacher']:.2f} ({cpu['teacher']:.2f}) | {wall['switch'] / (wall['student'] + wall['teacher']):.2f} | "
        f"{cpu['switch'] / (cpu['student'] + cpu['teacher']):.2f} | {tokens / wall['switch']:.1f} | "
        f"{split['teacher']:.0%} / {split['student']:.0%} / {split['select']:.0%} | {reference} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default: 1,8,32)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row (default: 128)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the best is kept (1)")
    parser.add_argument("--reference-tokens", type=int, default=16,
                        help="steps of the no-cache reference before extrapolating (default: 16; 0 = skip it)")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1,8, 32 new tokens, 8 reference steps")
    parser.add_argument("--keep-layers", type=int, default=6, help="student layers kept of 30 (default: 6)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.new_tokens, args.reference_tokens = "1,8", 32, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    folder = embedded_teacher_dir()
    tokenizer = load_tokenizer(folder)
    teacher = load_causal_lm(folder, device=args.device)
    student = prune_layers(teacher, args.keep_layers)
    records = generate_embedded_suite(max(sizes), seed=0)
    prompt_ids = [tokenize_prompt(format_prompt(r), tokenizer, max_prompt_length=256) for r in records]
    pad = int(tokenizer.pad_token_id)
    settings = RolloutSettings(pad_token_id=pad, stop_token_ids=(), tau0=1.0, decay=0.1, max_new_tokens=args.new_tokens)

    # warm-up (first calls allocate and pick kernels)
    ids, mask = (x.to(args.device) for x in left_pad(prompt_ids[:2], pad))
    rollout(student, teacher, ids, mask, RolloutSettings(pad_token_id=pad, tau0=1.0, max_new_tokens=4))
    _generate(student, ids, mask, 4, pad, args.seed)

    header = (
        f"SWITCH rollout benchmark: teacher SmolLM2-135M-Instruct ({count_parameters(teacher) / 1e6:.1f}M), student "
        f"{args.keep_layers}-layer pruned copy ({count_parameters(student) / 1e6:.1f}M); {args.device}, "
        f"{torch.get_num_threads()} threads; {args.new_tokens} new tokens per row (EOS disabled), sampling T=1, "
        f"top-k 0; prompts: embedded instruction suite (MiniLLM template); best of {args.repeats} interleaved runs."
    )
    lines = [
        header,
        "",
        (
            "| batch | (a) SWITCH s (CPU s) | (b) student generate s (CPU s) | (c) teacher generate s (CPU s) "
            "| (a)/((b)+(c)) wall | (a)/((b)+(c)) CPU | (a) tok/s | (a) split teacher / student / select "
            "| (d) no-cache reference s | (d)/(a) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for size in sizes:
        ids, mask = (x.to(args.device) for x in left_pad(prompt_ids[:size], pad))
        lines.append(_measure(student, teacher, ids, mask, settings, args))
        print(lines[-1], flush=True)
    if args.out is not None:
        atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
