"""The rule-based reading of the paper's ablation claims (docs/METHOD.md §1.1 items 4–5, §2; issue 16), in the
style of the results reading (:mod:`switch_core.reporting.reading`): each claim is a fixed set of comparisons of
average ROUGE-L against the pooled seed sd (:func:`~switch_core.reporting.scores.compare`: "clear" = a difference of
more than twice the pooled sd over generation seeds; each cell is trained once, so the spread between training runs is
not measured).

Claims: (1) schedules: exponential > linear > constant; (2) λ = 1/10 is the best decay (with about 53% teacher share);
(3) strategies: SWITCH against student only, teacher only, random at SWITCH's rate, SKD and AdaSwitch; (4) SWITCH's
gain over the strongest baseline grows with the teacher-student gap. A claim whose inputs are missing is "not run",
with what is missing. The claims read the paper's one-axis grids (presets/grids/paper-ablations.yaml); with more
axes, the last cell of each value counts.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from switch_core.reporting.ablations import AblationResult, GapPair
from switch_core.reporting.reading import percent
from switch_core.reporting.references import PAPER_TEACHER_SHARE
from switch_core.reporting.scores import Comparison, Score, compare

HOLDS, DIRECTION, NOT_SEEN = "holds", "same direction, not clear", "not seen (within the seed spread)"
AGAINST, NOT_RUN = "contradicted", "not run"
"""The verdicts of a claim (:func:`verdict`) and the status of one whose inputs are missing."""
SCHEDULES = ("exponential", "linear", "constant")
"""The schedule ablation's cells in the paper's claimed order, best first."""
PAPER_DECAY = 0.1
"""The paper's best λ (docs/METHOD.md §1.1)."""
STRATEGY_LABELS = {"student": "student only", "teacher": "teacher only", "random": "random at SWITCH's rate",
                   "skd": "SKD", "adaswitch": "AdaSwitch"}
"""The peers of SWITCH in the strategy ablation, in the claim's order."""
MATCHED_SHARE = 0.05
"""Cells meant to run at one teacher share (the schedules; random at SWITCH's rate) whose shares differ by more than
this are said not to be matched."""


@dataclass(frozen=True)
class Claim:
    """One claim's reading: ``title`` (the paper's claim), ``status`` (a verdict of :func:`verdict` or
    :data:`NOT_RUN`), its markdown bullets (the comparisons, or what is missing), and ``missing``: the inputs that
    kept it from being read (only when not run)."""

    title: str
    status: str
    lines: list[str]
    missing: tuple[str, ...] = ()


def verdict(comparisons: Sequence[Comparison]) -> str:
    """The verdict on a claim that every one of ``comparisons`` (claimed better − claimed worse) is positive:
    :data:`AGAINST` when one is negative and clear, :data:`HOLDS` when all are positive and clear, :data:`DIRECTION`
    when all are positive but not all clear, :data:`NOT_SEEN` otherwise."""
    if any(c.diff < 0 and c.verdict == "clear" for c in comparisons):
        return AGAINST
    if all(c.diff > 0 for c in comparisons):
        return HOLDS if all(c.verdict == "clear" for c in comparisons) else DIRECTION
    return NOT_SEEN


def _share_text(result: AblationResult, cell: str) -> str:
    share = result.rows[cell].share
    return "no trace" if share is None else f"{100 * share[0]:.1f}%"


def _by_value(result: AblationResult | None, axes: tuple[str, ...], values: Sequence[object]
              ) -> tuple[dict[object, str], list[str]]:
    """``{value: cell}`` of the cells with an average ROUGE-L whose grid value on ``axes`` is one of ``values``
    (floats compared with ``math.isclose``), and what is missing."""
    if result is None:
        return {}, ["the ablation was not given"]
    found: dict[object, str] = {}
    for cell in result.cells:
        got = result.value(cell, *axes)
        for v in values:
            same = (math.isclose(float(got), float(v)) if isinstance(v, float) and isinstance(got, (int, float))
                    else got == v)
            if same and result.rows[cell].average is not None:
                found[v] = cell
    missing = []
    for v in values:
        if v in found:
            continue
        cell = next((c for c in result.cells if result.value(c, *axes) == v), None)
        missing.append(f"`{cell}` not evaluated on every benchmark" if cell else f"no cell with {axes[0]} {v}")
    return found, missing


def _grid_count(result: AblationResult, axes: tuple[str, ...], values: Sequence[object]) -> int:
    """How many of ``values`` some cell of the grid has on ``axes`` (evaluated or not)."""
    return sum(any(result.value(c, *axes) == v for c in result.cells) for v in values)


def incomplete(found: int, total: int) -> str:
    """The status of a claim read on only ``found`` of its ``total`` cells (the others not evaluated yet): no verdict
    on the claim, which needs all of them."""
    return f"incomplete: {found} of {total} cells"


