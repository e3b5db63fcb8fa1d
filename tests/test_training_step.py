"""The step's pieces on hand-made values: named sums and their one all-reduce, the metrics built from them, the
per-process share of a step's examples."""
from __future__ import annotations

import math

import pytest
import torch

from switch_core.config import OptimConfig
from switch_core.data.tokenize import TrainExample
from switch_core.training import TrainingSetupError
from switch_core.training.step import StepLayout, step_examples
from switch_core.training.step_stats import StepSums, mean_metrics, policy_metrics, rollout_metrics


def test_collect_takes_the_named_counters_and_terms() -> None:
    sums = StepSums.collect(
        6.0, {"rollout_tokens": 10.0, "teacher_tokens": 4.0, "rollout_sequences": 2.0, "not_a_sum": 7.0},
        {"pg": torch.tensor(1.5), "clipped": 2.0},
    )
    assert sums == StepSums(loss_sum=6.0, rollout_tokens=10.0, teacher_tokens=4.0, rollout_sequences=2.0, pg=1.5,
                            clipped=2.0)


def test_reduced_is_one_collective_unpacked_by_name() -> None:
    calls = []

    def two_processes(t: torch.Tensor) -> torch.Tensor:  # both processes hold the same sums
        calls.append(t.dtype)
        return t * 2

    sums = StepSums(loss_sum=1.0, rollout_tokens=3.0, weight_sum=0.25).reduced(two_processes)
    assert calls == [torch.float64]
    assert sums == StepSums(loss_sum=2.0, rollout_tokens=6.0, weight_sum=0.5)


def test_rollout_and_policy_metrics_by_hand() -> None:
    sums = StepSums(rollout_tokens=20.0, teacher_tokens=5.0, rollout_seconds=3.0, reward_sum=10.0, return_sum=40.0,
                    return_sq_sum=100.0, weight_sum=18.0, pg=4.0, reg=2.0, clipped=1.0)
    assert rollout_metrics(sums, batch_size=4, processes=2, with_share=True) == {
        "rollout/mean_length": 5.0, "rollout/seconds": 1.5, "rollout/teacher_share": 0.25,
    }
    assert "rollout/teacher_share" not in rollout_metrics(sums, batch_size=4, processes=2, with_share=False)
    assert rollout_metrics(StepSums(), batch_size=4, processes=1, with_share=True) == {}
    # 4 rows, 1 ended with the stop token after 6 tokens, where p(stop) = 0.001 and q(stop) = 0.125
    stops = StepSums(rollout_tokens=20.0, rollout_sequences=4.0, stopped_sequences=1.0, stopped_tokens=6.0,
                     teacher_stop_prob_sum=0.001, student_stop_prob_sum=0.125)
    assert rollout_metrics(stops, batch_size=4, processes=1, with_share=False) == {
        "rollout/mean_length": 5.0, "rollout/seconds": 0.0, "rollout/stop_rate": 0.25, "rollout/stopped_length": 6.0,
        "rollout/teacher_stop_prob": 0.001, "rollout/student_stop_prob": 0.125,
    }
    none_stopped = rollout_metrics(StepSums(rollout_tokens=20.0, rollout_sequences=4.0), batch_size=4, processes=1,
                                   with_share=False)
    assert none_stopped["rollout/stop_rate"] == 0.0 and "rollout/teacher_stop_prob" not in none_stopped
    metrics = policy_metrics(sums, tokens=8.0, with_reg=True)
    assert metrics["train/pg_loss"] == 0.5 and metrics["train/reg_loss"] == 0.25
    assert metrics["train/clip_fraction"] == 0.125 and metrics["rollout/reward_mean"] == 0.5
    assert metrics["rollout/return_mean"] == 2.0 and metrics["rollout/importance_weight_mean"] == 0.9
    assert metrics["rollout/return_std"] == pytest.approx(math.sqrt(100.0 / 20.0 - 4.0))


def test_mean_metrics_over_a_window() -> None:
    window = [{"train/loss": 1.0, "train/lr": 0.1, "source/rollout": 1.0, "rollout/mean_length": 4.0},
              {"train/loss": 3.0, "train/lr": 0.2, "source/ground_truth": 1.0}]
    assert mean_metrics(window) == {"rollout/mean_length": 4.0, "source/ground_truth": 0.5, "source/rollout": 0.5,
                                    "train/loss": 2.0, "train/lr": 0.2}


def test_processes_split_the_step_batch() -> None:
    train = [TrainExample(id=str(i), input_ids=[i, i], labels=[-100, i], prompt_length=1) for i in range(10)]
    optim = OptimConfig(batch_size=4, micro_batch_size=2)
    one = StepLayout.of(optim, 1, len(train))
    two = StepLayout.of(optim, 2, len(train))
    assert (one.local_size, one.steps_per_epoch, two.local_size) == (4, 2, 2)
    for step in range(4):
        whole = step_examples(train, step, one, seed=3, batch_size=4, rank=0)
        parts = [step_examples(train, step, two, seed=3, batch_size=4, rank=r) for r in (0, 1)]
        assert parts[0].examples + parts[1].examples == whole.examples
        assert (parts[0].offset, parts[1].offset, whole.offset) == (0, 2, 0)
    epoch = [e.prompt_ids[0] for s in range(2) for e in step_examples(train, s, one, seed=3, batch_size=4, rank=0).examples]
    assert len(set(epoch)) == 8  # an epoch draws without replacement
    with pytest.raises(TrainingSetupError, match="divisible by the 3 processes"):
        StepLayout.of(optim, 3, len(train))
