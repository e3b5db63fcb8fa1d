"""Throughput of SWITCH rollouts: the speculative engine against the lockstep one and against plain generation.

Pair: the embedded SmolLM2-135M-Instruct teacher and its 6-layer pruned copy as student, or the checkpoints given
with ``--teacher`` / ``--student`` (after ``make run``: the SFT'd teacher and the warmed-up student). For each batch
size and each target teacher share, every method generates exactly ``--new-tokens`` tokens per row (stopping at EOS disabled;
``generate`` with ``min_new_tokens = max_new_tokens``, ``do_sample=True``, ``top_k=0``, temperature 1):

- lockstep: :func:`switch_core.rollout.rollout` with ``engine="lockstep"`` (one token of each model per step), with
  its split into teacher forward, student forward and token selection;
- speculative: the same rollout with ``engine="speculative"`` (one model drafts a chunk, the other verifies it in one
  forward), with the mean accepted draft length per row-chunk and the share of drafted tokens discarded;
- generate: Hugging Face ``generate`` with the teacher alone plus the student alone (per batch size).

τ0 per target share (exponential schedule, λ = 0.1): from one student rollout per batch size that records the JSD of
every position, τ0 is the (1 − share) quantile of ``JSD_t · e^(λ t)`` (the share the gate would give on the student's
own sequences); the achieved share of the SWITCH rollout is printed next to the target. The last column counts the
rows where the two engines part (a different token or source; float32 rounding of the chunk forward, see
tests/test_rollout_speculative.py) over the positions compared up to each row's first difference.

Optionally (``--reference-tokens N``) a no-cache reference (both models re-read the whole sequence at every step)
runs N steps per batch size, extrapolated to ``--new-tokens`` assuming a step costs proportionally to the sequence
length. Each cell is the best wall time of ``--repeats`` interleaved runs, with the CPU seconds of this process in
parentheses (on a CPU shared with other work the CPU-time ratio is the steadier one). Prints a markdown table (and
writes it with ``--out``); compare only numbers from one run. ``--threads 1`` avoids OpenMP spin-waiting inflating
the CPU times.

    .venv/bin/python bench/bench_rollout.py [--batches 1,8,32] [--shares 0.2,0.5,0.8] [--new-tokens 128] [--repeats 1]
    .venv/bin/python bench/bench_rollout.py --batches 8 --shares 0.5 --new-tokens 64     # a quick check
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from switch_core.atomic import atomic_write_text
from switch_core.data.embedded import generate_embedded_suite
from switch_core.data.prompts import format_prompt
from switch_core.data.tokenize import left_pad, tokenize_prompt
from switch_core.models.embedded import embedded_teacher_dir
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.student import count_parameters, prune_layers
from switch_core.rollout import GATE_BETA, RolloutBatch, RolloutSettings, RolloutTimer, rollout, switch_gate

DECAY = 0.1


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


def tau0_for_shares(
    student: nn.Module, teacher: nn.Module, ids: Tensor, mask: Tensor, settings: RolloutSettings, shares: list[float],
    seed: int,
) -> list[float]:
    """τ0 giving about each teacher share on the student's own sequences (module docstring)."""
    probe = dataclasses.replace(settings, strategy="student", compute_divergence=True)
    batch = rollout(student, teacher, ids, mask, probe, generator=torch.Generator(ids.device).manual_seed(seed))
    steps = torch.arange(batch.tokens.shape[1], device=ids.device, dtype=torch.float64)
    scaled = (batch.divergence.double() * torch.exp(DECAY * steps))[batch.response_mask]
    return [float(torch.quantile(scaled, 1.0 - share)) for share in shares]


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
            use_teacher = switch_gate(p, q, taus[t])[0]
            probs = torch.softmax(torch.where(use_teacher[:, None], p, q).float(), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, token], dim=1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    return ids


