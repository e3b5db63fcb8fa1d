"""The gate in docs/RESULTS.md: the JSD profile's statistics, the per-run gate table, the stop-token table and the
plot, from a synthetic run folder; and what the document says when the inputs are missing."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from switch_core.reporting.gate_profile import (
    GateProfileError,
    exceed_shares,
    jsd_profile,
    position_buckets,
    quantile,
)
from switch_core.reporting.gate_report import stop_handling_lines
from switch_core.reporting.loading import ReportInputError
from switch_core.reporting.results_md import write_results_doc
from switch_core.reporting.scores import Score

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 24
LENGTHS = (24, 15, 5)
LN2 = math.log(2.0)


def _jsd_rows() -> list[list[float]]:
    """Row r, position t: 0.02·t + 0.001·r (far from every τ_t used below, so float32 thresholds decide alike)."""
    return [[0.02 * t + 0.001 * r for t in range(n)] for r, n in enumerate(LENGTHS)]


def _profile() -> dict:
    rows = _jsd_rows()
    return {"student": "student-sft", "teacher": "teacher", "records": ["a", "b", "c"], "seed": 0,
            "decoding": {"strategy": "student", "max_new_tokens": STEPS, "greedy": False, "temperature": 1.0,
                         "top_k": 0, "top_p": 1.0},
            **jsd_profile(rows, steps=STEPS), "jsd": rows}


SCHEDULES = {
    run: {"schedule": "exponential", "decay": 0.1, "horizon": None, "max_new_tokens": STEPS, "tau0": tau0}
    for run, tau0 in (("sw-bounded", None), ("sw-pos", 2.0), ("sw-running", None))
}
METHODS = {"sw-bounded": "switch", "sw-pos": "switch", "sw-running": "switch", "sw-never": "switch", "gkd": "gkd",
           "distillm": "distillm"}
ROLLOUT_TRAINING = {"sw-bounded": {"data": "rollout", "supervise_stop": False},
                    "gkd": {"data": "mixed", "supervise_stop": True},
                    "distillm": {"data": "adaptive", "supervise_stop": False}}


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _fake_run(root: Path, *, profile: bool = True) -> Path:
    run = root / "run"
    _write(run / "data" / "data_report.json", {"loaded": 10, "used": 10, "splits": {"train": 8, "dev": 2}})
    if profile:
        _write(run / "analysis" / "gate_profile.json", _profile())
    _write(run / "models" / "sw-bounded" / "train_summary.json", {
        "run": "sw-bounded", "steps": 10, "best_step": 10, "tau0": LN2,
        "calibration": {"tau0": LN2, "achieved_share": 0.78, "target_share": 0.53, "bounded": True,
                        "reason": "target teacher share 0.530 is out of reach ...",
                        "history": [{"tau0": LN2, "share": 0.78}]},
        # gate_summary("exponential", tau0=ln 2, steps=24, decay=0.1): τ_0 = ln 2 blocks t = 0 only
        "gate": {"tau0": LN2, "position_switch": False, "student_only_positions": 1, "gate_active_share": 23 / 24},
    })
    _write(run / "models" / "sw-never" / "train_summary.json", {  # a constant schedule at τ0 = 50: τ_t > ln 2 always
        "run": "sw-never", "steps": 10, "best_step": 10, "tau0": 50.0,
        "gate": {"tau0": 50.0, "position_switch": True, "student_only_positions": 24, "gate_active_share": 0.0}})
    _write(run / "models" / "sw-pos" / "train_summary.json", {"run": "sw-pos", "steps": 10, "best_step": 10, "tau0": 2.0})
    log = [
        {"event": "metrics", "step": 2, "metrics": {"rollout/stop_rate": 0.5, "rollout/stopped_length": 12.0,
                                                    "rollout/teacher_stop_prob": 0.2, "rollout/student_stop_prob": 0.3,
                                                    "source/ground_truth": 0.0}},
        {"event": "metrics", "step": 6, "metrics": {"rollout/stop_rate": 0.0, "source/ground_truth": 0.0}},
        {"event": "metrics", "step": 10, "metrics": {"rollout/stop_rate": 0.25, "rollout/stopped_length": 20.5,
                                                     "rollout/teacher_stop_prob": 0.05,
                                                     "rollout/student_stop_prob": 0.01, "source/ground_truth": 0.0}},
    ]
    (run / "tracking" / "sw-bounded").mkdir(parents=True)
    (run / "tracking" / "sw-bounded" / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in log))
    (run / "tracking" / "gkd").mkdir(parents=True)
    (run / "tracking" / "gkd" / "metrics.jsonl").write_text(json.dumps(
        {"event": "metrics", "step": 4, "metrics": {"source/ground_truth": 0.75, "train/loss": 1.0}}))
    return run


def _doc(run: Path, out: Path, **kwargs) -> tuple[str, object]:
    result = write_results_doc(run, out, commands=["x"], commit="abc", methods=METHODS, schedules=SCHEDULES,
                               rollout_training=ROLLOUT_TRAINING, **kwargs)
    return result.markdown.read_text(), result


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def _tau(tau0: float, t: int) -> float:
    return tau0 * math.exp(-0.1 * t)


def test_profile_statistics_equal_numpy_on_the_same_values() -> None:
    rows = _jsd_rows()
    profile = jsd_profile(rows, steps=STEPS)
    assert [(b["label"], b["count"]) for b in profile["buckets"]] == [("0–9", 25), ("10–19", 15), ("20–23", 4)]
    assert profile["rollouts"] == 3 and profile["tokens"] == sum(LENGTHS)
    every = np.array([v for row in rows for v in row], dtype=np.float64)
    first = np.array([v for row in rows for v in row[:10]], dtype=np.float64)
    for stats, values in ((profile["overall"], every), (profile["buckets"][0], first)):
        assert stats["mean"] == pytest.approx(values.mean(), abs=1e-15)
        for name, q in (("p10", 10), ("p25", 25), ("p50", 50), ("p75", 75), ("p90", 90)):
            assert stats[name] == pytest.approx(np.percentile(values, q), abs=1e-15)
    at_3 = profile["positions"][3]  # 0.06, 0.061, 0.062
    assert at_3["count"] == 3 and at_3["p50"] == pytest.approx(0.061) and at_3["p10"] == pytest.approx(0.0602)
    assert profile["positions"][20] == {"position": 20, "count": 1, "mean": 0.4, "p10": 0.4, "p25": 0.4, "p50": 0.4,
                                        "p75": 0.4, "p90": 0.4}


def test_quantile_buckets_and_exceed_share_hand_cases() -> None:
    assert quantile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5 and quantile([5.0], 0.9) == 5.0
    assert quantile([0.0, 10.0], 0.25) == 2.5 and quantile([0.0, 10.0], 1.0) == 10.0
    assert position_buckets(5) == [(0, 4)] and position_buckets(150)[-1] == (100, 149)
    shares = exceed_shares([[0.5, 0.1, 0.3], [0.2]], [0.25, 0.25, 0.25], steps=3)
    assert shares == {"overall": 0.5, "buckets": [{"label": "0–2", "share": 0.5, "count": 4}]}
    with pytest.raises(GateProfileError, match="row 0, position 1: JSD nan"):
        jsd_profile([[0.1, math.nan]], steps=2)
    with pytest.raises(GateProfileError, match="row 0 holds 3 values, more than the 2 positions"):
        jsd_profile([[0.1, 0.1, 0.1]], steps=2)
    empty = jsd_profile([], steps=12)
    assert empty["overall"] == {"count": 0, "mean": None, "p10": None, "p25": None, "p50": None, "p75": None,
                                "p90": None}


def test_gate_section_profile_table_gate_table_and_plot(tmp_path: Path) -> None:
    md, result = _doc(_fake_run(tmp_path), tmp_path / "docs" / "RESULTS.md")
    gate = _section(md, "The gate")
    assert ("| positions | tokens | mean | p10 | p25 | median | p75 | p90 | JSD > τ_t of `sw-bounded` | "
            "JSD > τ_t of `sw-pos` |") in gate
    rows = _jsd_rows()
    first = np.array([v for row in rows for v in row[:10]])
    # sw-bounded: τ_t = ln 2·e^(−0.1 t), crossed from t = 12 on; sw-pos: τ_t = 2·e^(−0.1 t), from t = 18 on
    assert all(0.02 * t + 0.002 < _tau(LN2, t) for t in range(12)) and 0.24 > _tau(LN2, 12)
    assert all(0.02 * t + 0.002 < _tau(2.0, t) for t in range(18)) and 0.36 > _tau(2.0, 18)
    cells = [f"{np.percentile(first, q):.4f}" for q in (10, 25, 50, 75, 90)]
    assert _row(gate, "0–9") == f"| 0–9 | 25 | {first.mean():.4f} | {' | '.join(cells)} | 0.0% | 0.0% |"
    assert _row(gate, "10–19").endswith(f"| {100 * 11 / 15:.1f}% | {100 * 2 / 15:.1f}% |")  # 12..19 + 12..14; 18, 19
    assert _row(gate, "20–23").startswith("| 20–23 | 4 | 0.4300 |") and _row(gate, "20–23").endswith("| 100.0% | 100.0% |")
    assert _row(gate, "all").endswith(f"| {100 * 15 / 44:.1f}% | {100 * 6 / 44:.1f}% |")
    assert "(3 dev prompts, 44 tokens, up to 24 new tokens, temperature 1.0)" in gate
    assert _row(gate, "sw-bounded") == (
        "| sw-bounded | 0.6931 (calibrated) | **bounded** at ln 2: τ0 = ln 2 already gives 78.0% teacher tokens "
        "(target 53.0%) | a gate (τ0 <= ln 2), able to choose from t = 1 | 95.8% | 34.1% |")
    # τ0 = 2 fixed, no gate entry in its summary: computed from the schedule; 2·e^(−0.1 t) >= ln 2 for t <= 10
    assert _row(gate, "sw-pos") == ("| sw-pos | 2 (fixed) | none (τ0 set) | a position switch at t = 11 (the student "
                                    f"alone before) | {100 * 13 / 24:.1f}% | {100 * 6 / 44:.1f}% |")
    assert _row(gate, "sw-running") == "| sw-running | – | – | – | – | – |"
    assert _row(gate, "sw-never") == ("| sw-never | 50 (fixed) | none (τ0 set) | no gate: τ_t >= ln 2 at all 24 "
                                      "positions, the student writes every token | 0.0% | – |")  # schedule not given
    assert "![JSD by response position](results/jsd_by_position.png)" in gate
    png = result.markdown.parent / "results" / "jsd_by_position.png"
    assert png in result.plots and png.read_bytes().startswith(PNG_MAGIC)
    assert not any("gate_profile" in m for m in result.missing)


def test_stop_token_table_first_and_last_logged_values(tmp_path: Path) -> None:
    md, _ = _doc(_fake_run(tmp_path), tmp_path / "RESULTS.md")
    stops = _section(md, "Stop tokens in rollout training")
    assert _row(stops, "`sw-bounded`") == (
        "| `sw-bounded` | `rollout` | off | 100.0% | 0.50 (step 2) → 0.25 (step 10) | 12.0 (step 2) → 20.5 (step 10) | "
        "0.200 (step 2) → 0.050 (step 10) | 0.300 (step 2) → 0.010 (step 10) |")
    assert _row(stops, "`gkd`") == ("| `gkd` | `mixed` | on | 25.0% | not logged | not logged | not logged | "
                                    "not logged |")
    assert _row(stops, "`distillm`") == "| `distillm` | `adaptive` | off | – | no training log yet |  |  |  |"
    # without the configured settings: the runs whose log has a stop rate, settings unknown
    bare = write_results_doc(_fake_run(tmp_path / "b"), tmp_path / "b.md", commands=["x"], commit="abc",
                             methods=METHODS).markdown.read_text()
    assert [line.split(" |")[0] for line in _section(bare, "Stop tokens in rollout training").splitlines()
            if line.startswith("| `")] == ["| `sw-bounded`"]


def test_stop_handling_sentences_name_the_rule_and_the_stop_rate_range() -> None:
    stops = {"teacher": Score(0.65, 0.02, 5), "sw": Score(0.30, 0.01, 5), "gkd": Score(0.55, 0.03, 5),
             "kd": Score(0.625, 0.05, 5)}
    off = {"sw": {"data": "rollout", "supervise_stop": False}, "gkd": {"data": "mixed", "supervise_stop": False}}
    rule, rates = stop_handling_lines(off, stops, ["teacher", "sw", "gkd", "kd"])
    assert rule.startswith("Stop-token handling: none of the mitigations") and "for all 2 runs" in rule
    assert rates == ("Their evaluation answers end with a stop token in 30.0% (`sw`) to 55.0% (`gkd`) of cases; the "
                     "other models: `teacher` 65.0%, `kd` 62.5% (Response length section). A stop-token collapse "
                     "shows as a rate near 0%.")
    mixed = {"sw": {"data": "rollout", "supervise_stop": True}, "gkd": {"data": "mixed", "supervise_stop": False}}
    assert stop_handling_lines(mixed, {}, []) == [(
        "Stop-token handling: `supervise_stop` on for `sw`, off for the other 1 runs trained on rollouts "
        "(docs/METHOD.md §6.10).")]
    assert stop_handling_lines({"sw": {}}, {}, []) == []  # settings unknown, nothing evaluated: nothing claimed


def test_missing_profile_and_runs_are_said(tmp_path: Path) -> None:
    md, result = _doc(_fake_run(tmp_path, profile=False), tmp_path / "RESULTS.md")
    gate = _section(md, "The gate")
    assert ("The JSD profile of the warmed-up student (analysis/gate_profile.json, stage `gate-profile`) is not there "
            "yet.") in gate
    assert "analysis/gate_profile.json (the warmed-up student's JSD profile, gate-profile)" in result.missing
    assert _row(gate, "sw-pos").endswith("| 54.2% | – |")  # no profile: no share of tokens above τ_t
    assert not (tmp_path / "results" / "jsd_by_position.png").exists()
    only_data = tmp_path / "only"
    _write(only_data / "data" / "data_report.json", {"loaded": 1, "used": 1, "splits": {"train": 1}})
    md = write_results_doc(only_data, tmp_path / "o.md", commands=["x"], commit=None,
                           methods={"kd": "kd"}).markdown.read_text()
    assert "No run trained on rollouts." in _section(md, "Stop tokens in rollout training")
    assert "No SWITCH run." in _section(md, "The gate")


def test_a_profile_without_its_keys_is_an_error_naming_the_file(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    bad = run / "analysis" / "gate_profile.json"
    _write(bad, {"student": "student-sft"})
    with pytest.raises(ReportInputError, match=f"{bad} lacks decoding, rollouts, tokens.*switch-kd gate-profile"):
        _doc(run, tmp_path / "R.md")
