"""The rule-based reading of a study against the paper's claims (docs/METHOD.md §0, §1.1, §2): SWITCH beats every
baseline, especially on long responses, and the teacher intervenes more as the response goes on
(τ_t = τ0·exp(−λt)). Each rule is a fixed comparison of the numbers in :class:`ReadingInputs`; a statement whose
inputs are missing says so.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from switch_core.reporting.references import PAPER_DOLLY_NUMBERS, PAPER_TEACHER_SHARE
from switch_core.reporting.scores import Score, bucket_low, compare, rank_of
from switch_core.reporting.teacher_share import MIN_BUCKET_TOKENS, share_ends, teacher_share
from switch_core.rollout.schedules import JSD_MAX, student_only_positions

ON_POLICY_METHODS: frozenset[str] = frozenset({"imitkd", "gkd", "distillm", "switch", "minillm"})
"""Methods that (may) train on rollouts; a low logged rollout share is worth a statement for them."""
RARE_STOP_RATE = 0.05
"""Below this share of answers ended by a stop token, a run is said to (almost) never stop."""


@dataclass(frozen=True)
class ReadingInputs:
    """The numbers the reading rules look at (built by :func:`~switch_core.reporting.results_md.write_results_doc`).

    Attributes:
        switch: the SWITCH run the reading is about (None when the configuration has none).
        methods: every distillation run (SWITCH included), in table order.
        method_of: run name -> method name (``switch``, ``distillm``, ``sft``...).
        averages: average ROUGE-L over ``benchmarks`` per model.
        per_benchmark: ROUGE-L per model and benchmark.
        buckets: pooled ROUGE-L by reference-length bucket per model.
        benchmarks: the benchmarks of the averages.
        traces: teacher share by position per run.
        target_share: the calibration target (``rollout.target_teacher_share``), None if unknown.
        tau0: τ0 per SWITCH run (calibrated or set; ``train_summary.json``); runs without one are unknown.
        decay: λ of the exponential threshold per SWITCH run (``rollout.decay`` with its overrides); runs without one
            are unknown or use another schedule.
        rollout_share: per run, the logged share of optimizer steps that trained on rollouts
            (:func:`~switch_core.reporting.scores.rollout_batch_share`); runs without a log are unknown.
        stop_rate: per model, the share of evaluation answers ended by a stop token (averaged over ``benchmarks``).
    """

    switch: str | None
    methods: Sequence[str]
    method_of: Mapping[str, str]
    averages: Mapping[str, Score]
    per_benchmark: Mapping[str, Mapping[str, Score]]
    buckets: Mapping[str, Mapping[str, tuple[Score, int]]]
    benchmarks: Sequence[str]
    traces: Mapping[str, pd.DataFrame]
    target_share: float | None
    tau0: Mapping[str, float] = field(default_factory=dict)
    decay: Mapping[str, float] = field(default_factory=dict)
    rollout_share: Mapping[str, float] = field(default_factory=dict)
    stop_rate: Mapping[str, Score] = field(default_factory=dict)

    @property
    def baselines(self) -> list[str]:
        """The runs of other methods than SWITCH, in table order."""
        return [m for m in self.methods if self.method_of.get(m) != "switch"]

    @property
    def variants(self) -> list[str]:
        """The SWITCH runs other than the one the reading is about."""
        return [m for m in self.methods if self.method_of.get(m) == "switch" and m != self.switch]


def _named(r: ReadingInputs, method: str) -> str | None:
    return next((m for m in r.methods if r.method_of.get(m) == method), None)


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def percent(share: float) -> str:
    """A share as a percentage: one decimal below 10%, none above."""
    return f"{100 * share:.1f}%" if share < 0.1 else f"{100 * share:.0f}%"


def _listed(runs: Sequence[str]) -> str:
    return ", ".join(f"`{m}`" for m in runs)


def _with_verb(runs: Sequence[str], singular: str, plural: str) -> str:
    """``"`a` scores"`` / ``"`a`, `b` score"``."""
    return f"{_listed(runs)} {singular if len(runs) == 1 else plural}"


def _read_ranking(r: ReadingInputs) -> list[str]:
    sw = r.switch
    ranked = {m: r.averages[m] for m in [*r.baselines, sw] if m in r.averages}
    if sw not in ranked or len(ranked) < 2:
        return [f"Ranking over methods: cannot be assessed yet ({len(ranked)} method(s) with every benchmark "
                "evaluated, SWITCH " + ("among them" if sw in ranked else "not among them") + ")."]
    rank, count = rank_of(ranked, sw)
    top = max(s.mean for s in ranked.values())
    leaders = [m for m in ranked if ranked[m].mean == top]  # ties share the rank, as in rank_of
    tied = [m for m in ranked if m != sw and ranked[m].mean == ranked[sw].mean]
    best = sw if sw in leaders else leaders[0]
    if best != sw:
        leader = f"the best method is `{best}` ({ranked[best].cell()})" if len(leaders) == 1 else (
            f"the best methods are {_listed(leaders)}, tied ({ranked[best].cell()})")
    else:
        leader = "it is the best method" if len(leaders) == 1 else "it shares the best average"
    placed = f"{'tied ' if tied else ''}{_ordinal(rank)} of {count}"
    lines = [(f"Overall, SWITCH (`{sw}`) ranks **{placed}** methods"
              + (f" (tied with {_listed(tied)})" if tied else "") + " (SWITCH and the baselines) by "
              f"the average ROUGE-L over {len(r.benchmarks)} benchmarks ({ranked[sw].cell()}); {leader}. Below, "
              "\"clear\" means a difference of more than twice the pooled sd over generation seeds, each method "
              "trained once: the spread between training runs is not measured.")]
    if best != sw and r.method_of.get(best) in ON_POLICY_METHODS and r.rollout_share.get(best, 1.0) < 0.1:
        lines.append(f"The best method `{best}` trained on rollouts in only {percent(r.rollout_share[best])} of its "
                     "steps (its training log), almost only on the reference responses: its lead here does not come "
                     "from learning on student-generated outputs.")
    beaten_by = [m for m in ranked if m != sw and ranked[m].mean >= ranked[sw].mean]
    claim = "The paper's abstract says SWITCH outperforms traditional KD methods"
    if beaten_by:
        clearly = [m for m in beaten_by if compare(ranked[m], ranked[sw]).verdict == "clear"]
        close = [m for m in beaten_by if m not in clearly and m not in tied]
        parts = ([f"{_with_verb(clearly, 'scores', 'score')} clearly higher"] if clearly else []) + (
            [f"{_with_verb(close, 'scores', 'score')} higher by less than that" if clearly else
             f"{_with_verb(close, 'scores', 'score')} higher, though not clearly"] if close else []) + (
            [f"{_with_verb(tied, 'ties', 'tie')} with it"] if tied else [])
        lines.append(f"{claim}; **here it does not beat them all**: {'; '.join(parts)}.")
    else:
        lines.append(f"{claim}; here it does on average "
                     f"({'the other method scores' if count == 2 else f'all {count - 1} other methods score'} lower).")
    wins = [b for b in r.benchmarks
            if sw in r.per_benchmark and b in r.per_benchmark[sw]
            and all(r.per_benchmark[sw][b].mean > r.per_benchmark[m][b].mean
                    for m in ranked if m != sw and b in r.per_benchmark.get(m, {}))]
    lines.append(f"SWITCH is the best method on {len(wins)} of {len(r.benchmarks)} benchmarks"
                 + (f" ({', '.join(wins)})." if wins else "."))
    return lines


def _read_against(r: ReadingInputs, other: str | None, label: str) -> str:
    sw = r.switch
    if other is None:
        return f"SWITCH vs {label}: no such run in this study."
    if sw not in r.averages or other not in r.averages:
        missing = [m for m in (sw, other) if m not in r.averages]
        absent = ", ".join(f"`{m}`" for m in missing)
        return f"SWITCH vs {label} (`{other}`): cannot be assessed yet ({absent} not evaluated on every benchmark)."
    return f"SWITCH − {label} (`{other}`), average ROUGE-L: {compare(r.averages[sw], r.averages[other]).text()}."


def _longest_bucket(r: ReadingInputs) -> str | None:
    labels = {lab for m in r.methods for lab in r.buckets.get(m, {})}
    return max(labels, key=bucket_low) if labels else None


def _read_long(r: ReadingInputs) -> list[str]:
    sw, label = r.switch, _longest_bucket(r)
    ranked = {m: r.buckets[m][label][0] for m in [*r.baselines, sw] if label and label in r.buckets.get(m, {})}
    if sw not in ranked or len(ranked) < 2:
        return [("Long responses: cannot be assessed yet (the longest-reference bucket needs SWITCH and another "
                "method evaluated on every benchmark).")]
    rank, count = rank_of(ranked, sw)
    n = r.buckets[sw][label][1]
    best_other = max((m for m in ranked if m != sw), key=lambda m: ranked[m].mean)
    long = compare(ranked[sw], ranked[best_other])
    average_ranked = {m: r.averages[m] for m in ranked if m in r.averages}
    versus = (f" (vs {_ordinal(rank_of(average_ranked, sw)[0])} on average)"
              if sw in average_ranked and len(average_ranked) == count else "")
    lines = [(f"In the longest-reference bucket ({label} tokens, n={n} examples pooled over {len(r.benchmarks)} "
             f"benchmarks) SWITCH ranks **{_ordinal(rank)} of {count}**{versus} ({ranked[sw].cell()}); margin over "
             f"the best other method `{best_other}`: {long.text()}.")]
    overall = {m: r.averages[m] for m in ranked if m in r.averages}
    if len(overall) >= 2 and sw in overall:
        top = max((m for m in overall if m != sw), key=lambda m: overall[m].mean)
        average = compare(overall[sw], overall[top])
        change = long.diff - average.diff
        noise = max(long.pooled_sd, average.pooled_sd)
        if not abs(change) > noise:
            verdict = ("the two margins differ by no more than the seed sd, so SWITCH does no better on long "
                       "references than overall: the paper's claim that it gains most on long responses is not seen "
                       "here")
        elif change > 0 and rank == 1:
            verdict = "consistent with the paper's claim that SWITCH gains most on long responses"
        elif change > 0:
            verdict = ("SWITCH does relatively better on long references than overall, but is not the best there: the "
                       "paper's claim holds only in direction")
        else:
            verdict = "the paper's claim that SWITCH gains most on long responses is not seen here"
        lines.append(f"Its margin over the best other method is {long.diff:+.2f} on the longest references vs "
                     f"{average.diff:+.2f} on average: {verdict}.")
    return lines


def _read_share(r: ReadingInputs) -> list[str]:
    sw = r.switch
    trace = r.traces.get(sw) if sw else None
    if trace is None:
        return ["Teacher share by position: no rollout trace of the SWITCH run yet."]
    share, tokens = teacher_share(trace)
    target = f"calibration target {100 * r.target_share:.0f}%, " if r.target_share is not None else ""
    lines = [(f"Teacher share over all {tokens} tokens of SWITCH's training rollouts: {100 * share:.1f}% ({target}"
             f"paper {100 * PAPER_TEACHER_SHARE:.0f}%).")]
    longest = int(trace["position"].max())
    tau0, decay = r.tau0.get(sw), r.decay.get(sw)
    first = student_only_positions("exponential", tau0=tau0, decay=decay) if None not in (tau0, decay) else 0.0
    if first > 0:
        positions = "every response position" if math.isinf(first) else f"response positions 0–{math.ceil(first) - 1}"
        lines.append(f"τ0 = {tau0:.3g} exceeds ln 2, the largest JSD, so the threshold cannot be crossed at "
                     f"{positions} (λ = {decay:g}): the student writes them alone and the teacher share comes from "
                     "later positions (with τ0 ≤ ln 2 the teacher may step in from the first token, when the JSD "
                     "exceeds the threshold).")
        if first >= 0.25 * (longest + 1):
            crossable = [v for v in r.variants if r.tau0.get(v) is not None and r.tau0[v] <= JSD_MAX]
            lines.append("So this run tests a student-written opening followed by mostly teacher-written tokens, not "
                         "the token-by-token switching from the first token that the paper describes; its rank says "
                         "little about SWITCH in the paper's regime"
                         + (f" ({_listed(crossable)}: τ0 ≤ ln 2, see below)." if crossable else "."))
    ends = share_ends(trace)
    if ends is None:
        lines.append(f"Too few position buckets with ≥{MIN_BUCKET_TOKENS} tokens to tell whether the share rises "
                     "with position.")
        return lines
    starts = float(trace.loc[trace["position"] == 0, "count"].sum())
    if starts > 0:
        reach = float(trace.loc[trace["position"] == longest, "count"].sum()) / starts
        lines.append(f"{100 * reach:.0f}% of the rollouts run to the longest length in the trace ({longest + 1} "
                     "tokens).")
    (first, s0), (last, s1) = ends
    rises = s1 > s0
    lines.append(f"The teacher share {'rises' if rises else 'does not rise'} with response position: "
                 f"{100 * s0:.1f}% at positions {first} vs {100 * s1:.1f}% at {last}"
                 + (", as the decaying threshold τ_t = τ0·exp(−λt) intends." if rises else
                    ", against what the decaying threshold τ_t = τ0·exp(−λt) intends."))
    return lines


def _read_variant(r: ReadingInputs, v: str) -> str:
    """One SWITCH variant (another SWITCH run): its settings, rank among the baselines, and margins."""
    tau0, decay = r.tau0.get(v), r.decay.get(v)
    settings = ", ".join(([f"τ0 = {tau0:.4g}"] if tau0 is not None else [])
                         + ([f"λ = {decay:g}"] if decay is not None else []))
    trace = r.traces.get(v)
    if trace is not None:
        share, tokens = teacher_share(trace)
        settings += f"; teacher share {100 * share:.1f}% of {tokens} rollout tokens"
        ends = share_ends(trace)
        if ends is not None:
            (first, s0), (last, s1) = ends
            settings += f", {100 * s0:.1f}% at positions {first} and {100 * s1:.1f}% at {last}"
    head = f"SWITCH variant `{v}` ({settings})"
    if v not in r.averages:
        return f"{head}: not evaluated on every benchmark yet."
    ranked = {m: r.averages[m] for m in [*r.baselines, v] if m in r.averages}
    rank, count = rank_of(ranked, v)
    text = f"{head}: average ROUGE-L {r.averages[v].cell()}, **{_ordinal(rank)} of {count}** against the baselines"
    if r.switch in r.averages:
        versus = compare(r.averages[v], r.averages[r.switch])
        alike = " (the two SWITCH settings score alike)" if versus.verdict == "within seed noise" else ""
        text += f"; `{v}` − `{r.switch}`: {versus.text()}{alike}"
    others = [m for m in ranked if m != v]
    if others:
        best = max(others, key=lambda m: ranked[m].mean)
        text += f"; `{v}` − best baseline `{best}`: {compare(ranked[v], ranked[best]).text()}"
    return text + "."


def _read_stops(r: ReadingInputs) -> list[str]:
    """Runs whose evaluation answers (almost) never end with a stop token, against the others' stop rates."""
    rates = {m: r.stop_rate[m].mean for m in r.methods if m in r.stop_rate}
    rarely = [m for m, rate in rates.items() if rate < RARE_STOP_RATE]
    others = [rate for m, rate in rates.items() if rate >= RARE_STOP_RATE]
    if not rarely or not others:
        return []
    low, high = percent(min(others)), percent(max(others))
    own = ", ".join(percent(rates[m]) for m in rarely)
    whose = "its" if len(rarely) == 1 else "their"
    return [(f"At evaluation, {_with_verb(rarely, 'ends', 'end')} fewer than {percent(RARE_STOP_RATE)} of {whose} "
             f"answers with a stop token ({own}): nearly every answer runs to the new-token cap, while the other distillation "
             f"runs end {low if low == high else f'{low}–{high}'} of theirs (Response length). Longer answers change "
             "ROUGE-L (lower precision against short references), so part of the ranking reflects answer length "
             "rather than content.")]