def measure_reference(
    student: nn.Module, teacher: nn.Module, ids: Tensor, mask: Tensor, settings: RolloutSettings,
    args: argparse.Namespace,
) -> str:
    """A table line: the no-cache reference at about 50% teacher share, extrapolated to ``--new-tokens``."""
    steps = min(args.reference_tokens, args.new_tokens)
    tau0 = tau0_for_shares(student, teacher, ids, mask, settings, [0.5], args.seed)[0]
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    at = dataclasses.replace(settings, tau0=tau0)
    seconds, _, _ = _timed(lambda: _no_cache_switch(student, teacher, ids, mask, at, steps, generator))
    length = ids.shape[1]  # step t re-reads (prompt length + t) tokens
    seconds *= sum(length + t for t in range(args.new_tokens)) / sum(length + t for t in range(steps))
    return f"| {ids.shape[0]} | {seconds:.1f} (extrapolated from {steps} steps) |"


COST_KS = (1, 2, 4, 8, 16)


def forward_costs(model: nn.Module, ids: Tensor, mask: Tensor, repeats: int = 3) -> dict[int, float]:
    """Seconds of one forward of ``k`` new tokens per row after the prompt (k in :data:`COST_KS`), best of
    ``repeats``: k = 1 is a decode step, k > 1 a verify forward."""
    costs = {}
    with torch.no_grad():
        cache = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1).cache
        for k in COST_KS:
            step_mask = torch.cat([mask, mask.new_ones((mask.shape[0], k))], dim=1)
            positions = (step_mask.cumsum(-1) - 1)[:, -k:]
            best = float("inf")
            for _ in range(repeats):
                seconds, _, _ = _timed(lambda m=step_mask, p=positions, k=k: model(
                    input_ids=ids[:, -k:] if ids.shape[1] >= k else ids[:, -1:].expand(-1, k), attention_mask=m,
                    position_ids=p, cache=cache, use_cache=True, logits_to_keep=k))
                cache.crop(-k)
                best = min(best, seconds)
            costs[k] = best
    return costs


def cost_at(costs: dict[int, float], k: float) -> float:
    """Forward seconds at a (fractional) k, interpolated linearly between the measured ks."""
    ks = sorted(costs)
    for low, high in itertools.pairwise(ks):
        if k <= high:
            return costs[low] + (costs[high] - costs[low]) * (k - low) / (high - low)
    return costs[ks[-1]] * k / ks[-1]


def predicted_ratio(
    counts: dict[str, int], costs: dict[str, dict[int, float]], batch: int, new_tokens: int
) -> float:
    """The cost model's speculative / lockstep time (docs of the bench table): chunk forwards over decode steps.

    With every row running to ``new_tokens`` (EOS off) a batch chunk is ``chunks / batch`` row-chunks; each drafts
    ``k̄ = drafted / chunks`` tokens. A chunk drafted by D costs ``k̄·c_D(1) + c_V(k̄)``; lockstep costs
    ``new_tokens·(c_S(1) + c_T(1))``. Selection work is left out.
    """
    chunks = counts["chunks"] / batch
    k = counts["drafted"] / max(counts["chunks"], 1)
    teacher = counts["teacher_drafts"] / max(counts["chunks"], 1)
    by_teacher = k * costs["teacher"][1] + cost_at(costs["student"], k)
    by_student = k * costs["student"][1] + cost_at(costs["teacher"], k)
    speculative = chunks * (teacher * by_teacher + (1 - teacher) * by_student)
    return speculative / (new_tokens * (costs["student"][1] + costs["teacher"][1]))


