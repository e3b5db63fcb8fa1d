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
generation separately. Times are the best of ``--repeats`` runs. Prints a markdown table (and writes it with
``--out``). Other processes on a shared CPU make timings noisy: compare only numbers from one run.

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


def _best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        result = fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best, result


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
    new_tokens = args.new_tokens

    folder = embedded_teacher_dir()
    tokenizer = load_tokenizer(folder)
    teacher = load_causal_lm(folder, device=args.device)
    student = prune_layers(teacher, args.keep_layers)
    records = generate_embedded_suite(max(sizes), seed=0)
    prompt_ids = [tokenize_prompt(format_prompt(r), tokenizer, max_prompt_length=256) for r in records]
    pad = int(tokenizer.pad_token_id)
    settings = RolloutSettings(pad_token_id=pad, stop_token_ids=(), tau0=1.0, decay=0.1, max_new_tokens=new_tokens)

    # warm-up (first calls allocate and pick kernels)
    ids, mask = (x.to(args.device) for x in left_pad(prompt_ids[:2], pad))
    rollout(student, teacher, ids, mask, RolloutSettings(pad_token_id=pad, max_new_tokens=4))
    _generate(student, ids, mask, 4, pad, args.seed)

    header = (
        f"SWITCH rollout benchmark: teacher SmolLM2-135M-Instruct ({count_parameters(teacher) / 1e6:.1f}M), student "
        f"{args.keep_layers}-layer pruned copy ({count_parameters(student) / 1e6:.1f}M); {args.device}, "
        f"{torch.get_num_threads()} threads; {new_tokens} new tokens per row (EOS disabled), sampling T=1, top-k 0; "
        f"prompts: embedded instruction suite (MiniLLM template); best of {args.repeats}."
    )
    lines = [
        header,
        "",
        "| batch | (a) SWITCH s | (a) tok/s | (b) student generate s | (c) teacher generate s | (a)/((b)+(c)) "
        "| (a) split teacher / student / select | (d) no-cache reference s | (d) tok/s | (d)/(a) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for size in sizes:
        ids, mask = (x.to(args.device) for x in left_pad(prompt_ids[:size], pad))
        tokens = size * new_tokens
        timer = RolloutTimer()

        def switch() -> object:
            timer.seconds = {k: 0.0 for k in timer.seconds}
            generator = torch.Generator(device=args.device).manual_seed(args.seed)
            return rollout(student, teacher, ids, mask, settings, generator=generator, timer=timer)

        switch_s, batch = _best_of(args.repeats, switch)
        assert batch.response_mask.all() and batch.tokens.shape == (size, new_tokens)
        split = {k: v / sum(timer.seconds.values()) for k, v in timer.seconds.items()}
        student_s, out = _best_of(args.repeats, lambda: _generate(student, ids, mask, new_tokens, pad, args.seed))
        assert out.shape[1] == ids.shape[1] + new_tokens
        teacher_s, out = _best_of(args.repeats, lambda: _generate(teacher, ids, mask, new_tokens, pad, args.seed))
        assert out.shape[1] == ids.shape[1] + new_tokens
        reference = "skipped"
        if args.reference_tokens > 0:
            steps = min(args.reference_tokens, new_tokens)
            reference_s, _ = _best_of(1, lambda: _no_cache_switch(
                student, teacher, ids, mask, settings, steps, torch.Generator(device=args.device).manual_seed(0)))
            length = ids.shape[1]
            if steps < new_tokens:  # step t re-reads length + t tokens
                reference_s *= sum(length + t for t in range(new_tokens)) / sum(length + t for t in range(steps))
                label = f"{reference_s:.1f} (extrapolated from {steps} steps)"
            else:
                label = f"{reference_s:.1f}"
            reference = f"{label} | {tokens / reference_s:.1f} | {reference_s / switch_s:.1f}x"
        line = (
            f"| {size} | {switch_s:.2f} | {tokens / switch_s:.1f} | {student_s:.2f} | {teacher_s:.2f} | "
            f"{switch_s / (student_s + teacher_s):.2f} | {split['teacher']:.0%} / {split['student']:.0%} / "
            f"{split['select']:.0%} | {reference} |"
        )
        if reference == "skipped":
            line = line.replace("| skipped |", "| skipped | - | - |")
        lines.append(line)
        print(line, flush=True)
    if args.out is not None:
        atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