def _read_gap(r: ReadingInputs) -> list[str]:
    teacher, student = r.averages.get("teacher"), r.averages.get("student-sft") or r.averages.get("student-init")
    if teacher is None or student is None:
        return [("Teacher–student gap: cannot be assessed yet (teacher or student reference not evaluated on every "
                "benchmark).")]
    name = "student-sft" if "student-sft" in r.averages else "student-init"
    gap = compare(teacher, student)
    lines = [f"Teacher − {name}, average ROUGE-L: {gap.text()}."]
    if gap.verdict != "clear" or gap.diff <= 0:
        lines.append("The gap is not clear, so the distillation methods have little room to separate: the ranking "
                     "above is weak evidence either way.")
    recovered = [(m, (r.averages[m].mean - student.mean) / gap.diff) for m in r.methods if m in r.averages]
    if recovered and gap.diff > 0:
        lines.append("Share of that gap recovered (average ROUGE-L): "
                     + ", ".join(f"`{m}` {100 * f:.0f}%" for m, f in recovered) + ".")
    return lines


def _read_dolly(r: ReadingInputs) -> str | None:
    sw = r.switch
    if sw is None or "dolly" not in r.per_benchmark.get(sw, {}):
        return None
    others = {m: r.per_benchmark[m]["dolly"] for m in r.methods if m != sw and "dolly" in r.per_benchmark.get(m, {})}
    if not others:
        return None
    best = max(others, key=lambda m: others[m].mean)
    paper_sw, paper_base = PAPER_DOLLY_NUMBERS
    margin = r.per_benchmark[sw]["dolly"].mean - others[best].mean
    return (f"Dolly: SWITCH − best other method (`{best}`) = {margin:+.2f} here; the only paper number found is "
            f"{paper_sw} vs {paper_base} for an unnamed baseline ({paper_sw - paper_base:+.1f}, larger models and the "
            "full training set; METHOD.md §3).")