def not_run(title: str, missing: Sequence[str]) -> Claim:
    """A claim whose inputs are missing: status :data:`NOT_RUN`, one line naming what is missing."""
    return Claim(title, NOT_RUN, [f"Not run: {'; '.join(missing)}."], tuple(missing))


def read_schedules(result: AblationResult | None) -> Claim:
    """Claim (1): exponential > linear > constant, each step against the pooled seed sd; separately, exponential above
    both (all the sources confirm); and whether the cells' teacher shares are matched (within :data:`MATCHED_SHARE`)
    as the design intends."""
    title = "Schedules: exponential > linear > constant"
    found, missing = _by_value(result, ("schedule", "rollout.schedule"), SCHEDULES)
    if missing:
        return not_run(title, missing)
    rows = {s: result.rows[found[s]] for s in SCHEDULES}
    steps = [(a, b, compare(rows[a].average, rows[b].average)) for a, b in itertools.pairwise(SCHEDULES)]
    status = verdict([c for _, _, c in steps])
    first, last = SCHEDULES[0], SCHEDULES[-1]
    ends = compare(rows[first].average, rows[last].average)
    lines = [f"{a} − {b}, average ROUGE-L: {c.text()}." for a, b, c in [*steps, (first, last, ends)]]
    lines.append(f"Verdict: **{status}** (paper: exponential > linear > constant).")
    lines.append(f"Exponential best of the three (the part of the claim every source states, docs/METHOD.md §1.1 "
                 f"item 5): **{verdict([steps[0][2], ends])}**.")
    order = sorted(SCHEDULES, key=lambda s: -rows[s].average.mean)
    lines.append("Order of the means: " + " > ".join(f"{s} {rows[s].average.mean:.2f}" for s in order) + ".")
    shares = {s: rows[s].share for s in SCHEDULES}
    lines.append("Teacher share of the rollouts: " + ", ".join(f"{s} {_share_text(result, found[s])}"
                                                               for s in SCHEDULES) + ".")
    known = [v[0] for v in shares.values() if v is not None]
    if len(known) == len(SCHEDULES) and max(known) - min(known) > MATCHED_SHARE:
        lines.append(f"The shares differ by {100 * (max(known) - min(known)):.1f} points (more than "
                     f"{100 * MATCHED_SHARE:.0f}): the schedules are not compared at a matched teacher share, so the "
                     "difference mixes the schedule's shape with how much the teacher wrote.")
    return Claim(title, status, lines)


def _verdict_lines(status: str, found: int, total: int, missing: Sequence[str], paper: str) -> list[str]:
    """The verdict line of a claim read on ``found`` of the grid's ``total`` cells; with fewer than all, it is the
    verdict on the compared cells only (the claim itself stays :func:`incomplete`)."""
    lines = [f"Not compared: {'; '.join(missing)}."] if missing else []
    if found >= total:
        return [*lines, f"Verdict: **{status}** ({paper})."]
    return [*lines, f"Verdict: **{incomplete(found, total)}** ({paper}); on the {found} cells compared: {status}."]


def read_decay(result: AblationResult | None) -> Claim:
    """Claim (2): λ = 1/10 scores best, against each other λ, with the teacher share each λ gave (paper ≈ 53% at
    1/10)."""
    title = "Decay: λ = 1/10 is best"
    if result is None:
        return not_run(title, ["the ablation was not given"])
    values = [result.value(c, "decay", "rollout.decay") for c in result.cells]
    found, missing = _by_value(result, ("decay", "rollout.decay"), [float(v) for v in values if v is not None])
    best = next((v for v in found if math.isclose(float(v), PAPER_DECAY)), None)
    if best is None or len(found) < 2:
        return not_run(title, missing or [f"no cell with λ = {PAPER_DECAY:g}"])
    others = [v for v in found if v != best]
    comparisons = [(v, compare(result.rows[found[best]].average, result.rows[found[v]].average)) for v in others]
    status = verdict([c for _, c in comparisons])
    lines = [f"λ = {PAPER_DECAY:g} − λ = {v:g}, average ROUGE-L: {c.text()}." for v, c in comparisons]
    total = _grid_count(result, ("decay", "rollout.decay"), list(dict.fromkeys(v for v in values if v is not None)))
    lines += _verdict_lines(status, len(found), total, missing, "paper: λ = 1/10 best")
    lines.append("Teacher share of the rollouts: " + ", ".join(
        f"λ = {v:g} {_share_text(result, found[v])}" for v in found) + f" (paper ≈ {percent(PAPER_TEACHER_SHARE)} "
        f"at λ = 1/10).")
    if len(found) < total:
        return Claim(title, incomplete(len(found), total), lines, tuple(missing))
    return Claim(title, status, lines)


