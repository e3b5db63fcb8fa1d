"""The data layout of one optimizer step (used by :mod:`.loop`).

A step trains on ``optim.batch_size`` sequences: position ``p`` of epoch ``e`` takes the examples
``order_e[p·B : (p+1)·B]`` of the seeded per-epoch permutation ``order_e``; process ``r`` of ``W`` takes the slice
``[r·B/W, (r+1)·B/W)`` of it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from switch_core.config import OptimConfig
from switch_core.data.tokenize import TrainExample
from switch_core.training import seeding
from switch_core.training.job import TrainingSetupError


@dataclass(frozen=True)
class StepLayout:
    """How the training set splits into steps and processes.

    Attributes:
        local_size: sequences per process per step (``batch_size / processes``).
        steps_per_epoch: full global batches per epoch (a last partial batch is dropped).
    """

    local_size: int
    steps_per_epoch: int

    @classmethod
    def of(cls, optim: OptimConfig, processes: int, n_train: int) -> StepLayout:
        """The layout of ``n_train`` examples on ``processes`` processes.

        Raises:
            TrainingSetupError: ``optim.batch_size`` not divisible by the process count, or fewer examples than one
                batch.
        """
        if optim.batch_size % processes:
            raise TrainingSetupError(
                f"{optim.key}.batch_size={optim.batch_size} must be divisible by the {processes} processes"
            )
        steps_per_epoch = n_train // optim.batch_size
        if steps_per_epoch == 0:
            raise TrainingSetupError(
                f"{n_train} training examples are fewer than one batch ({optim.key}.batch_size={optim.batch_size})"
            )
        return cls(optim.batch_size // processes, steps_per_epoch)


@dataclass(frozen=True)
class StepExamples:
    """This process's examples of one step.

    Attributes:
        examples: this process's share of the step's global batch.
        offset: index of ``examples[0]`` in the global batch (keys the rollout random streams).
        start: index of ``examples[0]`` in the epoch's order (keys MiniLLM's pre-training batch).
    """

    examples: list[TrainExample]
    offset: int
    start: int


def step_examples(
    train: Sequence[TrainExample], step: int, layout: StepLayout, *, seed: int, batch_size: int, rank: int
) -> StepExamples:
    """The examples process ``rank`` trains on at 0-based optimizer step ``step`` (module docstring)."""
    epoch, position = divmod(step, layout.steps_per_epoch)
    order = torch.randperm(len(train), generator=seeding.generator(seed, seeding.Stream.DATA_ORDER, epoch)).tolist()
    start = position * batch_size + rank * layout.local_size
    return StepExamples([train[i] for i in order[start : start + layout.local_size]], start - position * batch_size, start)

