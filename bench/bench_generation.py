"""Batched vs one-prompt-at-a-time generation throughput of the embedded student (6-layer pruned SmolLM2-135M).

Prints a markdown table of tokens/s for each batch size (default 1 and 16) under the evaluation protocol's sampling
settings (T = 1, top-k off, top-p 1, no_repeat_ngram_size 6), on the same prompts and seed. Tokens are response
tokens plus EOS; padding after a finished row is not counted. The prompts are the ``--prompts`` prompts around the
median prompt length (as the evaluation batches length-sorted prompts) of ``../shared/data/dolly/valid.jsonl`` when
present, else of the embedded instruction suite; ``--selection first`` takes the first ones instead (mixed lengths,
so the batched prefill computes more padding).

    .venv/bin/python bench/bench_generation.py [--batch-sizes 1,16] [--prompts 16] [--max-new-tokens 64]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from switch_core.data.embedded import generate_embedded_suite
from switch_core.data.prompts import format_prompt
from switch_core.data.readers import read_minillm_jsonl
from switch_core.evaluation.evaluate import median_length_window
from switch_core.evaluation.generate import generate_batch
from switch_core.models.embedded import embedded_teacher_dir
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.student import prune_layers

DOLLY = Path(__file__).resolve().parents[2] / "shared" / "data" / "dolly" / "valid.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes; the first is the baseline")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--selection", choices=["median", "first"], default="median")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--keep-layers", type=int, default=6)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    teacher_dir = embedded_teacher_dir()
    tokenizer = load_tokenizer(teacher_dir)
    student = prune_layers(load_causal_lm(teacher_dir, device=args.device), args.keep_layers)
    if DOLLY.is_file():
        records, source = read_minillm_jsonl(DOLLY).records, str(DOLLY)
    else:
        records, source = generate_embedded_suite(20 * args.prompts, 0), "embedded suite"
    prompts = [format_prompt(r) for r in records]
    if args.selection == "median":
        prompts = median_length_window(prompts, tokenizer, args.prompts)
    else:
        prompts = prompts[: args.prompts]
    lengths = [len(tokenizer.encode(p)) for p in prompts]
    settings = {"max_prompt_length": 256, "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_k": 0,
                "top_p": 1.0, "no_repeat_ngram_size": 6, "seed": args.seed}
    generate_batch(student, tokenizer, prompts[:1], batch_size=1, **{**settings, "max_new_tokens": 2})  # warm-up

    sizes = [int(x) for x in args.batch_sizes.split(",")]
    print(f"embedded student: {args.keep_layers} of 30 layers, {sum(p.numel() for p in student.parameters()) / 1e6:.1f}M "
          f"parameters, {args.device}, {torch.get_num_threads()} threads; {len(prompts)} prompts ({args.selection}, "
          f"{min(lengths)}-{max(lengths)} tokens) from {source}; <= {args.max_new_tokens} new tokens, seed {args.seed}")
    print()
    print("| batch size | tokens | seconds | tokens/s | vs batch " + str(sizes[0]) + " |")
    print("|---|---|---|---|---|")
    baseline = None
    for size in sizes:
        began = time.perf_counter()
        result = generate_batch(student, tokenizer, prompts, batch_size=size, **settings)
        wall = time.perf_counter() - began
        rate = result.tokens_per_second
        baseline = baseline or rate
        print(f"| {size} | {result.generated_tokens} | {result.seconds:.2f} (wall {wall:.2f}) | {rate:.1f} | "
              f"{rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
