"""FIFO replay buffer of student-generated sequences (DistiLLM ``distillm/buffer.py``; docs/METHOD.md §6.4, §6.7).

The buffer keeps the most recent ``capacity`` sequences (older ones fall out first) and draws a training batch
uniformly at random *without replacement*, as DistiLLM's ``random.sample(replay_memory, k=batch_size)``. Draws use
an explicit ``torch.Generator`` so a resumed run draws the same batches. Sequences are kept unpadded on the CPU;
teacher logits are never stored (they would take ``T × V`` floats per sequence), so replayed batches run the teacher.
Each process keeps its own buffer, as each DistiLLM rank does: ``capacity`` is per process.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

from switch_core.training.batches import Sequence1D


class ReplayBuffer:
    """A bounded FIFO of :class:`Sequence1D`.

    Args:
        capacity: maximum number of sequences kept (DistiLLM ``--capacity``, default 1000).

    Raises:
        ValueError: ``capacity < 1``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[Sequence1D] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """True once ``capacity`` sequences are held."""
        return len(self._items) >= self.capacity

    def push(self, sequences: Iterable[Sequence1D]) -> None:
        """Append sequences (moved to the CPU); the oldest are dropped beyond ``capacity``."""
        for seq in sequences:
            self._items.append(Sequence1D(seq.prompt_ids.detach().cpu(), seq.response_ids.detach().cpu()))

    def sample(self, count: int, generator: torch.Generator) -> list[Sequence1D]:
        """Draw ``count`` distinct sequences uniformly at random.

        Args:
            count: number of sequences, ``1 <= count <= len(self)``.
            generator: CPU generator that decides the draw.

        Returns:
            The drawn sequences, in draw order.

        Raises:
            ValueError: ``count`` out of range.
        """
        if not 1 <= count <= len(self._items):
            raise ValueError(f"cannot draw {count} sequences from a replay buffer holding {len(self._items)}")
        order = torch.randperm(len(self._items), generator=generator)[:count]
        return [self._items[int(i)] for i in order]

    def state_dict(self) -> dict[str, Any]:
        """Contents for a checkpoint: ``{"capacity", "prompts", "responses"}`` (lists of 1-D long tensors)."""
        return {
            "capacity": self.capacity,
            "prompts": [s.prompt_ids for s in self._items],
            "responses": [s.response_ids for s in self._items],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the contents saved by :meth:`state_dict`.

        Raises:
            ValueError: the saved capacity differs from this buffer's.
        """
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"the saved replay buffer has capacity {state['capacity']}, this run uses {self.capacity}; "
                "resume with the same methods.<name>.replay_capacity"
            )
        self._items.clear()
        self.push(Sequence1D(p, r) for p, r in zip(state["prompts"], state["responses"], strict=True))
