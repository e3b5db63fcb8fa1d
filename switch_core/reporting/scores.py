"""Numbers of the reports, computed from per-seed values: scores (mean ± sample sd over generation seeds), averages
over benchmarks, ROUGE-L by reference-length bucket, comparisons against the seed sd, logged rollout-batch shares and
compute times.

A score is the mean and sample sd (ddof 1) over generation seeds (docs/METHOD.md §5.4–5.5); the average over
benchmarks is taken per seed first, so it has a seed sd too; ROUGE-L of a length bucket pooled over benchmarks is, per
seed, the example-weighted mean of the benchmarks' bucket means.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from switch_core.evaluation.benchmarks import BENCHMARKS
from switch_core.evaluation.metrics import mean_and_sd
from switch_core.reporting.references import TRAINED_STAGES


@dataclass(frozen=True)
class Score:
    """Mean and sample sd over generation seeds (sd NaN with fewer than two seeds)."""

    mean: float
    sd: float
    seeds: int

    def cell(self) -> str:
        """``"mean ± sd"`` with two decimals (``"mean"`` alone when there is no sd)."""
        return f"{self.mean:.2f}" if math.isnan(self.sd) else f"{self.mean:.2f} ± {self.sd:.2f}"


@dataclass(frozen=True)
class Comparison:
    """``a − b`` of two scores against their pooled seed sd ``sqrt((sd_a² + sd_b²) / 2)``.

    ``verdict``: ``"clear"`` when ``|diff| > 2·pooled``, ``"within seed noise"`` when ``|diff| <= pooled``,
    ``"small"`` in between, ``"no seed sd"`` when the pooled sd is 0 or unknown.
    """

    diff: float
    pooled_sd: float
    verdict: str

    def text(self) -> str:
        """``"+1.20 ROUGE-L, 2.4× the pooled seed sd 0.50: clear"``."""
        if self.verdict == "no seed sd":
            return f"{self.diff:+.2f} ROUGE-L (no seed sd to compare with)"
        return (f"{self.diff:+.2f} ROUGE-L, {abs(self.diff) / self.pooled_sd:.1f}× the pooled seed sd "
                f"{self.pooled_sd:.2f}: {self.verdict}")


def _score(values: Sequence[float]) -> Score:
    mean, sd = mean_and_sd(list(values))
    return Score(mean, sd if len(values) > 1 else math.nan, len(values))


def _per_seed(metrics: dict[str, Any], key: str) -> dict[int, float]:
    return {int(s["seed"]): float(s[key]) for s in metrics["per_seed"]}


def benchmark_scores(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], metric: str = "rouge_l"
                     ) -> dict[str, dict[str, Score]]:
    """``{model: {benchmark: Score}}`` of one metric (``rouge_l``, ``bleu`` or ``exact_match``, 0–100) over seeds.

    Args:
        evaluations: ``RunOutputs.evaluations``.
        metric: a per-seed key of metrics.json.
    """
    return {
        model: {bench: _score(list(_per_seed(m, metric).values())) for bench, m in benches.items()}
        for model, benches in evaluations.items()
    }


def average_scores(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], benchmarks: Sequence[str],
                   metric: str = "rouge_l") -> dict[str, Score]:
    """Average over ``benchmarks`` of a metric, per seed, then mean ± sd over seeds.

    Only models evaluated on every one of ``benchmarks`` get an average; the seeds are those all of its benchmarks
    share (the protocol's seeds).

    Returns:
        ``{model: Score}`` (models without every benchmark, or with no seed in common, are left out).
    """
    out: dict[str, Score] = {}
    for model, benches in evaluations.items():
        if not benchmarks or any(b not in benches for b in benchmarks):
            continue
        per_bench = [_per_seed(benches[b], metric) for b in benchmarks]
        seeds = sorted(set.intersection(*(set(p) for p in per_bench)))
        if seeds:
            out[model] = _score([sum(p[s] for p in per_bench) / len(per_bench) for s in seeds])
    return out


def bucket_low(label: str) -> int:
    """The lower bound of a reference-length bucket label (``"[51,inf)"`` -> 51), its sort key."""
    return int(label[1:].split(",")[0])


def bucket_scores(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], benchmarks: Sequence[str]
                  ) -> dict[str, dict[str, tuple[Score, int]]]:
    """ROUGE-L by reference-length bucket pooled over ``benchmarks``: ``{model: {bucket: (Score, n)}}``.

    Per seed, a bucket's pooled ROUGE-L is ``Σ_b n_b·r_b / Σ_b n_b`` over the benchmarks that have examples in it
    (``n_b`` examples of benchmark ``b`` in the bucket, ``r_b`` their mean ROUGE-L); then mean ± sd over the seeds all
    benchmarks share. Only models evaluated on every one of ``benchmarks`` are included. Buckets are sorted by length.
    """
    out: dict[str, dict[str, tuple[Score, int]]] = {}
    for model, benches in evaluations.items():
        if not benchmarks or any(b not in benches for b in benchmarks):
            continue
        seeds = sorted(set.intersection(*(set(_per_seed(benches[b], "rouge_l")) for b in benchmarks)))
        by_seed = {b: {int(s["seed"]): s["by_length"] for s in benches[b]["per_seed"]} for b in benchmarks}
        labels = sorted({lab for b in benchmarks for lab in by_seed[b][seeds[0]]} if seeds else set(), key=bucket_low)
        buckets: dict[str, tuple[Score, int]] = {}
        for label in labels:
            values = []
            for seed in seeds:
                cells = [by_seed[b][seed][label] for b in benchmarks if label in by_seed[b][seed]]
                n = sum(int(c["n"]) for c in cells)
                values.append(sum(int(c["n"]) * float(c["rouge_l"]) for c in cells) / n)
            n_total = sum(int(by_seed[b][seeds[0]][label]["n"]) for b in benchmarks if label in by_seed[b][seeds[0]])
            buckets[label] = (_score(values), n_total)
        out[model] = buckets
    return out


def rank_of(scores: Mapping[str, Score], name: str) -> tuple[int, int]:
    """``(rank, count)`` of ``name`` among ``scores`` by mean, 1 = highest (ties share the better rank)."""
    mine = scores[name].mean
    return 1 + sum(1 for s in scores.values() if s.mean > mine), len(scores)


def compare(a: Score, b: Score) -> Comparison:
    """``a − b`` against the pooled seed sd (see :class:`Comparison` for the verdict rule)."""
    diff = a.mean - b.mean
    pooled = math.sqrt((a.sd**2 + b.sd**2) / 2) if not (math.isnan(a.sd) or math.isnan(b.sd)) else math.nan
    if math.isnan(pooled) or pooled == 0:
        return Comparison(diff, pooled, "no seed sd")
    if abs(diff) > 2 * pooled:
        return Comparison(diff, pooled, "clear")
    return Comparison(diff, pooled, "within seed noise" if abs(diff) <= pooled else "small")


def has_per_seed(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], key: str) -> bool:
    """Whether every evaluation's per-seed rows carry ``key`` (older metrics files may lack some)."""
    return all(key in row for benches in evaluations.values() for m in benches.values() for row in m["per_seed"])


def benchmark_order(names: Iterable[str]) -> list[str]:
    """Benchmarks in registry order (:data:`~switch_core.evaluation.benchmarks.BENCHMARKS`), unregistered ones after,
    sorted."""
    present = list(dict.fromkeys(names))
    registered = [b for b in BENCHMARKS if b in present]
    return registered + sorted(b for b in present if b not in registered)


def results_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Wide numeric table: one row per model; ``<benchmark>_mean``, ``<benchmark>_sd`` per benchmark, ``average``.

    ``average`` is the mean over benchmarks of the ROUGE-L means, given only for models evaluated on every benchmark
    of the table (NaN otherwise).

    Args:
        metrics: :func:`~switch_core.reporting.loading.collect_metrics` output.

    Returns:
        DataFrame indexed by model (input order).
    """
    benchmarks = benchmark_order(metrics["benchmark"])
    models = list(dict.fromkeys(metrics["model"]))
    table = pd.DataFrame(index=pd.Index(models, name="model"))
    for bench in benchmarks:
        part = metrics[metrics["benchmark"] == bench].set_index("model")
        table[f"{bench}_mean"] = part["rouge_l_mean"].reindex(models)
        table[f"{bench}_sd"] = part["rouge_l_sd"].reindex(models)
    means = table[[f"{b}_mean" for b in benchmarks]]
    table["average"] = means.mean(axis=1).where(means.notna().all(axis=1))
    return table


def compact_metrics(metrics: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {benchmark: {rouge_l, rouge_l_sd, bleu, exact_match}}}`` (0–100 scale), the file behind
    ``dvc metrics show`` / ``dvc metrics diff``.

    Args:
        metrics: :func:`~switch_core.reporting.loading.collect_metrics` output.
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in metrics.itertuples():
        out.setdefault(row.model, {})[row.benchmark] = {
            "rouge_l": round(float(row.rouge_l_mean), 4), "rouge_l_sd": round(float(row.rouge_l_sd), 4),
            "bleu": round(float(row.bleu_mean), 4), "exact_match": round(float(row.exact_match_mean), 4),
        }
    return out


def rollout_batch_share(log: pd.DataFrame | None) -> float | None:
    """Share of a run's logged optimizer steps whose batch was a rollout (fresh, stored or replayed, or MiniLLM's policy
    rollouts) rather than dataset examples, from the per-window ``source/*`` fractions of its training log, weighted
    by the window's number of steps. None when the log has no ``source/*`` metric.

    Returns:
        A fraction in [0, 1].
    """
    if log is None or log.empty:
        return None
    sources = log[log["metric"].str.startswith("source/")]
    if sources.empty:
        return None
    steps = sorted(int(s) for s in sources["step"].unique())
    windows = dict(zip(steps, [b - a for a, b in zip([0, *steps], steps)]))
    examples = sources[sources["metric"] == "source/ground_truth"].set_index("step")["value"]
    total = sum(windows.values())
    return sum(w * (1.0 - float(examples.get(step, 0.0))) for step, w in windows.items()) / total


def training_stages(trained: Sequence[str], runs: Sequence[str]) -> list[tuple[str, str]]:
    """``[(name, label)]`` of the training stages: the ``trained`` reference models, then the distillation ``runs``."""
    return [(n, label) for n, label in TRAINED_STAGES if n in trained] + [(r, f"distill `{r}`") for r in runs]


def training_seconds(summaries: Mapping[str, dict[str, Any]], trained: Sequence[str], runs: Sequence[str]) -> float:
    """Wall seconds summed over the finished training stages (``trained`` and ``runs``) that recorded them."""
    return sum(float(summaries[n]["wall_seconds"]) for n, _ in training_stages(trained, runs)
               if summaries.get(n, {}).get("wall_seconds") is not None)


def seqkd_seconds(meta: Mapping[str, Any] | None) -> float | None:
    """Seconds the teacher spent generating the SeqKD data (generated tokens / tokens per second of its meta.json),
    or None when there is no SeqKD data or no rate."""
    if not meta or not meta.get("tokens_per_second"):
        return None
    return float(meta["generated_tokens"]) / float(meta["tokens_per_second"])


def generation_seconds(evaluations: Mapping[str, Mapping[str, dict[str, Any]]], model: str) -> tuple[float, float]:
    """(seconds, generated tokens) of a model's benchmark generations, summed over benchmarks and seeds."""
    benches = evaluations.get(model, {}).values()
    return (sum(float(m.get("throughput", {}).get("seconds", 0.0)) for m in benches),
            sum(float(m.get("throughput", {}).get("generated_tokens", 0.0)) for m in benches))
