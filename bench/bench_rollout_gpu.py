"""The rollout benchmark of bench/bench_rollout.py on a CUDA GPU: lockstep against speculative SWITCH rollouts.

Same table (batch sizes × target teacher shares; lockstep and speculative seconds, their ratio, teacher + student
``generate``, mean accepted draft length, share of drafted tokens discarded, tokens/s) plus the measured forward
costs (a decode step against a verify forward of k tokens) and the cost model's predicted speculative / lockstep
ratio from them and the measured accept lengths. On a GPU a verify forward of a few tokens costs about one decode
step (it is bound by reading the weights), so the speculative engine gains more than on a CPU.

Without a CUDA device it prints why and exits with status 0 (nothing to measure). Other options are passed on to
bench/bench_rollout.py (``--dtype bfloat16`` is the default here; ``--device`` is fixed to ``cuda``):

    .venv/bin/python bench/bench_rollout_gpu.py [--batches 1,8,32] [--shares 0.2,0.5,0.8] [--new-tokens 128]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("bench_rollout_gpu: no CUDA device is available (torch.cuda.is_available() is False), so there is "
              "nothing to measure; run bench/bench_rollout.py for the CPU numbers.", file=sys.stderr)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_rollout

    options = ["--dtype", "bfloat16"] if "--dtype" not in argv else []
    print(f"GPU: {torch.cuda.get_device_name()}", flush=True)
    bench_rollout.main([*options, *argv, "--device", "cuda"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
