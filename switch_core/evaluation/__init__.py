"""Evaluation on the MiniLLM / DistiLLM benchmarks (docs/METHOD.md §5): registry, batched generation, metrics, files.

Modules: :mod:`~switch_core.evaluation.benchmarks` (registry and loading), :mod:`~switch_core.evaluation.generate`
(left-padded batched sampling), :mod:`~switch_core.evaluation.metrics` (ROUGE-L, BLEU, exact match, length
buckets) and :mod:`~switch_core.evaluation.evaluate` (one model × benchmarks × seeds -> generations.jsonl +
metrics.json). Tables, plots and documents from these files: :mod:`switch_core.reporting`.
"""
from switch_core.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkNotFoundError,
    BenchmarkSpec,
    LoadedBenchmark,
    read_benchmark,
)
from switch_core.evaluation.evaluate import EvalProtocol, EvaluationSummary, evaluate_model
from switch_core.evaluation.generate import GenerationResult, generate_batch, generate_responses
from switch_core.evaluation.metrics import corpus_bleu, exact_match, length_buckets, rouge_l

__all__ = [
    "BENCHMARKS",
    "BenchmarkNotFoundError",
    "BenchmarkSpec",
    "EvalProtocol",
    "EvaluationSummary",
    "GenerationResult",
    "LoadedBenchmark",
    "corpus_bleu",
    "evaluate_model",
    "exact_match",
    "generate_batch",
    "generate_responses",
    "length_buckets",
    "read_benchmark",
    "rouge_l",
]