class Best:
    """Best wall time (and its CPU time and result) over repeats, per method."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.result: dict[str, object] = {}

    def run(self, name: str, fn: Callable[[], object]) -> None:
        wall, cpu, result = _timed(fn)
        if wall < self.wall.get(name, float("inf")):
            self.wall[name], self.result[name] = wall, result
        self.cpu[name] = min(self.cpu.get(name, float("inf")), cpu)

    def cell(self, name: str) -> str:
        return f"{self.wall[name]:.2f} ({self.cpu[name]:.2f})"


def measure_generate(
    student: nn.Module, teacher: nn.Module, ids: Tensor, mask: Tensor, settings: RolloutSettings, args: argparse.Namespace
) -> Best:
    """Teacher ``generate`` and student ``generate`` on one batch, best of ``--repeats``."""
    best = Best()
    for _ in range(args.repeats):
        for name, model in (("teacher", teacher), ("student", student)):
            best.run(name, lambda m=model: _generate(m, ids, mask, settings.max_new_tokens, settings.pad_token_id,
                                                    args.seed))
    return best


def measure_engines(
    student: nn.Module, teacher: nn.Module, ids: Tensor, mask: Tensor, settings: RolloutSettings,
    args: argparse.Namespace,
) -> tuple[Best, dict[str, RolloutTimer]]:
    """Lockstep and speculative rollouts of one batch, interleaved, best of ``--repeats``; their timers."""
    best, timers = Best(), {}

    def engine(name: str) -> Callable[[], object]:
        def run() -> RolloutBatch:
            timers[name] = RolloutTimer()
            generator = torch.Generator(device=ids.device).manual_seed(args.seed)
            batch = rollout(student, teacher, ids, mask, dataclasses.replace(settings, engine=name),
                            generator=generator, timer=timers[name])
            assert batch.response_mask.all() and batch.tokens.shape == (ids.shape[0], settings.max_new_tokens)
            return batch

        return run

    for _ in range(args.repeats):
        for name in ("lockstep", "speculative"):
            best.run(name, engine(name))
    return best, timers


def table_row(
    size: int, target: float, tau0: float, engines: Best, timers: dict[str, RolloutTimer], generate: Best,
    costs: dict[str, dict[int, float]],
) -> str:
    lockstep, speculative = engines.result["lockstep"], engines.result["speculative"]
    same = ((lockstep.tokens == speculative.tokens) & (lockstep.teacher_chosen == speculative.teacher_chosen))
    # positions compared per row: up to and including the first one where the engines part
    compared = sum(row.numel() if row.all() else int((~row).nonzero()[0]) + 1 for row in same)
    seconds = timers["lockstep"].seconds
    split = " / ".join(f"{seconds[k] / sum(seconds.values()):.0%}" for k in ("teacher", "student", "select"))
    counts = timers["speculative"].counts
    both = generate.wall["teacher"] + generate.wall["student"]
    both_cpu = generate.cpu["teacher"] + generate.cpu["student"]
    wall, cpu = engines.wall, engines.cpu
    tokens = lockstep.tokens.numel()
    return (
        f"| {size} | {target:.0%} | {tau0:.3g} | {lockstep.teacher_share():.0%} | {engines.cell('lockstep')} | "
        f"{split} | {engines.cell('speculative')} | {wall['speculative'] / wall['lockstep']:.2f} | "
        f"{cpu['speculative'] / cpu['lockstep']:.2f} | {both:.2f} ({both_cpu:.2f}) | "
        f"{wall['speculative'] / both:.2f} | "
        f"{predicted_ratio(counts, costs, size, lockstep.tokens.shape[1]):.2f} | "
        f"{counts['accepted'] / max(counts['chunks'], 1):.2f} | {counts['teacher_drafts'] / max(counts['chunks'], 1):.0%} | "
        f"{1 - counts['accepted'] / max(counts['drafted'], 1):.0%} | {counts['forwards']} | "
        f"{tokens / wall['lockstep']:.1f} / {tokens / wall['speculative']:.1f} | "
        f"{int((~same.all(dim=1)).sum())} / {compared} |"
    )


HEADER = (
    "| batch | target share | τ0 | teacher share | lockstep s (CPU s) | lockstep split teacher / student / select "
    "| speculative s (CPU s) | spec/lock wall | spec/lock CPU | T+S generate s (CPU s) | spec/(T+S) wall "
    "| cost model spec/lock | mean accepted draft | teacher drafts | drafted discarded | spec forwards | tok/s lock / spec | rows parted / positions compared |"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", "--batch-sizes", dest="batches", default="1,8,32",
                        help="comma-separated batch sizes (default: 1,8,32)")
    parser.add_argument("--shares", default="0.2,0.5,0.8", help="target teacher shares (default: 0.2,0.5,0.8)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row (default: 128)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the best is kept (1)")
    parser.add_argument("--max-draft-tokens", type=int, default=8, help="longest speculative draft (default: 8)")
    parser.add_argument("--reference-tokens", type=int, default=0,
                        help="steps of the no-cache reference before extrapolating (default: 0 = skip it)")
    parser.add_argument("--keep-layers", type=int, default=6, help="student layers kept of 30 (default: 6)")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="teacher checkpoint folder (default: the embedded SmolLM2-135M-Instruct), e.g. "
                        "runs/default/models/teacher after `make run`")
    parser.add_argument("--student", type=Path, default=None,
                        help="student checkpoint folder (default: the teacher pruned to --keep-layers layers, "
                        "untrained), e.g. the warmed-up runs/default/models/student-sft after `make run`")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    parser.add_argument("--quick", action="store_true", help="batch 8, share 0.5, 64 new tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.shares, args.new_tokens = "8", "0.5", 64
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.batches.split(",")]
    shares = [float(x) for x in args.shares.split(",")]

    folder = args.teacher or embedded_teacher_dir()
    tokenizer = load_tokenizer(folder)
    teacher = load_causal_lm(folder, dtype=args.dtype, device=args.device)
    if args.student is None:
        student = prune_layers(teacher, args.keep_layers)
    else:
        student = load_causal_lm(args.student, dtype=args.dtype, device=args.device)
    records = generate_embedded_suite(max(sizes), seed=0)
    prompt_ids = [tokenize_prompt(format_prompt(r), tokenizer, max_prompt_length=256) for r in records]
    pad = int(tokenizer.pad_token_id)
    settings = RolloutSettings(pad_token_id=pad, stop_token_ids=(), decay=DECAY, max_new_tokens=args.new_tokens,
                               max_draft_tokens=args.max_draft_tokens)

    # warm-up (first calls allocate and pick kernels)
    ids, mask = (x.to(args.device) for x in left_pad(prompt_ids[:2], pad))
    for engine in ("lockstep", "speculative"):
        warm = RolloutSettings(pad_token_id=pad, tau0=1.0, max_new_tokens=4, engine=engine)
        rollout(student, teacher, ids, mask, warm)
    _generate(student, ids, mask, 4, pad, args.seed)

    header = (
        f"SWITCH rollout benchmark: teacher {args.teacher or 'SmolLM2-135M-Instruct'} "
        f"({count_parameters(teacher) / 1e6:.1f}M), student "
        f"{args.student or f'{args.keep_layers}-layer pruned copy'} ({count_parameters(student) / 1e6:.1f}M); "
        f"{args.device}, {args.dtype}, "
        f"{torch.get_num_threads()} threads; {args.new_tokens} new tokens per row (EOS disabled), sampling T=1, "
        f"top-k 0; exponential schedule, λ = {DECAY}; speculative drafts of at most {args.max_draft_tokens} tokens; "
        f"prompts: embedded instruction suite (MiniLLM template); best of {args.repeats} interleaved runs."
    )
    lines = [header, "", HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    print("\n".join(lines), flush=True)
    references, cost_lines = [], []
    for size in sizes:
        ids, mask = (x.to(args.device) for x in left_pad(prompt_ids[:size], pad))
        generate = measure_generate(student, teacher, ids, mask, settings, args)
        costs = {"student": forward_costs(student, ids, mask), "teacher": forward_costs(teacher, ids, mask)}
        cost_lines.append(f"| {size} | " + " | ".join(
            f"{costs[m][k] * 1e3:.1f}" for m in ("student", "teacher") for k in COST_KS) + " |")
        for target, tau0 in zip(shares, tau0_for_shares(student, teacher, ids, mask, settings, shares, args.seed),
                                strict=True):
            at = dataclasses.replace(settings, tau0=tau0)
            engines, timers = measure_engines(student, teacher, ids, mask, at, args)
            lines.append(table_row(size, target, tau0, engines, timers, generate, costs))
            print(lines[-1], flush=True)
        if args.reference_tokens > 0:
            references.append(measure_reference(student, teacher, ids, mask, settings, args))
    cost_header = "| batch | " + " | ".join(f"{m} k={k} ms" for m in ("student", "teacher") for k in COST_KS) + " |"
    lines += ["", "Forward costs after the prompt (k new tokens per row; k = 1 is a decode step, k > 1 a verify forward):",
              "", cost_header, "|" + "---|" * (cost_header.count("|") - 1), *cost_lines]
    print("\n".join(lines[-len(cost_lines) - 4:]), flush=True)
    if references:
        lines += ["", f"No-cache reference decoder (JSD β = {GATE_BETA}, 50% share):", "",
                  "| batch | seconds |", "|---|---|", *references]
        print("\n".join(lines[-len(references) - 4:]), flush=True)
    if args.out is not None:
        atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
