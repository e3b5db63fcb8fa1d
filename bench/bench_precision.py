"""float32 against bfloat16 on the embedded pair, in one process: training steps, rollouts and evaluation-style
generation, with the bf16 / float32 time ratio of each.

Pair: ``--teacher`` (default ``runs/default/models/teacher`` after ``make run``, else the embedded SmolLM2-135M-Instruct)
and ``--student`` (default ``runs/default/models/student-sft``, else the teacher pruned to 6 layers). What "bf16" means
in each row is what the configuration switches on:

- ``train sft`` / ``train kd``: one optimizer step of :func:`switch_core.training.train` on ``--batch`` sequences of
  ``--prompt + --response`` tokens, ``optim.mixed_precision: no`` vs ``bf16`` (autocast of the forwards; float32
  weights); mean over the steps after the first (a warm-up). The kd row's last column adds ``teacher.dtype:
  bfloat16`` (the frozen teacher's weights in bfloat16);
- ``rollout lockstep`` / ``rollout speculative``: one SWITCH rollout (:func:`switch_core.rollout.rollout`) of
  ``--rollout-batch`` prompts and exactly ``--rollout-tokens`` new tokens (EOS disabled), sampling at T = 1, τ0 set
  for a 50% teacher share on the student's own float32 rollout (as ``bench/bench_rollout.py``); bf16 = under the
  autocast a bf16 run decodes its rollouts with, last column also with the teacher's weights in bfloat16;
- ``generate teacher`` / ``generate student``: evaluation-style sampling (``generate``, T = 1, top-k off,
  no_repeat_ngram_size 6, exactly ``--gen-tokens`` new tokens) of ``--gen-batch`` prompts, model weights in float32
  vs ``eval.dtype: bfloat16``.

Each cell is the best wall time of ``--repeats`` runs (float32 and bf16 interleaved, after a warm-up call), in
seconds. The script first reports whether the CPU has AMX / avx512_bf16 (``/proc/cpuinfo`` flags): without them
bfloat16 matrix products are emulated and bf16 is slower than float32. It also counts the rows where the speculative
and the lockstep rollout part (float32 and bf16 rounding, tests/test_rollout_speculative.py).

    .venv/bin/python bench/bench_precision.py --threads 1                        # the full table (tens of minutes)
    .venv/bin/python bench/bench_precision.py --threads 1 --quick                # shorter sequences, 2 steps
    .venv/bin/python bench/bench_precision.py --teacher T --student S --out precision.md
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rollout import tau0_for_shares
from bench_training import StepRecorder, _examples

from switch_core.atomic import atomic_write_text
from switch_core.config import EvalConfig, OptimConfig, RolloutConfig, _default_methods
from switch_core.data.embedded import generate_embedded_suite
from switch_core.data.prompts import format_prompt
from switch_core.data.tokenize import left_pad, tokenize_prompt
from switch_core.models.embedded import embedded_teacher_dir
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.student import count_parameters, prune_layers
from switch_core.processes import autocast
from switch_core.rollout import RolloutSettings, rollout
from switch_core.training import DevData, TrainJob, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = ROOT / "runs" / "default" / "models" / "teacher"
DEFAULT_STUDENT = ROOT / "runs" / "default" / "models" / "student-sft"
BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")
"""CPU flags that decide whether bfloat16 pays off: AMX tiles (Sapphire Rapids and later) or AVX-512 BF16."""


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> dict[str, bool] | None:
    """Which of :data:`BF16_FLAGS` the CPU reports (the first ``flags`` line of ``/proc/cpuinfo``); None when it
    cannot be read (not Linux)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return {flag: flag in flags for flag in BF16_FLAGS}


def cpu_verdict(flags: dict[str, bool] | None) -> str:
    """One line on whether bfloat16 can pay off on this CPU."""
    if flags is None:
        return "CPU flags unknown (no /proc/cpuinfo): bf16 pays off only with AMX or avx512_bf16"
    shown = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in flags.items())
    if flags["amx_bf16"] or flags["avx512_bf16"]:
        return f"CPU: {shown}: bfloat16 matrix products run in hardware"
    return f"CPU: {shown}: no bfloat16 hardware, bf16 will be SLOWER than float32 here"


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Best wall seconds of ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def train_step_seconds(
    name: str, student: nn.Module, teacher: nn.Module | None, tokenizer: object, examples: list, precision: str,
    args: argparse.Namespace,
) -> float:
    """Mean seconds of the optimizer steps after the first of a ``name`` run at ``optim.mixed_precision =
    precision`` (the student is a fresh copy: training changes it)."""
    recorder = StepRecorder()
    with tempfile.TemporaryDirectory() as tmp:
        job = TrainJob(
            name=name, student=copy.deepcopy(student), tokenizer=tokenizer, train=examples[:-1],
            dev=DevData(examples[-1:], [], []),
            optim=OptimConfig(batch_size=args.batch, micro_batch_size=args.batch, max_steps=args.steps, log_every=1,
                              mixed_precision=precision),
            method=_default_methods()[name], output_dir=Path(tmp) / "model", state_dir=Path(tmp) / "state",
            select_by="loss", teacher=teacher, rollout=RolloutConfig(), generation=EvalConfig(max_new_tokens=1),
            max_prompt_length=args.prompt,
        )
        train(job, tracker=recorder)
    timed = recorder.steps[1:] or recorder.steps
    return sum(s["train/step_seconds"] for s in timed) / len(timed)


