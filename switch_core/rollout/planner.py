"""Which model drafts the next speculative chunk, and how long the draft is: the cheapest expected cost per token.

A chunk drafted by model D with k tokens costs k one-token forwards of D, one k-token forward of the other model V
and the selection work of k positions per row (the gate's JSD, the draws, the log-probabilities). Row r keeps
``E(α_r, k) = 1 + α_r + … + α_r^(k−1) = (1 − α_r^k) / (1 − α_r)`` tokens when each token D drafts for it survives
with probability α_r (the run of accepted drafts plus the token drawn where the draft failed; all k when every
draft survives). The planner picks ``argmin over (D, k) of cost(D, k) / Σ_r E(α_r, k)`` over the running rows:

    cost(D, k) = k·one_D + one_V + (k − 1)·extra_V + k·select

with ``one_M`` the cost of a one-token forward of model M, ``extra_M`` the cost each further token adds to a forward
of M, and ``select`` the selection cost of one position of every row. Acceptance is tracked per row because rows
part ways: under SWITCH's decaying threshold some rows are already written by the teacher while others are still
the student's, and a batch mean α would price a long student draft as if every row failed early (the rows still
with the student keep all k tokens, the others about one). The costs are a fixed model of the hardware, not
timings, so that a rollout is a deterministic function of its inputs (the chunking decides how float32 forwards
round, and training must resume bit for bit): a one-token forward costs in proportion to the model's parameter
count, a further token in the same forward a fraction of that which grows with the batch rows
(:data:`EXTRA_TOKEN_COST`: small on a GPU, where a forward of a few tokens is bound by reading the weights; a
sizeable fraction on a CPU, where arithmetic counts), and a position's selection a multiple of the vocabulary size
per row (:data:`SELECT_COST`). bench/bench_rollout.py measures the real costs and the ratio they predict. The
acceptance ``α_M`` of either model is measured per row at every kept position (does the chosen token equal the
token model M would have drawn there with the same uniform?), so the planner switches drafter when the other would
do better: early in a SWITCH response the student writes most tokens and drafts; late, where the teacher writes
nearly everything, the teacher's own tokens are the better draft unless its chunk forward is so cheap that the
student's drafts pay off even at low acceptance. At k = 1 a chunk costs one lockstep step.

The plan only changes how fast a rollout runs, never which tokens it emits (exactness is the engine's).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MODELS = ("student", "teacher")
EXTRA_TOKEN_COST: dict[str, float] = {"cpu": 0.06, "cuda": 0.002}
"""Cost of each further token of a forward, relative to a one-token forward, per batch row, by device type (other
types: cpu), capped at 1 (a forward bound by arithmetic): a forward of k tokens for n rows does n·k tokens of work,
which costs little beside reading the weights while n·k is small. Measured with bench/bench_rollout.py on the
embedded pair at batch 8 on 1-2 CPU cores: 0.13-0.27 (teacher) to 0.16-0.5 (student) per token, 0.02-0.06 per token
and row. The upper end plans best: the cost model leaves out that long drafts let rows drift apart (a row that keeps
fewer tokens lags and finishes in a thinner batch). With the bench's measured forward costs, the chunks planned at
batch 8 and a 50% teacher share cost 0.82 of lockstep with 0.04, 0.78 with 0.06, 0.77 with 0.08 and 0.78 with 0.12
(at a 20% share 0.68 / 0.66 with 0.04 / 0.08, at 80% 0.89 / 0.91; at batch 1 and 50% 0.68 / 0.69)."""
SELECT_COST: dict[str, float] = {"cpu": 17.0, "cuda": 2.0}
"""Cost of selecting one position of one row (the gate's JSD, the draws, the log-probabilities: a few dozen passes
over the vocabulary), per vocabulary entry, in the unit of the forward costs (one parameter of a one-token
forward), by device type (other types: cpu). CPU: measured with bench/bench_rollout.py on the embedded pair at batch
8 on 2 cores (selection about 0.65 ms per row and position against 105 ms for a teacher decode step). CUDA: a guess
(both are memory-bound there)."""
_RECENT = 0.5  # weight of the last chunk in the running acceptance rates


def expected_tokens(acceptance: float, k: int) -> float:
    """``E(k) = Σ_{j<k} α^j``: tokens a row keeps from a k-token draft whose tokens survive with probability α."""
    return float(sum(acceptance**j for j in range(k)))


def plan_chunk(
    acceptance: dict[str, Sequence[float]], one: dict[str, float], extra: dict[str, float], select: float,
    max_draft_tokens: int,
) -> tuple[str, int]:
    """``(drafter, k)`` minimising the expected cost per kept token (module docstring).

    Args:
        acceptance: per model name (``student`` / ``teacher``), α of each running row, in [0, 1] (at least one row).
        one: cost of a one-token forward per model.
        extra: cost each further token adds to a forward, per model.
        select: selection cost of one position of all the rows.
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
            per_token = cost / sum(expected_tokens(alpha, k) for alpha in acceptance[drafter])
            if best is None or per_token < best[0] * (1 - 1e-9):
                best = (per_token, drafter, k)
    assert best is not None
    return best[1], best[2]


