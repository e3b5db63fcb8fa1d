"""Evaluate one model on benchmarks × seeds under the MiniLLM / DistiLLM protocol and write the result files.

For each benchmark, ``{out_dir}/{benchmark}/`` receives

- ``generations.jsonl``: one line per example and seed: ``id``, ``seed``, ``prompt``, ``prediction``,
  ``references``, ``reference_length`` (tokens of the first reference under the evaluated model's tokenizer),
  ``prediction_length`` (response tokens before EOS), ``stopped`` (EOS produced), ``rouge_l`` and ``exact_match``
  (0–100), ``prompt_truncated`` (the prompt was cut to ``max_prompt_length``, its end kept);
- ``metrics.json``: per-seed and aggregate values, the protocol, the model path and fingerprints (see
  :func:`evaluate_benchmark`). It is written last, so its presence marks a finished benchmark.

Timings (generation seconds, tokens/s, the date) differ between two runs of the same evaluation, so they are kept
out of these files: ``timings.json`` per benchmark and ``throughput.json`` go to a separate timings folder
(``timings_dir``; the benchmark folders themselves when not given), and the result files are the same bytes for the
same model, data and protocol.

The model is loaded in the protocol's ``dtype`` (``eval.dtype``, float32 by default; bfloat16 about halves the
generation time on CPUs with AMX / avx512_bf16 and changes the scores at rounding level).

Metrics (METHOD.md §5.5): ROUGE-L F-measure with stemming, max over references, ×100, averaged over examples; the mean
and sample standard deviation over seeds. Also corpus BLEU (sacrebleu) and exact match, and ROUGE-L per
reference-length bucket (METHOD.md §2). A benchmark whose ``metrics.json`` already holds the same fingerprint (model
files + protocol + evaluated examples) is skipped unless ``force``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from inspect import signature
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from switch_core.atomic import atomic_write_json, atomic_write_jsonl
from switch_core.config import Config, EvalConfig, format_validation_error
from switch_core.data.prompts import PromptStyle, format_prompt
from switch_core.evaluation.benchmarks import LoadedBenchmark
from switch_core.evaluation.generate import GenerationResult, generate_batch
from switch_core.evaluation.metrics import (
    DEFAULT_BUCKET_EDGES,
    assign_bucket,
    corpus_bleu,
    exact_match,
    length_buckets,
    mean_and_sd,
    rouge_l,
)
from switch_core.hashing import checkpoint_fingerprint


class EvaluationError(ValueError):
    """Evaluation settings that cannot work (no seed, batch size or limit below 1)."""


METRICS_FILE = "metrics.json"
GENERATIONS_FILE = "generations.jsonl"
THROUGHPUT_FILE = "throughput.json"
TIMINGS_FILE = "timings.json"
REFERENCE_LENGTH_RULE = (
    "tokens of the first reference under the evaluated model's tokenizer (add_special_tokens=False); "
    "for multi-reference rows (S-NI) only the first reference is counted"
)


def _config_default(name: str) -> Any:
    """The default of ``eval.<name>`` as :class:`~switch_core.config.EvalConfig` declares it."""
    return EvalConfig.model_fields[name].get_default(call_default_factory=True)


@dataclass(frozen=True)
class EvalProtocol:
    """The decoding and scoring settings of an evaluation: the ``eval`` section of the configuration (its defaults
    and rules, declared once in :class:`~switch_core.config.EvalConfig`, docs/METHOD.md §5.3–5.5) plus what the
    evaluation adds. Build it with :meth:`from_config`.

    Attributes:
        seeds, max_prompt_length, max_new_tokens, temperature, top_k, top_p, no_repeat_ngram_size, batch_size, limit,
            dtype: ``eval.*`` (``batch_size`` is part of the protocol: it changes the random draws; ``limit`` =
            examples per benchmark, a seeded subsample, None = all; ``dtype`` = the model's parameter dtype).
        subsample_seed: seed of that subsample (the configuration's ``seed``).
        prompt_style: ``"minillm"`` (the benchmark's own prompt) or ``"chat_template"`` (``data.prompt_format``).
        length_bucket_edges: upper bounds of the reference-length buckets in tokens.
        greedy: argmax decoding instead of sampling (not the paper protocol; for quick checks).
    """

    seeds: tuple[int, ...] = tuple(_config_default("seeds"))
    max_prompt_length: int = _config_default("max_prompt_length")
    max_new_tokens: int = _config_default("max_new_tokens")
    temperature: float = _config_default("temperature")
    top_k: int = _config_default("top_k")
    top_p: float = _config_default("top_p")
    no_repeat_ngram_size: int = _config_default("no_repeat_ngram_size")
    batch_size: int = _config_default("batch_size")
    limit: int | None = _config_default("limit")
    dtype: str = _config_default("dtype")
    subsample_seed: int = 0
    prompt_style: PromptStyle = "minillm"
    length_bucket_edges: tuple[int, ...] = DEFAULT_BUCKET_EDGES
    greedy: bool = False

    def __post_init__(self) -> None:
        try:  # the eval.* rules, as the configuration declares them
            EvalConfig.model_validate({name: getattr(self, name) for name in _CONFIG_KEYS})
        except ValidationError as err:
            origin = "evaluation protocol: eval.* or the evaluate flags"
            raise EvaluationError(format_validation_error(err, origin)) from None
        length_buckets(self.length_bucket_edges)  # MetricInputError on bad edges, before any generation

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> EvalProtocol:
        """Protocol from the configuration: ``eval.*``, ``seed`` (the subsample seed) and ``data.prompt_format``;
        ``overrides`` (e.g. ``seeds``, ``limit``, ``greedy``, ``length_bucket_edges``) win.

        Raises:
            EvaluationError: a value the ``eval`` section does not allow (no seed, ``batch_size`` or ``limit``
                below 1...), naming the key.
            switch_core.evaluation.metrics.MetricInputError: length-bucket edges not strictly increasing.
        """
        values: dict[str, Any] = {name: getattr(config.eval, name) for name in _CONFIG_KEYS}
        values |= {"subsample_seed": config.seed, "prompt_style": config.data.prompt_format} | overrides
        values["seeds"] = tuple(int(s) for s in values["seeds"])
        values["length_bucket_edges"] = tuple(int(e) for e in values.get("length_bucket_edges", DEFAULT_BUCKET_EDGES))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists): the protocol record of metrics.json and of the resume fingerprint.

        ``dtype`` is left out when it is float32, so that results evaluated before ``eval.dtype`` existed (all in
        float32) keep their record and fingerprint; any other dtype is recorded, so changing it re-evaluates.
        """
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        data["length_bucket_edges"] = list(self.length_bucket_edges)
        if self.dtype == "float32":
            del data["dtype"]
        return data

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~switch_core.evaluation.generate.generate_batch` other than ``seed``: every
        protocol setting its signature names."""
        names = {f.name for f in fields(self)}
        return {name: getattr(self, name) for name in signature(generate_batch).parameters if name in names}


_CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(EvalProtocol) if f.name in EvalConfig.model_fields)
"""The protocol settings that are ``eval.*`` keys of the configuration."""


def data_fingerprint(records: Sequence[Any]) -> str:
    """SHA-256 of the evaluated examples (ids, instructions, inputs, references, prompts) in order."""
    payload = json.dumps([r.to_dict() for r in records], ensure_ascii=False, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def run_fingerprint(protocol: EvalProtocol, model_fp: str, data_fp: str) -> str:
    """The resume key of one benchmark evaluation: hash of protocol, model fingerprint and data fingerprint."""
    payload = json.dumps({"protocol": protocol.to_dict(), "model": model_fp, "data": data_fp}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def reference_length(reference: str, tokenizer: Any) -> int:
    """Tokens of a reference under ``tokenizer`` without special tokens (the length-bucket key, docs/METHOD.md §2)."""
    return len(tokenizer.encode(reference, add_special_tokens=False))


def score_seed(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    ref_lengths: Sequence[int],
    edges: Sequence[int],
) -> tuple[dict[str, Any], list[float], list[float]]:
    """Corpus metrics of one seed's predictions.

    Args:
        predictions: one response per example.
        references: each example's references.
        ref_lengths: each example's reference length in tokens (bucket key).
        edges: length-bucket upper bounds.

    Returns:
        ``(metrics, rouge_per_example, em_per_example)``: ``metrics`` holds ``rouge_l``, ``bleu``, ``exact_match``
        (0–100) and ``by_length`` ``{label: {"n", "rouge_l"}}`` for non-empty buckets; per-example values are
        0–100.
    """
    rouge = [100.0 * rouge_l(p, r) for p, r in zip(predictions, references)]
    em = [100.0 * exact_match(p, r) for p, r in zip(predictions, references)]
    buckets = length_buckets(edges)
    by_length: dict[str, dict[str, float]] = {}
    for bucket in buckets:
        scores = [s for s, n in zip(rouge, ref_lengths) if assign_bucket(n, buckets) == bucket]
        if scores:
            by_length[bucket.label] = {"n": len(scores), "rouge_l": sum(scores) / len(scores)}
    metrics = {
        "rouge_l": sum(rouge) / len(rouge),
        "bleu": corpus_bleu(predictions, references),
        "exact_match": sum(em) / len(em),
        "by_length": by_length,
    }
    return metrics, rouge, em


def aggregate_seeds(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample sd over seeds of every scalar metric, and of ROUGE-L per length bucket.

    Args:
        per_seed: the ``per_seed`` entries of a metrics.json (each with ``rouge_l``, ``bleu``, ``exact_match``,
            ``mean_prediction_length``, ``by_length``).

    Returns:
        ``{metric: {"mean", "sd"}}`` plus ``by_length: {label: {"n", "mean", "sd"}}``.
    """
    aggregate: dict[str, Any] = {}
    for key in ("rouge_l", "bleu", "exact_match", "mean_prediction_length", "stopped_fraction"):
        mean, sd = mean_and_sd([s[key] for s in per_seed])
        aggregate[key] = {"mean": mean, "sd": sd}
    labels = list(per_seed[0]["by_length"])
    aggregate["by_length"] = {}
    for label in labels:
        mean, sd = mean_and_sd([s["by_length"][label]["rouge_l"] for s in per_seed])
        aggregate["by_length"][label] = {"n": per_seed[0]["by_length"][label]["n"], "mean": mean, "sd": sd}
    return aggregate


@dataclass(frozen=True)
class PlannedBenchmark:
    """A benchmark ready to evaluate: its data, output folder, resume key, and the finished result if any.

    Attributes:
        loaded: the benchmark's examples.
        out_dir: ``{eval out}/{benchmark}``.
        fingerprint: :func:`run_fingerprint` of this protocol, model and data.
        existing: the metrics.json already on disk with the same fingerprint (resume), else None.
    """

    loaded: LoadedBenchmark
    out_dir: Path
    fingerprint: str
    existing: dict[str, Any] | None


@dataclass(frozen=True)
class BenchmarkOutcome:
    """One benchmark's metrics.json content and whether it was reused from disk instead of computed."""

    name: str
    metrics: dict[str, Any]
    skipped: bool
    out_dir: Path


@dataclass(frozen=True)
class EvaluationSummary:
    """The result of :func:`evaluate_model`: one outcome per benchmark and the throughput probe (None if not run)."""

    model: str
    outcomes: list[BenchmarkOutcome]
    throughput: dict[str, Any] | None


def _read_existing(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def plan_benchmarks(
    benchmarks: Sequence[LoadedBenchmark],
    protocol: EvalProtocol,
    model_fp: str,
    out_dir: str | Path,
    *,
    force: bool = False,
) -> list[PlannedBenchmark]:
    """Fingerprint each benchmark and pick up finished results with the same fingerprint (resume).

    Args:
        benchmarks: loaded benchmarks.
        protocol: the evaluation settings.
        model_fp: :func:`~switch_core.hashing.checkpoint_fingerprint` of the model.
        out_dir: the model's evaluation folder.
        force: ignore existing results.

    Returns:
        One :class:`PlannedBenchmark` per benchmark, in order.
    """
    planned = []
    for loaded in benchmarks:
        bench_dir = Path(out_dir) / loaded.spec.name
        fingerprint = run_fingerprint(protocol, model_fp, data_fingerprint(loaded.records))
        existing = None if force else _read_existing(bench_dir / METRICS_FILE)
        if existing is not None and existing.get("fingerprint") != fingerprint:
            existing = None
        planned.append(PlannedBenchmark(loaded, bench_dir, fingerprint, existing))
    return planned


def evaluate_benchmark(
    model: Any,
    tokenizer: Any,
    loaded: LoadedBenchmark,
    protocol: EvalProtocol,
    out_dir: str | Path,
    *,
    model_path: str,
    model_fp: str,
    progress: Callable[[int], object] | None = None,
    timings_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Generate for every seed, score, and write ``generations.jsonl``, ``timings.json`` then ``metrics.json``
    (atomically).

    Args:
        model: the causal LM (eval mode).
        tokenizer: its tokenizer.
        loaded: the benchmark (see :func:`~switch_core.evaluation.benchmarks.read_benchmark`).
        protocol: decoding and scoring settings.
        out_dir: the benchmark's folder (``{eval out}/{benchmark}``).
        model_path: recorded in metrics.json.
        model_fp: model fingerprint (:func:`~switch_core.hashing.checkpoint_fingerprint`).
        progress: called after each generation batch with its number of prompts.
        timings_dir: where ``timings.json`` goes (``created``, ``throughput``: batch size, generated tokens,
            seconds, tokens/s; ``tokens_per_s_by_seed``); default ``out_dir``.

    Returns:
        The metrics.json content with the timings' ``throughput`` and ``created`` added.

    Raises:
        switch_core.data.prompts.PromptFormatError: chat-template style with a tokenizer without a template.
        switch_core.data.tokenize.EmptyExampleError: a prompt with no tokens.
    """
    records = loaded.records
    prompts = [format_prompt(r, style=protocol.prompt_style, tokenizer=tokenizer) for r in records]
    references = [list(r.references) for r in records]
    ref_lengths = [reference_length(r.references[0], tokenizer) for r in records]
    rows: list[dict[str, Any]] = []
    per_seed: list[dict[str, Any]] = []
    tokens = 0
    seconds = 0.0
    rates: list[float] = []
    for seed in protocol.seeds:
        result: GenerationResult = generate_batch(
            model, tokenizer, prompts, seed=seed, on_batch=progress, **protocol.generation_kwargs()
        )
        metrics, rouge, em = score_seed(result.texts, references, ref_lengths, protocol.length_bucket_edges)
        metrics["mean_prediction_length"] = sum(result.response_lengths) / len(records)
        metrics["stopped_fraction"] = sum(result.stopped) / len(records)
        rates.append(result.tokens_per_second)
        per_seed.append({"seed": seed, **metrics})
        tokens += result.generated_tokens
        seconds += result.seconds
        for i, record in enumerate(records):
            rows.append({
                "id": record.id,
                "seed": seed,
                "prompt": prompts[i],
                "prediction": result.texts[i],
                "references": references[i],
                "reference_length": ref_lengths[i],
                "prediction_length": result.response_lengths[i],
                "stopped": result.stopped[i],
                "prompt_truncated": result.prompt_truncated[i],
                "rouge_l": rouge[i],
                "exact_match": em[i],
            })
    data_fp = data_fingerprint(records)
    metrics_json = {
        "benchmark": loaded.spec.name,
        "description": loaded.spec.description,
        "source": loaded.source,
        "model": model_path,
        "model_fingerprint": model_fp,
        "data_fingerprint": data_fp,
        "fingerprint": run_fingerprint(protocol, model_fp, data_fp),
        "protocol": protocol.to_dict(),
        "num_examples": len(records),
        "prompts_truncated": sum(result.prompt_truncated),  # the same prompts under every seed
        "available_examples": loaded.available,
        "limit": loaded.limit,
        "scale": "ROUGE-L, BLEU and exact match are on a 0-100 scale; sd is the sample sd over seeds (ddof=1)",
        "reference_length": REFERENCE_LENGTH_RULE,
        "per_seed": per_seed,
        "aggregate": aggregate_seeds(per_seed),
    }
    timings = {
        "throughput": {
            "batch_size": protocol.batch_size,
            "generated_tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        },
        "tokens_per_s_by_seed": rates,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    out_dir = Path(out_dir)
    atomic_write_jsonl(out_dir / GENERATIONS_FILE, rows)
    atomic_write_json(Path(timings_dir or out_dir) / TIMINGS_FILE, timings)
    atomic_write_json(out_dir / METRICS_FILE, metrics_json)
    return metrics_json | {"throughput": timings["throughput"], "created": timings["created"]}


def median_length_window(prompts: Sequence[str], tokenizer: Any, n: int) -> list[str]:
    """The ``n`` prompts around the median token length, longest first.

    The run batches prompts in length-sorted order, so its batches hold prompts of similar length; a throughput
    probe on such a window measures the run's batching, not the padding of an arbitrary mix.

    Returns:
        ``min(n, len(prompts))`` prompts.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(tokenizer.encode(prompts[i])))
    start = max(0, min(len(order) - n, len(order) // 2 - n // 2))
    return [prompts[i] for i in order[start : start + n]]


def measure_throughput(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    protocol: EvalProtocol,
    *,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Tokens/s of batched generation (``min(protocol.batch_size, len(prompts))`` per call) vs ``generate`` on one
    prompt at a time.

    Both runs use the same prompts, settings (``max_new_tokens`` capped as given) and seed
    (``protocol.seeds[0]``), after a short warm-up call. Tokens are response tokens plus EOS (padding excluded).

    Returns:
        ``{"prompts", "max_new_tokens", "batched": {"batch_size", "tokens", "seconds", "tokens_per_s"},
        "one_at_a_time": {...}, "speedup"}``.
    """
    kwargs = protocol.generation_kwargs()
    kwargs["max_new_tokens"] = max_new_tokens
    kwargs.pop("batch_size")
    seed = protocol.seeds[0]
    batch_size = min(protocol.batch_size, len(prompts))
    generate_batch(model, tokenizer, list(prompts[:1]), seed=seed, batch_size=1, **{**kwargs, "max_new_tokens": 2})
    report: dict[str, Any] = {"prompts": len(prompts), "max_new_tokens": max_new_tokens}
    for name, size in (("batched", batch_size), ("one_at_a_time", 1)):
        result = generate_batch(model, tokenizer, prompts, seed=seed, batch_size=size, **kwargs)
        report[name] = {
            "batch_size": size,
            "tokens": result.generated_tokens,
            "seconds": result.seconds,
            "tokens_per_s": result.tokens_per_second,
        }
    one = report["one_at_a_time"]["tokens_per_s"]
    report["speedup"] = report["batched"]["tokens_per_s"] / one if one > 0 else 0.0
    return report


def write_throughput(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write a :func:`measure_throughput` report to ``{out_dir}/throughput.json`` atomically."""
    return atomic_write_json(Path(out_dir) / THROUGHPUT_FILE, report)


def evaluate_model(
    model_path: str | Path,
    benchmarks: Sequence[LoadedBenchmark],
    protocol: EvalProtocol,
    out_dir: str | Path,
    *,
    force: bool = False,
    device: str = "cpu",
    throughput_prompts: int = 16,
    throughput_tokens: int = 64,
    show_progress: bool = True,
    timings_dir: str | Path | None = None,
) -> EvaluationSummary:
    """Evaluate one checkpoint on several benchmarks × ``protocol.seeds``; resume finished benchmarks.

    The model is loaded only when at least one benchmark has to be computed. Then a throughput probe
    (:func:`measure_throughput`: batched vs one prompt at a time) runs with ``min(max_new_tokens,
    throughput_tokens)`` new tokens on the ``throughput_prompts`` prompts of the computed benchmarks around the
    median prompt length (:func:`median_length_window`), and is written to ``{timings_dir}/throughput.json``.

    Args:
        model_path: checkpoint folder, ``.gguf`` file, ``"embedded"`` or a cached hub name.
        benchmarks: loaded benchmarks (see :func:`~switch_core.evaluation.benchmarks.read_benchmark`).
        protocol: decoding and scoring settings; the model is loaded in ``protocol.dtype``.
        out_dir: the model's evaluation folder; results go to ``{out_dir}/{benchmark}/``.
        force: recompute benchmarks whose results are up to date.
        device: where the model runs (``"cpu"``, ``"cuda"``...).
        throughput_prompts: prompts of the throughput probe; 0 = no probe.
        throughput_tokens: new-token cap of the probe.
        show_progress: tqdm bars over generation batches.
        timings_dir: the timings folder (``throughput.json``, ``{benchmark}/timings.json``); default ``out_dir``.

    Returns:
        An :class:`EvaluationSummary`.

    Raises:
        switch_core.models.loading.ModelLoadError: the model cannot be loaded.
        switch_core.data.prompts.PromptFormatError, switch_core.data.tokenize.EmptyExampleError: see
            :func:`evaluate_benchmark`.
    """
    from tqdm.auto import tqdm

    from switch_core.models.loading import load_causal_lm, load_tokenizer, resolve_model_source

    source = resolve_model_source(model_path)
    fingerprint_path = Path(source.name_or_path) / source.gguf_file if source.gguf_file else source.name_or_path
    model_fp = checkpoint_fingerprint(fingerprint_path)
    planned = plan_benchmarks(benchmarks, protocol, model_fp, out_dir, force=force)
    todo = [p for p in planned if p.existing is None]
    outcomes: dict[str, BenchmarkOutcome] = {
        p.loaded.spec.name: BenchmarkOutcome(p.loaded.spec.name, p.existing, True, p.out_dir)
        for p in planned
        if p.existing is not None
    }
    throughput = None
    if todo:
        model = load_causal_lm(source.name_or_path, gguf_file=source.gguf_file, dtype=protocol.dtype, device=device)
        tokenizer = load_tokenizer(source.name_or_path, gguf_file=source.gguf_file)
        for item in todo:
            total = len(item.loaded.records) * len(protocol.seeds)
            with tqdm(total=total, desc=item.loaded.spec.name, unit="prompt", disable=not show_progress) as bar:
                metrics = evaluate_benchmark(
                    model, tokenizer, item.loaded, protocol, item.out_dir, model_path=str(model_path),
                    model_fp=model_fp, progress=bar.update,
                    timings_dir=Path(timings_dir) / item.loaded.spec.name if timings_dir else None,
                )
            outcomes[item.loaded.spec.name] = BenchmarkOutcome(item.loaded.spec.name, metrics, False, item.out_dir)
        if throughput_prompts > 0:
            records = [r for item in todo for r in item.loaded.records]
            prompts = [format_prompt(r, style=protocol.prompt_style, tokenizer=tokenizer) for r in records]
            prompts = median_length_window(prompts, tokenizer, throughput_prompts)
            throughput = measure_throughput(
                model, tokenizer, prompts, protocol, max_new_tokens=min(protocol.max_new_tokens, throughput_tokens)
            )
            write_throughput(throughput, timings_dir or out_dir)
    return EvaluationSummary(str(model_path), [outcomes[p.loaded.spec.name] for p in planned], throughput)