def _generate(model: nn.Module, ids: Tensor, mask: Tensor, tokens: int, pad: int, seed: int) -> Tensor:
    """Evaluation-style sampling (T = 1, top-k off, top-p 1, no_repeat_ngram_size 6) of exactly ``tokens`` tokens."""
    torch.manual_seed(seed)
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                          do_sample=True, temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=6, pad_token_id=pad)


def parted(lockstep: object, speculative: object) -> tuple[int, int]:
    """(rows where the engines part, positions compared up to each row's first difference)."""
    same = (lockstep.tokens == speculative.tokens) & (lockstep.teacher_chosen == speculative.teacher_chosen)
    compared = sum(row.numel() if row.all() else int((~row).nonzero()[0]) + 1 for row in same)
    return int((~same.all(dim=1)).sum()), compared


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=None,
                        help=f"teacher checkpoint folder (default: {DEFAULT_TEACHER.relative_to(ROOT)} when present, "
                        "else the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--student", type=Path, default=None,
                        help=f"student checkpoint folder (default: {DEFAULT_STUDENT.relative_to(ROOT)} when present, "
                        "else the teacher pruned to 6 layers)")
    parser.add_argument("--batch", type=int, default=8, help="training batch (sequences; default 8)")
    parser.add_argument("--prompt", type=int, default=128, help="training prompt tokens (default 128)")
    parser.add_argument("--response", type=int, default=128, help="training response tokens (default 128)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run, the first a warm-up (default 3)")
    parser.add_argument("--rollout-batch", type=int, default=8, help="rollout prompts (default 8)")
    parser.add_argument("--rollout-tokens", type=int, default=128, help="rollout new tokens (default 128)")
    parser.add_argument("--gen-batch", type=int, default=16, help="generation prompts (default 16)")
    parser.add_argument("--gen-tokens", type=int, default=64, help="generated tokens per prompt (default 64)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell, the best kept (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="2 steps of 64+64 tokens, 32 rollout tokens, 16 generated tokens, no bf16-teacher column")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.prompt, args.response, args.rollout_tokens, args.gen_tokens = 2, 64, 64, 32, 16
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher_dir = args.teacher or (DEFAULT_TEACHER if DEFAULT_TEACHER.is_dir() else embedded_teacher_dir())
    student_dir = args.student or (DEFAULT_STUDENT if DEFAULT_STUDENT.is_dir() else None)
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_causal_lm(teacher_dir)
    student = load_causal_lm(student_dir) if student_dir else prune_layers(teacher, 6)
    teacher_bf16 = copy.deepcopy(teacher).to(torch.bfloat16)
    pad = int(tokenizer.pad_token_id)
    flags = cpu_flags()
    machine = platform.processor() or platform.machine()
    header = [
        (f"precision benchmark: teacher {teacher_dir} ({count_parameters(teacher) / 1e6:.1f}M), student "
         f"{student_dir or 'teacher pruned to 6 layers'} ({count_parameters(student) / 1e6:.1f}M); "
         f"torch {torch.__version__}, {torch.get_num_threads()} threads, {machine}"),
        cpu_verdict(flags), "",
    ]
    print("\n".join(header), flush=True)

    rows: list[tuple[str, float, float, float | None]] = []

    def report(label: str, float32: float, bf16: float, bf16_teacher: float | None = None) -> None:
        rows.append((label, float32, bf16, bf16_teacher))
        extra = "" if bf16_teacher is None else f", bf16 + bf16 teacher {bf16_teacher:.2f} s"
        print(f"{label}: float32 {float32:.2f} s, bf16 {bf16:.2f} s{extra}", file=sys.stderr, flush=True)

    # training steps: the real loop, optim.mixed_precision no vs bf16
    examples = _examples(tokenizer, args.batch * args.steps + 1, args.prompt, args.response)
    for name in ("sft", "kd"):
        with_teacher = name == "kd"
        cells = {precision: train_step_seconds(name, student, teacher if with_teacher else None, tokenizer, examples,
                                               precision, args) for precision in ("no", "bf16")}
        both = (train_step_seconds(name, student, teacher_bf16, tokenizer, examples, "bf16", args)
                if with_teacher and not args.quick else None)
        report(f"train {name} (batch {args.batch} x {args.prompt}+{args.response}, one step)", cells["no"],
               cells["bf16"], both)

    # rollouts: 50% teacher share, EOS disabled, under the autocast of a bf16 run
    prompt_ids = [tokenize_prompt(format_prompt(r), tokenizer, max_prompt_length=256)
                  for r in generate_embedded_suite(args.rollout_batch, seed=0)]
    ids, mask = left_pad(prompt_ids, pad)
    base = RolloutSettings(pad_token_id=pad, stop_token_ids=(), decay=0.1, max_new_tokens=args.rollout_tokens)
    tau0 = tau0_for_shares(student, teacher, ids, mask, base, [0.5], args.seed)[0]
    print(f"tau0 {tau0:.4f} (50% teacher share on the student's float32 rollout)", file=sys.stderr, flush=True)
    def bf16_autocast() -> AbstractContextManager[None]:
        return autocast("bf16", "cpu")

    configurations = {"float32": (teacher, nullcontext), "bf16": (teacher, bf16_autocast),
                      "bf16 teacher": (teacher_bf16, bf16_autocast)}
    if args.quick:
        del configurations["bf16 teacher"]
    parts: dict[str, dict[str, object]] = {}
    for engine in ("lockstep", "speculative"):
        settings = dataclasses.replace(base, tau0=tau0, engine=engine)

        def decode(model: nn.Module, context: Callable[[], AbstractContextManager[None]],
                   settings: RolloutSettings = settings) -> object:
            with context():
                return rollout(student, model, ids, mask, settings,
                               generator=torch.Generator().manual_seed(args.seed))

        for model, context in configurations.values():
            decode(model, context)  # warm-up
        best = {name: float("inf") for name in configurations}
        for _ in range(args.repeats):  # interleaved
            for name, (model, context) in configurations.items():
                began = time.perf_counter()
                parts.setdefault(name, {})[engine] = decode(model, context)
                best[name] = min(best[name], time.perf_counter() - began)
        share = parts["float32"][engine].teacher_share()
        report(f"rollout {engine} (batch {args.rollout_batch} x {args.rollout_tokens} tokens, share {share:.2f})",
               best["float32"], best["bf16"], best.get("bf16 teacher"))

    # evaluation-style generation: weights in float32 vs eval.dtype bfloat16
    gen_ids = [tokenize_prompt(format_prompt(r), tokenizer, max_prompt_length=256)
               for r in generate_embedded_suite(args.gen_batch, seed=1)]
    gids, gmask = left_pad(gen_ids, pad)
    for label, model in (("teacher", teacher), ("student", student)):
        half = copy.deepcopy(model).to(torch.bfloat16)
        for candidate in (model, half):
            _generate(candidate, gids, gmask, 2, pad, args.seed)  # warm-up
        seconds = {}
        for name, candidate in (("float32", model), ("bf16", half)):
            seconds[name] = _best(lambda c=candidate: _generate(c, gids, gmask, args.gen_tokens, pad, args.seed),
                                  args.repeats)
        report(f"generate {label} (batch {args.gen_batch} x {args.gen_tokens} tokens)", seconds["float32"],
               seconds["bf16"])

    lines = ["| measurement | float32 s | bf16 s | bf16 / float32 | bf16 + teacher bfloat16 s (ratio) |",
             "|---|---|---|---|---|"]
    for label, float32, bf16, both in rows:
        extra = "" if both is None else f"{both:.2f} ({both / float32:.2f})"
        lines.append(f"| {label} | {float32:.2f} | {bf16:.2f} | **{bf16 / float32:.2f}** | {extra} |")
    lines.append("")
    for name, by_engine in parts.items():
        rows_parted, compared = parted(by_engine["lockstep"], by_engine["speculative"])
        lines.append(f"- speculative vs lockstep, {name}: {rows_parted} of {args.rollout_batch} rows parted over "
                     f"{compared} positions compared")
    table = "\n".join(header + lines) + "\n"
    print("\n".join(lines), flush=True)
    if args.out is not None:
        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