def read_strategies(result: AblationResult | None) -> Claim:
    """Claim (3): SWITCH's cell against each other strategy's cell (:data:`STRATEGY_LABELS`), and whether random ran
    at SWITCH's teacher share (within :data:`MATCHED_SHARE`)."""
    title = "Strategies: SWITCH beats student only, teacher only, random at its rate, SKD and AdaSwitch"
    axes = ("strategy", "rollout.strategy")
    found, missing = _by_value(result, axes, ["switch", *STRATEGY_LABELS])
    if "switch" not in found or not any(s in found for s in STRATEGY_LABELS):
        return not_run(title, missing)
    sw = result.rows[found["switch"]]
    comparisons = [(s, compare(sw.average, result.rows[found[s]].average)) for s in STRATEGY_LABELS if s in found]
    status = verdict([c for _, c in comparisons])
    lines = [f"SWITCH − {STRATEGY_LABELS[s]}, average ROUGE-L: {c.text()}." for s, c in comparisons]
    total = _grid_count(result, axes, ["switch", *STRATEGY_LABELS])
    lines += _verdict_lines(status, len(found), total, missing, "paper: SWITCH beats each")
    if "random" in found and sw.share is not None and result.rows[found["random"]].share is not None:
        mine, rand = sw.share[0], result.rows[found["random"]].share[0]
        matched = abs(mine - rand) <= MATCHED_SHARE
        lines.append(f"Teacher share: SWITCH {100 * mine:.1f}%, random {100 * rand:.1f}%"
                     + (" (matched)." if matched else
                        f": random did not run at SWITCH's rate (rerun its cell with --set rollout.random_rate="
                        f"{mine:.2f})."))
    if len(found) < total:
        return Claim(title, incomplete(len(found), total), lines, tuple(missing))
    return Claim(title, status, lines)


GAP_TITLE = "Gap: SWITCH's gain over the strongest baseline grows with the teacher-student gap"


def read_gap(small: GapPair, large: GapPair, baseline: str | None, switch: str) -> Claim:
    """Claim (4): SWITCH − the strongest baseline grows from the small-gap to the large-gap pair. The change of the
    margin is judged as a comparison of the two margins, each carrying the sd of a difference of two independent
    scores (``sqrt(sd_switch² + sd_baseline²)``), so its pooled sd is ``sqrt((sd1² + sd2² + sd3² + sd4²) / 2)``: the sd
    of the four-score contrast over √2, the same ratio as the pooled sd of two scores to the sd of their difference, so
    "clear" means the same for both; the teacher − student gap of each pair is stated, to check that the large-gap pair
    has the larger one."""
    missing = [] if baseline is not None else ["no baseline evaluated in both run folders (--gap-baseline names it)"]
    for pair in (small, large):
        absent = [f"`{n}`" for n, score in ((switch, pair.switch), (baseline, pair.baseline))
                  if n is not None and score is None]
        if absent:
            missing.append(f"{' and '.join(absent)} not evaluated on every benchmark in `{pair.run_dir}`")
    if missing:
        return not_run(GAP_TITLE, missing)
    margins = []
    lines = []
    for pair in (small, large):
        c = compare(pair.switch, pair.baseline)
        margins.append(Score(c.diff, math.hypot(pair.switch.sd, pair.baseline.sd), pair.switch.seeds))
        lines.append(f"{pair.label} (`{pair.run_dir}`): SWITCH − `{baseline}`, average ROUGE-L: {c.text()}.")
    change = compare(margins[1], margins[0])
    status = verdict([change])
    lines.append(f"Change of the margin, large − small gap: {change.text()}.")
    lines.append(f"Verdict: **{status}** (paper: the gain grows with the gap).")
    shares = [p.rows[switch].share for p in (small, large) if switch in p.rows and p.rows[switch].share is not None]
    if len(shares) == 2 and abs(shares[1][0] - shares[0][0]) > MATCHED_SHARE:
        lines.append(f"SWITCH's teacher share of its training rollouts differs between the pairs ({small.label} "
                     f"{100 * shares[0][0]:.1f}%, {large.label} {100 * shares[1][0]:.1f}%): the change of the margin "
                     "mixes the gap with how much the teacher wrote.")
    gaps = [(p, compare(p.teacher, p.student[1])) for p in (small, large) if p.teacher and p.student]
    if len(gaps) == 2:
        lines.append("Teacher − student, average ROUGE-L: " + "; ".join(
            f"{p.label} {c.diff:+.2f} (vs `{p.student[0]}`)" for p, c in gaps) + (
            "." if gaps[1][1].diff > gaps[0][1].diff else
            ": the large-gap pair does not have the larger gap here, so this is no test of the claim."))
    return Claim(GAP_TITLE, status, lines)
