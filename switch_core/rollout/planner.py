"""Which model drafts the next speculative chunk, and how long the draft is: the cheapest expected cost per token.

A chunk drafted by model D with k tokens costs k one-token forwards of D, one k-token forward of the other model V
and the selection work of k positions; it keeps ``E(k) = 1 + α + … + α^(k−1) = (1 − α^k) / (1 − α)`` tokens per row
when each drafted token survives with probability α (the run of accepted drafts plus the token drawn where the
draft failed; all k when every draft survives). The planner picks ``argmin over (D, k) of cost(D, k) / E_D(k)``:

    cost(D, k) = k·one_D + one_V + (k − 1)·extra_V + k·select

with ``one_M`` the cost of a one-token forward of model M, ``extra_M`` the cost each further token adds to a forward
of M, and ``select`` the selection cost per position. The costs are a fixed model of the hardware, not timings, so
that a rollout is a deterministic function of its inputs (the chunking decides how float32 forwards round, and
training must resume bit for bit): a one-token forward costs in proportion to the model's parameter count, and a
further token in the same forward a fraction of that which grows with the batch rows (:data:`EXTRA_TOKEN_COST`:
small on a GPU, where a forward of a few tokens is bound by reading the weights; a sizeable fraction on a CPU, where
arithmetic counts). bench/bench_rollout.py measures
the real costs and the ratio they predict. The acceptance ``α_M`` of either model is measured at every kept position
(does the chosen token equal the token model M would have drawn there with the same uniform?), so the planner
switches drafter when the other would do better: early in a SWITCH response the student writes most tokens and
drafts; late, where the teacher writes nearly everything, the teacher's own tokens are the better draft unless its
chunk forward is so cheap that the student's drafts pay off even at low acceptance. At k = 1 a chunk costs one
lockstep step.

The plan only changes how fast a rollout runs, never which tokens it emits (exactness is the engine's).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MODELS = ("student", "teacher")
EXTRA_TOKEN_COST: dict[str, float] = {"cpu": 0.04, "cuda": 0.002}
"""Cost of each further token of a forward, relative to a one-token forward, per batch row, by device type (other
types: cpu), capped at 1 (a forward bound by arithmetic): a forward of k tokens for n rows does n·k tokens of work,
which costs little beside reading the weights while n·k is small. Measured with bench/bench_rollout.py on the
embedded pair at batch 8 on 2 CPU cores: 0.27 (teacher) to 0.5 (student) per token, 0.03-0.06 per token and row."""
_RECENT = 0.5  # weight of the last chunk in the running acceptance rates


def expected_tokens(acceptance: float, k: int) -> float:
    """``E(k) = Σ_{j<k} α^j``: tokens a row keeps from a k-token draft whose tokens survive with probability α."""
    return float(sum(acceptance**j for j in range(k)))


def plan_chunk(
    acceptance: dict[str, float], one: dict[str, float], extra: dict[str, float], select: float, max_draft_tokens: int
) -> tuple[str, int]:
    """``(drafter, k)`` minimising the expected seconds per kept token (module docstring).

    Args:
        acceptance: α per model name (``student`` / ``teacher``), in [0, 1].
        one: seconds of a one-token forward per model.
        extra: seconds each further token adds to a forward, per model.
        select: selection seconds per position.
        max_draft_tokens: largest k.

    Returns:
        The drafter's name and the draft length in ``[1, max_draft_tokens]``; ties go to the shorter draft and to
        the student.
    """
    best: tuple[float, str, int] | None = None
    for drafter in MODELS:
        verifier = "teacher" if drafter == "student" else "student"
        for k in range(1, max_draft_tokens + 1):
            cost = k * one[drafter] + one[verifier] + (k - 1) * extra[verifier] + k * select
            per_token = cost / expected_tokens(acceptance[drafter], k)
            if best is None or per_token < best[0] * (1 - 1e-9):
                best = (per_token, drafter, k)
    assert best is not None
    return best[1], best[2]


@dataclass
class ChunkPlanner:
    """The cost model of both models and running acceptance rates; :meth:`next` plans the next chunk.

    Attributes:
        prior_share: teacher share expected from the strategy before any decision (the initial acceptance of the
            teacher's drafts; the student's is ``1 − prior_share``).
        max_draft_tokens: largest k.
        one: cost of a one-token forward per model (any unit).
        extra_per_row: cost each further token adds to a forward, relative to ``one`` and per batch row (the
            relative cost is capped at 1).
    """

    prior_share: float
    max_draft_tokens: int
    one: dict[str, float]
    extra_per_row: float
    acceptance: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.acceptance = {"student": 1.0 - self.prior_share, "teacher": self.prior_share}

    @classmethod
    def for_models(cls, prior_share: float, max_draft_tokens: int, parameters: dict[str, int],
                   device_type: str) -> ChunkPlanner:
        """A planner whose one-token forward costs the model's parameter count and each further token
        :data:`EXTRA_TOKEN_COST` of that per row on ``device_type``."""
        one = {model: float(max(parameters[model], 1)) for model in MODELS}
        return cls(prior_share, max_draft_tokens, one, EXTRA_TOKEN_COST.get(device_type, EXTRA_TOKEN_COST["cpu"]))

    def observe_acceptance(self, model: str, matched: int, positions: int) -> None:
        """At ``positions`` kept positions, the chosen token equalled ``model``'s own draw ``matched`` times."""
        if positions > 0:
            self.acceptance[model] = (1 - _RECENT) * self.acceptance[model] + _RECENT * matched / positions

    def next(self, rows: int) -> tuple[str, int]:
        """``(drafter, k)`` for the next chunk of a compute batch of ``rows`` rows."""
        ratio = min(1.0, self.extra_per_row * rows)
        extra = {model: ratio * self.one[model] for model in MODELS}
        return plan_chunk(self.acceptance, self.one, extra, 0.0, self.max_draft_tokens)
