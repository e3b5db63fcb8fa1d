"""The results document's account of SWITCH's gate and of the stop token in rollout training (issue: does the gate
act as a gate?).

- :func:`run_thresholds`: each SWITCH run's τ0 (its training summary, else the configuration's fixed value) and its
  τ_t over the profiled positions;
- :func:`profile_table`: the warmed-up student's JSD to the teacher by position bucket (``analysis/gate_profile.json``,
  :mod:`switch_core.reporting.gate_profile`) with, per SWITCH run, the share of those tokens above its τ_t;
- :func:`gate_table`: per SWITCH run, τ0, how its calibration ended (reached, out of reach at ln 2 = ``bounded``, or
  out of budget), whether τ0 > ln 2 makes the gate a position switch, and the share of positions where τ_t < ln 2;
- :func:`stop_table`: per run trained on rollouts, the stop-token diagnostics of its training log (first and last
  logged values) and whether ``supervise_stop`` and dataset batches were in force (docs/METHOD.md §6.10);
- :func:`stop_handling_lines`: which stop-token handling those runs trained with, and how often their evaluation
  answers end with a stop token against the runs trained on reference responses.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from switch_core.reporting.gate_profile import exceed_shares, schedule_thresholds
from switch_core.reporting.loading import metric_series
from switch_core.reporting.run_outputs import RunOutputs
from switch_core.reporting.scores import Score, rollout_batch_share
from switch_core.rollout.schedules import JSD_MAX, gate_summary

STOP_METRICS: tuple[tuple[str, str, str], ...] = (
    ("rollout/stop_rate", "stop rate", "{:.2f}"),
    ("rollout/stopped_length", "stopped length (tokens)", "{:.1f}"),
    ("rollout/teacher_stop_prob", "teacher p(stop)", "{:.3f}"),
    ("rollout/student_stop_prob", "student q(stop)", "{:.3f}"),
)
"""Stop-token metrics of a rollout run's training log (``switch_core.training.step_stats.metrics_from_sums``): the
metric, its column heading and its format."""


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.1f}%"


def _nats(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def run_tau0(outputs: RunOutputs, run: str, schedules: Mapping[str, Mapping[str, Any]]) -> tuple[float | None, str]:
    """``(τ0, where from)`` of a SWITCH run: its ``train_summary.json`` (``calibrated`` when the run calibrated it,
    else ``fixed``), else the configuration's ``rollout.tau0`` (``configured``); ``(None, "")`` when neither."""
    summary = outputs.summaries.get(run) or {}
    if summary.get("tau0") is not None:
        return float(summary["tau0"]), "calibrated" if summary.get("calibration") else "fixed"
    configured = (schedules.get(run) or {}).get("tau0")
    return (float(configured), "configured") if configured is not None else (None, "")


def run_thresholds(outputs: RunOutputs, runs: Sequence[str], schedules: Mapping[str, Mapping[str, Any]],
                   steps: int) -> dict[str, list[float]]:
    """τ_t for t < ``steps`` of each run in ``runs`` whose τ0 (:func:`run_tau0`) and schedule (``schedules[run]``:
    ``schedule``, ``decay``, ``horizon``, ``max_new_tokens``) are known."""
    out = {}
    for run in runs:
        tau0, _ = run_tau0(outputs, run, schedules)
        if tau0 is not None and run in schedules:
            out[run] = schedule_thresholds(dict(schedules[run]) | {"tau0": tau0}, steps)
    return out


def profile_table(profile: Mapping[str, Any], thresholds: Mapping[str, Sequence[float]]) -> str:
    """Markdown table of the JSD profile by position bucket (nats): tokens, mean and quantiles, then per run the share
    of the profiled tokens whose JSD exceeds that run's τ_t (where its gate would hand the token to the teacher);
    last row: all positions."""
    steps = int(profile["decoding"]["max_new_tokens"])
    above = {run: exceed_shares(profile["jsd"], tau, steps=steps) for run, tau in thresholds.items()}
    head = ["positions", "tokens", "mean", "p10", "p25", "median", "p75", "p90",
            *[f"JSD > τ_t of `{run}`" for run in above]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, stats: Mapping[str, Any], shares: list[str]) -> str:
        cells = [label, str(stats["count"]), *[_nats(stats[k]) for k in ("mean", "p10", "p25", "p50", "p75", "p90")],
                 *shares]
        return "| " + " | ".join(cells) + " |"

    for i, bucket in enumerate(profile["buckets"]):
        lines.append(row(bucket["label"], bucket, [_pct(a["buckets"][i]["share"]) for a in above.values()]))
    lines.append(row("all", profile["overall"], [_pct(a["overall"]) for a in above.values()]))
    return "\n".join(lines)


