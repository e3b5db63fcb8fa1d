"""Which model drafts the next speculative chunk, and how long the draft is: the cheapest expected cost per token.

A chunk drafted by model D with k tokens costs k one-token forwards of D, one k-token forward of the other model V
and the selection work of k positions; it keeps ``E(k) = 1 + α + … + α^(k−1) = (1 − α^k) / (1 − α)`` tokens per row
when each drafted token survives with probability α (the run of accepted drafts plus the token drawn where the
draft failed; all k when every draft survives). The planner picks ``argmin over (D, k) of cost(D, k) / E_D(k)``:

    cost(D, k) = k·one_D + one_V + (k − 1)·extra_V + k·select

with ``one_M`` the seconds of a one-token forward of model M, ``extra_M`` the seconds each further token adds to a
forward of M (small where a forward is bound by reading the weights, as on a GPU; close to ``one_M`` where it is bound
by arithmetic), and ``select`` the selection seconds per position. All are running averages of measured times; the
acceptance ``α_M`` of either model is measured at every kept position (does the chosen token equal the token model M
would have drawn there with the same uniform?), so the planner can switch drafter when the other would do better:
early in a SWITCH response the student writes most tokens and drafts; late, where the teacher writes nearly
everything, the teacher's own tokens are the better draft unless the teacher's chunk forward is so cheap that the
student's drafts pay off even at low acceptance. At k = 1 a chunk costs one lockstep step.

The plan only changes how fast a rollout runs, never which tokens it emits (exactness is the engine's).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MODELS = ("student", "teacher")
_NEW = 0.3  # weight of a new timing in the running averages
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
    """Running averages of forward costs and acceptance rates; :meth:`next` plans the next chunk.

    Until both models' one-token forwards have been timed, chunks have one token (a lockstep step) and the drafter is
    the model expected to write more tokens (``prior_share``: the teacher share expected from the strategy).
    """

    prior_share: float
    max_draft_tokens: int
    acceptance: dict[str, float] = field(default_factory=dict)
    one: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    select: float = 0.0

    def __post_init__(self) -> None:
        self.acceptance = {"student": 1.0 - self.prior_share, "teacher": self.prior_share}

    def observe_forward(self, model: str, tokens: int, seconds: float) -> None:
        """A forward of ``model`` over ``tokens`` new tokens per row took ``seconds``."""
        if tokens == 1:
            self.one[model] = _average(self.one.get(model), seconds, _NEW)
        elif model in self.one:
            per_token = max(0.0, seconds - self.one[model]) / (tokens - 1)
            self.extra[model] = _average(self.extra.get(model), per_token, _NEW)
        elif model not in self.extra:  # the prompt prefill: an upper bound until a chunk forward is timed
            self.extra[model] = seconds / tokens

    def observe_select(self, positions: int, seconds: float) -> None:
        """Selecting ``positions`` positions per row took ``seconds``."""
        self.select = _average(self.select or None, seconds / max(positions, 1), _NEW)

    def observe_acceptance(self, model: str, matched: int, positions: int) -> None:
        """At ``positions`` kept positions, the chosen token equalled ``model``'s own draw ``matched`` times."""
        if positions > 0:
            self.acceptance[model] = _average(self.acceptance[model], matched / positions, _RECENT)

    def next(self) -> tuple[str, int]:
        """``(drafter, k)`` for the next chunk."""
        if any(model not in self.one for model in MODELS):
            return ("teacher" if self.acceptance["teacher"] > self.acceptance["student"] else "student"), 1
        extra = {model: self.extra.get(model, self.one[model]) for model in MODELS}
        return plan_chunk(self.acceptance, self.one, extra, self.select, self.max_draft_tokens)


def _average(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1.0 - weight) * old + weight * new
