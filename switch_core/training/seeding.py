"""Stateless random streams derived from the training seed, so that a resumed run repeats every random choice.

Each random decision of the loop (data order of an epoch, the per-step batch-source draw, the rollout sampling of a
chunk of prompts, a replay-buffer draw, a pre-training corpus batch) gets its own ``torch.Generator`` seeded from
``(seed, stream, *keys)`` through NumPy's ``SeedSequence`` hash. Nothing depends on how many steps ran in this process, so resuming at step ``k``
draws exactly what an uninterrupted run draws at step ``k``; and keys name global positions, not ranks, so a
2-process run draws what a 1-process run draws for the same sequences.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """Independent random streams of the training loop."""

    DATA_ORDER = 1
    SOURCE_CHOICE = 2
    ROLLOUT = 3
    REPLAY = 4
    CALIBRATION = 5
    DEV_SUBSET = 6
    GLOBAL = 7
    LM_CORPUS = 8


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed that depends on ``seed``, ``stream`` and ``keys`` only.

    Raises:
        ValueError: a negative key (SeedSequence entropy must be non-negative).
    """
    entropy = [int(seed) % 2**63, int(stream), *(int(k) for k in keys)]
    if any(e < 0 for e in entropy):
        raise ValueError(f"seed keys must be >= 0, got {keys}")
    low, high = (int(x) for x in np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32))
    return low | (high & 0x7FFFFFFF) << 32


def generator(seed: int, stream: Stream, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, stream, *keys))
    return gen


def uniform(seed: int, stream: Stream, *keys: int) -> float:
    """One draw of U(0, 1) from the derived stream (the same on every process)."""
    return float(torch.rand((), generator=generator(seed, stream, *keys), dtype=torch.float64))