def reading(r: ReadingInputs) -> list[str]:
    """Rule-based statements on the result against the paper's claims, one markdown bullet each.

    Rules: SWITCH's rank among itself and the baselines (runs of other methods) by average ROUGE-L and in the
    longest-reference bucket (pooled over benchmarks); the baselines it does not beat; whether the best method
    trained on rollouts in under 10% of its steps (then its lead is not that of on-policy learning); SWITCH − DistiLLM and
    SWITCH − SFT judged against the pooled seed sd (:func:`compare`); whether its margin over the best other method
    is larger on the longest references than on average by more than the seed sd (the paper's "especially on long
    responses"); whether τ0 > ln 2 leaves the first positions to the student, and whether for a quarter of the
    longest rollout or more (then the run is not the paper's regime); whether the teacher share rises from the
    first to the last response-position bucket with at least :data:`MIN_BUCKET_TOKENS` tokens (the decaying
    threshold's intent); each other SWITCH run's rank against the baselines and margins; which runs end fewer than
    :data:`RARE_STOP_RATE` of their evaluation answers with a stop token while others do not; whether the teacher −
    student gap is clear and what share of it each method recovers. Statements whose inputs are missing say so.
    """
    if r.switch is None:
        return ["This study has no SWITCH run: nothing to read against the paper."]
    lines = _read_ranking(r)
    lines.append(_read_against(r, _named(r, "distillm"), "DistiLLM"))
    lines.append(_read_against(r, _named(r, "sft"), "the SFT run"))
    lines += _read_long(r)
    dolly = _read_dolly(r)
    if dolly:
        lines.append(dolly)
    lines += _read_share(r)
    lines += [_read_variant(r, v) for v in r.variants]
    lines += _read_stops(r)
    lines += _read_gap(r)
    return lines
