"""Evaluate a model on benchmark sets (ROUGE-L mean ± sd over seeds, BLEU, exact match; docs/METHOD.md §5).

Every option defaults to the configuration's ``eval`` section; results go to ``OUT/<benchmark>/{generations.jsonl,
metrics.json}`` and ``OUT/throughput.json``. Benchmarks already evaluated with the same model files, protocol and
examples are skipped unless ``--force``.
"""
from __future__ import annotations

import argparse
import typing
from pathlib import Path

import torch

from switch_core.config import DtypeName
from switch_core.evaluation.benchmarks import read_benchmark
from switch_core.evaluation.evaluate import EvalProtocol, EvaluationSummary, evaluate_model
from switch_core.evaluation.metrics import DEFAULT_BUCKET_EDGES
from switch_core.layout import RunLayout


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder, .gguf file, 'embedded' or cached hub name")
    parser.add_argument("--benchmarks", default=None, help="comma-separated names (default: eval.benchmarks)")
    parser.add_argument("--seeds", type=_int_list, default=None, help="comma-separated seeds (default: eval.seeds)")
    parser.add_argument("--limit", type=_positive_int, default=None, help="examples per benchmark (default: eval.limit)")
    parser.add_argument("--out", default=None, help="output folder (default: {run_dir}/eval/<model folder name>)")
    parser.add_argument("--data-dir", default=None, help="folder of the benchmark sets (default: eval.data_dir)")
    parser.add_argument(
        "--length-buckets", type=_int_list, default=list(DEFAULT_BUCKET_EDGES),
        help="upper bounds of the reference-length buckets in tokens (default: 5,10,20,50)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=typing.get_args(DtypeName),
                        help="parameter dtype of the model (default: eval.dtype)")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (not the paper protocol)")
    parser.add_argument("--no-hub", action="store_true", help="never download a benchmark from the hub")
    parser.add_argument(
        "--throughput-prompts", type=int, default=16,
        help="prompts of the batched vs one-at-a-time throughput probe (0 = skip; default 16)",
    )
    parser.add_argument(
        "--throughput-tokens", type=_positive_int, default=64,
        help="new-token cap of the throughput probe (default 64; never more than eval.max_new_tokens)",
    )
    parser.add_argument("--force", action="store_true", help="recompute benchmarks that are already evaluated")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def _model_spec(model: str, root: Path) -> str:
    """A local path resolved against the project root; 'embedded' and hub names unchanged."""
    candidate = _resolve(model, root)
    return str(candidate) if candidate.exists() else model


def format_summary(summary: EvaluationSummary) -> str:
    """The run summary: one line per benchmark (ROUGE-L mean ± sd, BLEU, EM, n, limit, seeds, tokens/s) and the
    throughput comparison."""
    lines = [f"evaluation of {summary.model}"]
    for outcome in summary.outcomes:
        m = outcome.metrics
        agg = m["aggregate"]
        seeds = ",".join(str(s) for s in m["protocol"]["seeds"])
        limit = "all" if m["limit"] is None else str(m["limit"])
        dtype = f", {m['protocol']['dtype']}" if "dtype" in m["protocol"] else ""  # recorded unless float32
        state = "resumed" if outcome.skipped else f"{m['throughput']['tokens_per_s']:.1f} tok/s"
        lines.append(
            f"  {outcome.name:<10} ROUGE-L {agg['rouge_l']['mean']:6.2f} ± {agg['rouge_l']['sd']:5.2f}  "
            f"BLEU {agg['bleu']['mean']:6.2f}  EM {agg['exact_match']['mean']:6.2f}  "
            f"(n={m['num_examples']} of {m['available_examples']}, limit {limit}, seeds {seeds}{dtype}; {state})"
        )
    t = summary.throughput
    if t is not None:
        lines.append(
            f"  throughput on {t['prompts']} prompts, <= {t['max_new_tokens']} new tokens: "
            f"batched (batch {t['batched']['batch_size']}) {t['batched']['tokens_per_s']:.1f} tok/s vs "
            f"one prompt at a time {t['one_at_a_time']['tokens_per_s']:.1f} tok/s ({t['speedup']:.2f}x)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    config = args.config
    root = Path(args.project_root)
    layout = RunLayout.from_config(config, root)
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()] if args.benchmarks else config.eval.benchmarks
    if not names:
        raise ValueError("--benchmarks: no benchmark given")
    overrides: dict = {"greedy": args.greedy, "length_bucket_edges": tuple(args.length_buckets)}
    if args.seeds is not None:
        overrides["seeds"] = tuple(args.seeds)
    if args.limit is not None:
        overrides["limit"] = args.limit
    if args.dtype is not None:
        overrides["dtype"] = args.dtype
    protocol = EvalProtocol.from_config(config, **overrides)
    data_dir = _resolve(args.data_dir or config.eval.data_dir, root)
    benchmarks = [
        read_benchmark(
            name, data_dir=data_dir, run_dir=layout.root, limit=protocol.limit, seed=protocol.subsample_seed,
            hub=not args.no_hub,
        )
        for name in names
    ]
    model = _model_spec(args.model, root)
    out = _resolve(args.out, root) if args.out else layout.eval_dir(Path(model.rstrip("/")).name)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    # timings out of the (DVC-tracked) results: timings/eval/<name> for a folder of the run, else beside the results
    timings = layout.timings(out) if out.resolve().is_relative_to(layout.root.resolve()) else None
    summary = evaluate_model(
        model, benchmarks, protocol, out, force=args.force, device=device,
        throughput_prompts=args.throughput_prompts, throughput_tokens=args.throughput_tokens,
        show_progress=not args.quiet, timings_dir=timings,
    )
    print(format_summary(summary))
    print(f"results in {out}")
    return 0