@dataclass
class ChunkPlanner:
    """The cost model of both models and running per-row acceptance rates; :meth:`next` plans the next chunk.

    Attributes:
        prior_share: teacher share expected from the strategy before any decision (the initial acceptance of the
            teacher's drafts; the student's is ``1 − prior_share``).
        max_draft_tokens: largest k.
        one: cost of a one-token forward per model (any unit).
        extra_per_row: cost each further token adds to a forward, relative to ``one`` and per batch row (the
            relative cost is capped at 1).
        select_per_row: selection cost of one position of one row, in the unit of ``one``.
        rows: rows of the compute batch.
        acceptance: per model, α of each compute row.
    """

    prior_share: float
    max_draft_tokens: int
    one: dict[str, float]
    extra_per_row: float
    select_per_row: float
    rows: int
    acceptance: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        start = {"student": 1.0 - self.prior_share, "teacher": self.prior_share}
        self.acceptance = {model: [start[model]] * self.rows for model in MODELS}

    @classmethod
    def for_models(cls, prior_share: float, max_draft_tokens: int, parameters: dict[str, int], vocab_size: int,
                   rows: int, device_type: str) -> ChunkPlanner:
        """A planner for ``rows`` rows whose one-token forward costs the model's parameter count, each further
        token :data:`EXTRA_TOKEN_COST` of that per row, and the selection of a row's position :data:`SELECT_COST`
        per vocabulary entry, on ``device_type``."""
        one = {model: float(max(parameters[model], 1)) for model in MODELS}
        extra = EXTRA_TOKEN_COST.get(device_type, EXTRA_TOKEN_COST["cpu"])
        select = SELECT_COST.get(device_type, SELECT_COST["cpu"]) * vocab_size
        return cls(prior_share, max_draft_tokens, one, extra, select, rows)

    def observe_acceptance(self, model: str, matched: Sequence[int], positions: Sequence[int]) -> None:
        """Per compute row: at ``positions[r]`` kept positions, the chosen token equalled ``model``'s own draw
        ``matched[r]`` times (rows with no kept position keep their rate)."""
        rates = self.acceptance[model]
        for row, (hits, count) in enumerate(zip(matched, positions, strict=True)):
            if count > 0:
                rates[row] = (1 - _RECENT) * rates[row] + _RECENT * hits / count

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Keep only the compute rows ``rows`` (in this order), as the engine drops finished rows."""
        self.acceptance = {model: [rates[r] for r in rows] for model, rates in self.acceptance.items()}
        self.rows = len(rows)

    def next(self, running: Sequence[bool]) -> tuple[str, int]:
        """``(drafter, k)`` for the next chunk; ``running`` marks the compute rows still decoding (the others are
        computed along but keep nothing)."""
        rows = len(running)
        ratio = min(1.0, self.extra_per_row * rows)
        extra = {model: ratio * self.one[model] for model in MODELS}
        acceptance = {model: [a for a, on in zip(rates, running, strict=True) if on]
                      for model, rates in self.acceptance.items()}
        return plan_chunk(acceptance, self.one, extra, self.select_per_row * rows, self.max_draft_tokens)
