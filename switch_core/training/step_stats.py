"""The statistics of one optimizer step, with names: summed over processes in one all-reduce, turned into metrics.

Every field is an additive sum (over this process's sequences or tokens), so the global value is the sum over
processes; :meth:`StepSums.reduced` packs the fields into one float64 tensor for a single collective and unpacks
them by name.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from switch_core.training.policy_gradient import ReduceSum


@dataclass(frozen=True)
class StepSums:
    """Additive sums of one optimizer step.

    Attributes:
        loss_sum: sum of the per-token loss over the batch's response tokens (nats).
        rollout_tokens: response tokens of the step's fresh rollout (0 without one).
        teacher_tokens: of those, tokens the teacher chose (SWITCH share = teacher_tokens / rollout_tokens).
        rollout_seconds: seconds spent rolling out (summed over processes).
        rollout_sequences: rows of the step's fresh rollout.
        stopped_sequences, stopped_tokens: of those, the rows that ended with a stop token, and their response tokens.
        teacher_stop_prob_sum, student_stop_prob_sum: Σ over the stopped rows of the teacher's / student's probability
            of the stop token where the row stopped (:func:`switch_core.training.stop_tokens.stop_statistics`).
        reward_sum, return_sum, return_sq_sum, weight_sum: MiniLLM's rollout sums over its response tokens: rewards,
            returns before whitening and their squares, importance weights (0 on other steps).
        pg, reg, clipped: MiniLLM's loss terms summed over the trained tokens: the clipped policy loss, the
            single-step KL, the count of clipped tokens (0 for other methods).
    """

    loss_sum: float = 0.0
    rollout_tokens: float = 0.0
    teacher_tokens: float = 0.0
    rollout_seconds: float = 0.0
    rollout_sequences: float = 0.0
    stopped_sequences: float = 0.0
    stopped_tokens: float = 0.0
    teacher_stop_prob_sum: float = 0.0
    student_stop_prob_sum: float = 0.0
    reward_sum: float = 0.0
    return_sum: float = 0.0
    return_sq_sum: float = 0.0
    weight_sum: float = 0.0
    pg: float = 0.0
    reg: float = 0.0
    clipped: float = 0.0

    @classmethod
    def collect(cls, loss_sum: float, source_stats: dict[str, float], terms: dict[str, Any]) -> StepSums:
        """The step's sums from its loss sum, the batch source's counters
        (:class:`~switch_core.training.sources.SourceOutput` ``stats``; other keys ignored) and the loss terms
        (:func:`~switch_core.training.objective.batch_loss` ``terms``: tensors or floats)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: float(v) for k, v in (source_stats | terms).items() if k in names and k != "loss_sum"}
        return cls(loss_sum=float(loss_sum), **values)

    def reduced(self, reduce_sum: ReduceSum, device: torch.device | str = "cpu") -> StepSums:
        """The sums over all processes (one collective of a float64 tensor, one entry per field)."""
        names = [f.name for f in dataclasses.fields(self)]
        packed = torch.tensor([getattr(self, n) for n in names], dtype=torch.float64, device=device)
        return StepSums(**dict(zip(names, reduce_sum(packed).tolist(), strict=True)))


def rollout_metrics(sums: StepSums, *, batch_size: int, processes: int, with_share: bool) -> dict[str, float]:
    """``rollout/*`` metrics of a step with a fresh rollout (``{}`` without one).

    ``rollout/mean_length``: response tokens per sequence; ``rollout/stop_rate``: share of the rollout's rows that
    ended with a stop token; on steps where some did, ``rollout/stopped_length`` (their mean response length, stop
    token included) and ``rollout/teacher_stop_prob`` / ``rollout/student_stop_prob`` (the mean over those rows of
    p(stop) / q(stop) where they stopped, temperature 1; docs/METHOD.md §6.10).

    Args:
        sums: the global sums of the step.
        batch_size: global sequences per step (the mean length divides by it).
        processes: process count (rollout seconds are summed over processes; the metric is their mean).
        with_share: include ``rollout/teacher_share`` (strategies that can choose the teacher).
    """
    if sums.rollout_tokens <= 0:
        return {}
    metrics = {"rollout/mean_length": sums.rollout_tokens / batch_size, "rollout/seconds": sums.rollout_seconds / processes}
    if with_share:
        metrics["rollout/teacher_share"] = sums.teacher_tokens / sums.rollout_tokens
    if sums.rollout_sequences > 0:
        metrics["rollout/stop_rate"] = sums.stopped_sequences / sums.rollout_sequences
    if sums.stopped_sequences > 0:
        metrics |= {
            "rollout/stopped_length": sums.stopped_tokens / sums.stopped_sequences,
            "rollout/teacher_stop_prob": sums.teacher_stop_prob_sum / sums.stopped_sequences,
            "rollout/student_stop_prob": sums.student_stop_prob_sum / sums.stopped_sequences,
        }
    return metrics


def policy_metrics(sums: StepSums, tokens: float, with_reg: bool) -> dict[str, float]:
    """MiniLLM's step metrics from global sums: token means of the PPO loss, of the single-step KL and of the clipped
    tokens over the ``tokens`` trained response tokens; on rollout steps the rollout's reward mean, return mean / std
    before whitening and importance-weight mean."""
    metrics = {"train/pg_loss": sums.pg / tokens, "train/clip_fraction": sums.clipped / tokens}
    if with_reg:
        metrics["train/reg_loss"] = sums.reg / tokens
    rolled = sums.rollout_tokens
    if rolled > 0:
        mean = sums.return_sum / rolled
        metrics.update({
            "rollout/reward_mean": sums.reward_sum / rolled, "rollout/return_mean": mean,
            "rollout/return_std": math.sqrt(max(sums.return_sq_sum / rolled - mean * mean, 0.0)),
            "rollout/importance_weight_mean": sums.weight_sum / rolled,
        })
    return metrics


LAST_VALUE = ("train/lr", "train/epoch", "train/phi")
"""Metrics a logging window reports by their last value, not their mean."""


def mean_metrics(window: list[dict[str, float]]) -> dict[str, float]:
    """Each metric over the steps of a logging window: the mean (``source/*`` become the fraction of steps that
    used that source; rollout metrics average over the steps that had rollouts), the last value for lr, epoch, φ."""
    keys = sorted({k for m in window for k in m})
    out = {}
    for key in keys:
        if key in LAST_VALUE:
            out[key] = window[-1][key]
        elif key.startswith("source/"):
            out[key] = sum(m.get(key, 0.0) for m in window) / len(window)
        else:
            values = [m[key] for m in window if key in m]
            out[key] = sum(values) / len(values)
    return out


def is_better(select_by: str, value: float, best: float | None) -> bool:
    """Whether dev ``value`` beats ``best`` (None: nothing yet): higher ROUGE-L, or lower loss; never a NaN/inf."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if select_by == "rouge_l" else value < best