def _calibration_text(summary: Mapping[str, Any], source: str) -> str:
    search = summary.get("calibration")
    if not search:
        return {"fixed": "none (τ0 set)", "configured": "none (τ0 set; run not finished)"}.get(source, "–")
    achieved, target = float(search["achieved_share"]), float(search["target_share"])
    if search.get("bounded"):
        return (f"**bounded** at ln 2: τ0 = ln 2 already gives {_pct(achieved)} teacher tokens (target "
                f"{_pct(target)})")
    if search.get("reason"):
        return f"out of evaluations: kept the closest, {_pct(achieved)} (target {_pct(target)})"
    return f"reached {_pct(achieved)} (target {_pct(target)})"


def _gate(outputs: RunOutputs, run: str, tau0: float | None, spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The run's ``gate`` summary, or the same computed from its configured schedule when the run has none yet."""
    gate = (outputs.summaries.get(run) or {}).get("gate")
    if gate is None and tau0 is not None and spec is not None:
        gate = gate_summary(spec["schedule"], tau0=tau0, steps=int(spec["max_new_tokens"]), decay=spec.get("decay"),
                            horizon=spec.get("horizon") or int(spec["max_new_tokens"]))
    return gate


def _position_text(gate: Mapping[str, Any] | None, steps: int | None) -> str:
    if gate is None:
        return "–"
    blocked = int(gate["student_only_positions"])
    if not gate["position_switch"]:
        return f"a gate (τ0 <= ln 2), able to choose from t = {blocked}"
    if float(gate["gate_active_share"]) == 0.0:
        return f"no gate: τ_t >= ln 2 at all {steps or blocked} positions, the student writes every token"
    return f"a position switch at t = {blocked} (the student alone before)"


def gate_table(outputs: RunOutputs, runs: Sequence[str], schedules: Mapping[str, Mapping[str, Any]],
               profile: Mapping[str, Any] | None) -> str:
    """Markdown table per SWITCH run: τ0 and where it comes from, the calibration's outcome, whether the gate is a
    gate or a position switch, the share of positions where τ_t < ln 2, and the share of the warmed-up student's
    profiled tokens whose JSD exceeds τ_t."""
    lines = [("| run | τ0 | calibration | τ0 vs ln 2 | positions where the gate can choose (τ_t < ln 2) | "
             "profiled tokens with JSD > τ_t |"), "|---|---|---|---|---|---|"]
    steps = int(profile["decoding"]["max_new_tokens"]) if profile else None
    taus = run_thresholds(outputs, runs, schedules, steps) if profile else {}
    for run in runs:
        tau0, source = run_tau0(outputs, run, schedules)
        spec = schedules.get(run)
        gate = _gate(outputs, run, tau0, spec)
        over = exceed_shares(profile["jsd"], taus[run], steps=steps)["overall"] if run in taus else None
        lines.append(" | ".join([
            f"| {run}", "–" if tau0 is None else f"{tau0:.4g} ({source})",
            _calibration_text(outputs.summaries.get(run) or {}, source),
            _position_text(gate, int(spec["max_new_tokens"]) if spec else None),
            "–" if gate is None else _pct(float(gate["gate_active_share"])),
            _pct(over) + " |",
        ]))
    return "\n".join(lines)


def _first_last(series: pd.DataFrame, form: str) -> str:
    if series.empty:
        return "not logged"
    first, last = series.iloc[0], series.iloc[-1]
    return (f"{form.format(first['value'])} (step {int(first['step'])}) → "
            f"{form.format(last['value'])} (step {int(last['step'])})")


def stop_table(outputs: RunOutputs, runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table per run trained on rollouts: its batches (``methods.<m>.data``), ``supervise_stop``, the share of
    its logged steps that trained on rollouts, and the first and last logged value of each :data:`STOP_METRICS`.

    Args:
        outputs: the run folder's outputs (training logs).
        runs: run name -> ``{"data", "supervise_stop"}`` as configured (with the run's overrides).
    """
    head = ["run", "data", "supervise_stop", "rollout batches (logged)", *[label for _, label, _ in STOP_METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, setup in runs.items():
        log = outputs.logs.get(run)
        share = rollout_batch_share(log)
        cells = [f"`{run}`", f"`{setup.get('data', '–')}`",
                 {True: "on", False: "off"}.get(setup.get("supervise_stop"), "–"), _pct(share)]
        if log is None:
            cells += ["no training log yet"] + [""] * (len(STOP_METRICS) - 1)
        else:
            cells += [_first_last(metric_series(log, name), form) for name, _, form in STOP_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stop_handling_lines(runs: Mapping[str, Mapping[str, Any]], stops: Mapping[str, Score],
                        models: Sequence[str]) -> list[str]:
    """The sentences under the stop-token table: the stop-token handling in force for the runs trained on rollouts
    (``supervise_stop`` and the batches of each, from the configuration) and the range of their evaluation answers'
    stop rates against the other evaluated models.

    Args:
        runs: run name -> ``{"data", "supervise_stop"}`` as configured (empty mappings when the settings are unknown).
        stops: model -> share of evaluation answers ended by a stop token (fraction in [0, 1], over seeds).
        models: the document's models, in its order; those not in ``runs`` are the ones compared with.
    """
    known = {r: s for r, s in runs.items() if "supervise_stop" in s}
    lines = []
    if known:
        on = [f"`{r}`" for r, s in known.items() if s["supervise_stop"]]
        if on:
            lines.append(f"Stop-token handling: `supervise_stop` on for {', '.join(on)}, off for the other "
                         f"{len(known) - len(on)} runs trained on rollouts (docs/METHOD.md §6.10).")
        else:
            lines.append("Stop-token handling: none of the mitigations of docs/METHOD.md §6.10 — `supervise_stop` off "
                         f"and each method's own batches (the `data` column) for all {len(known)} runs trained on "
                         "rollouts: the one rule that section sets for every rollout method, from its pilot on the "
                         "dolly-smollm2 pair.")
    rated = {r: stops[r].mean for r in runs if r in stops}
    others = [(m, stops[m].mean) for m in models if m in stops and m not in runs]
    if rated:
        low, high = min(rated, key=rated.get), max(rated, key=rated.get)
        lines.append(f"Their evaluation answers end with a stop token in {100 * rated[low]:.1f}% (`{low}`) to "
                     f"{100 * rated[high]:.1f}% (`{high}`) of cases"
                     + ("; the other models: " + ", ".join(f"`{m}` {100 * v:.1f}%" for m, v in others)
                        if others else "")
                     + " (Response length section). A stop-token collapse shows as a rate near 0%.")
    return lines


def gate_lines(outputs: RunOutputs, switch_runs: Sequence[str], schedules: Mapping[str, Mapping[str, Any]],
               plot_link: str | None) -> list[str]:
    """The lines of the results document's "The gate" section."""
    profile = outputs.gate_profile
    lines = [(f"The gate sends response position t to the teacher when JSD_t > τ_t, and the JSD is at most ln 2 = "
              f"{JSD_MAX:.4f} nats (docs/METHOD.md §1.4): where τ_t >= ln 2 the student writes alone, and a τ0 above "
              "ln 2 turns the gate into a switch at a fixed position."), ""]
    if profile is None:
        lines += [("The JSD profile of the warmed-up student (analysis/gate_profile.json, stage `gate-profile`) is not "
                  "there yet."), ""]
    else:
        decoding = profile["decoding"]
        taus = run_thresholds(outputs, switch_runs, schedules, int(decoding["max_new_tokens"]))
        lines += [(f"JSD (nats) between the teacher's and `{profile['student']}`'s next-token distributions at each "
                   f"token of the student's own rollouts ({profile['rollouts']} dev prompts, {profile['tokens']} tokens,"
                   f" up to {decoding['max_new_tokens']} new tokens, temperature {decoding['temperature']}): the "
                   "distribution the gate's threshold meets at the start of distillation. The last columns: share of "
                   "those tokens above each SWITCH run's τ_t."), "", profile_table(profile, taus), ""]
        if plot_link:
            lines += [f"![JSD by response position]({plot_link})", ""]
    if switch_runs:
        lines += ["Per SWITCH run (τ0 from its training summary; the configured one while it runs):", "",
                  gate_table(outputs, switch_runs, schedules, profile), "",
                  ("The teacher share of each run's training rollouts by response position (table and plot) is in "
                   "the SWITCH teacher share section above."), ""]
    else:
        lines += ["No SWITCH run.", ""]
    return lines
