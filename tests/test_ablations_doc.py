"""docs/ABLATIONS.md from synthetic ablation run folders: table numbers (ROUGE-L over seeds, teacher share overall and
by position, stop rate, length, τ0 and λ), the reading's verdicts, the not-run listing, byte-identical reruns, and
the command line."""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

from switch_core.cli import main
from switch_core.commands.ablation_doc import parse_ablation
from switch_core.config import ConfigError, load_config
from switch_core.grids import grid_points
from switch_core.reporting.ablation_reading import AGAINST, DIRECTION, HOLDS, NOT_RUN, NOT_SEEN, verdict
from switch_core.reporting.ablations import (
    AblationSpec,
    CellSettings,
    cell_settings,
    read_ablation,
    reference_settings,
)
from switch_core.reporting.ablations_md import GapSpec, write_ablations_doc
from switch_core.reporting.loading import ReportInputError
from switch_core.reporting.scores import Comparison

SEEDS = (1, 2, 3)
BENCHMARKS = ("dolly", "sinst")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _evaluation(run: Path, model: str, rouge: dict[str, list[float]], stops: dict[str, list[float]] | None = None,
                lengths: dict[str, list[float]] | None = None) -> None:
    """eval/<model>/<bench>/metrics.json with the given per-seed ROUGE-L (and stop rates, response lengths)."""
    for bench, values in rouge.items():
        per_seed = [{"seed": seed, "rouge_l": r, "bleu": 1.0, "exact_match": 0.0,
                     "mean_prediction_length": (lengths or {}).get(bench, [20.0] * 3)[i],
                     "stopped_fraction": (stops or {}).get(bench, [1.0] * 3)[i],
                     "by_length": {"[0,5]": {"n": 5, "rouge_l": r}}}
                    for i, (seed, r) in enumerate(zip(SEEDS, values))]
        path = run / "eval" / model / bench / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "benchmark": bench, "model": f"models/{model}", "num_examples": 5, "available_examples": 50, "limit": 5,
            "protocol": {"seeds": list(SEEDS), "max_new_tokens": 64}, "per_seed": per_seed,
            "aggregate": {k: {"mean": 0.0, "sd": 0.0} for k in ("rouge_l", "bleu", "exact_match")},
        }))


def _shifted(base: list[float], shift: float) -> dict[str, list[float]]:
    """Per-seed ROUGE-L on dolly = base + shift, on sinst = base + shift + 10: the per-seed average is base + shift + 5."""
    return {"dolly": [v + shift for v in base], "sinst": [v + shift + 10 for v in base]}


def _summary(run: Path, name: str, tau0: float | None, calibrated: bool = False, bounded: bool = False) -> None:
    path = run / "models" / name / "train_summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    calibration = {"tau0": tau0, "achieved_share": 0.5, "bounded": bounded}
    path.write_text(json.dumps({"run": name, "steps": 10, "best_step": 10, "best": {}, "final": {}, "tau0": tau0}
                               | ({"calibration": calibration} if calibrated else {})))


def _trace(run: Path, name: str, sources: list[str], steps: int = 2) -> None:
    """A trace of ``steps`` rollouts, each with the given per-position sources."""
    path = run / "state" / name / "rollout_traces.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps({"step": s, "sources": sources}) for s in range(1, steps + 1)))


T, S = "teacher", "student"
SCHEDULE_TRACES = {"exponential": [S] * 5 + [T] * 5, "linear": [T, S] * 5, "constant": [T] * 3 + [S] * 7}
"""Overall teacher shares 50%, 50%, 30%; positions 0–4: 0%, 60%, 60%; positions 5–9: 100%, 40%, 0%."""
SCHEDULE_BASE = {"exponential": [30.0, 31.0, 32.0], "linear": [25.0, 26.0, 27.0], "constant": [24.5, 25.5, 27.5]}
"""Per-seed averages (base + 5): exponential 35, 36, 37 (36.00 ± 1.00); linear 30, 31, 32 (31.00 ± 1.00); constant
29.5, 30.5, 32.5 (30.83 ± 1.53)."""


def _schedules(run: Path, base: dict[str, list[float]] = SCHEDULE_BASE) -> AblationSpec:
    points = grid_points("abl-schedules", {"schedule": list(SCHEDULE_TRACES)})
    for (cell, point), calibrated in zip(points.items(), (True, False, False)):
        schedule = point["schedule"]
        _evaluation(run, cell, _shifted(base[schedule], 0.0),
                    stops={"dolly": [0.8, 0.9, 1.0], "sinst": [0.6, 0.7, 0.8]},
                    lengths={"dolly": [20.0, 22.0, 24.0], "sinst": [30.0, 32.0, 34.0]})
        _summary(run, cell, 0.25 if calibrated else 0.3, calibrated)
        _trace(run, cell, SCHEDULE_TRACES[schedule])
    _evaluation(run, "switch", _shifted([20.0, 20.0, 23.0], 0.0))
    settings = {c: CellSettings("switch", p["schedule"], 0.1, horizon=64) for c, p in points.items()}
    return AblationSpec("schedules", run, "abl-schedules", points, "presets/grids/paper-ablations.yaml:schedules",
                        settings, references=("switch", "distillm"), label="runs/x")


def _decay(run: Path) -> AblationSpec:
    points = grid_points("abl-decay", {"decay": [0.2, 0.1, 0.05]})
    bases = {0.2: [20.0, 21.0, 22.0], 0.1: [30.0, 31.0, 32.0], 0.05: [29.0, 31.0, 32.0]}
    traces = {0.2: [T] * 3 + [S] * 7, 0.1: [T] * 5 + [S] * 5, 0.05: [T] * 7 + [S] * 3}
    for cell, point in points.items():
        _evaluation(run, cell, _shifted(bases[point["decay"]], 0.0))
        _summary(run, cell, 0.2)
        _trace(run, cell, traces[point["decay"]])
    settings = {c: CellSettings("switch", "exponential", p["decay"]) for c, p in points.items()}
    return AblationSpec("decay", run, "abl-decay", points, "presets/grids/paper-ablations.yaml:decay", settings)


def _strategies(run: Path) -> AblationSpec:
    points = grid_points("abl-strategies", {"strategy": ["student", "teacher", "random", "skd", "switch"]})
    bases = {"student": [20.0, 21.0, 22.0], "teacher": [25.0, 26.0, 27.0], "random": [29.0, 30.0, 31.0],
             "skd": [35.0, 36.0, 37.0], "switch": [30.0, 31.0, 32.0]}
    traces = {"student": [S] * 10, "teacher": [T] * 10, "random": [T] * 2 + [S] * 8, "skd": [T] + [S] * 9,
              "switch": [T] * 5 + [S] * 5}
    for cell, point in points.items():
        _evaluation(run, cell, _shifted(bases[point["strategy"]], 0.0))
        _trace(run, cell, traces[point["strategy"]])
    settings = {c: CellSettings(p["strategy"], "exponential", 0.1) for c, p in points.items()}
    return AblationSpec("strategies", run, "abl-strategies", points, "presets/grids/paper-ablations.yaml:strategies",
                        settings)


def _gap(root: Path) -> GapSpec:
    """Small pair: SWITCH 36 vs distillm 35 (margin +1); large pair: SWITCH 31 vs distillm 26 (margin +5); gkd lower,
    `switch-b` (a SWITCH run) higher, `kd` only in the small folder: the strongest baseline in both is distillm."""
    small, large = root / "small", root / "large"
    for folder, sw, base, student in ((small, 30.0, 29.0, 22.0), (large, 25.0, 20.0, 12.0)):
        _evaluation(folder, "switch", _shifted([sw, sw + 1, sw + 2], 0.0))
        _evaluation(folder, "distillm", _shifted([base, base + 1, base + 2], 0.0))
        _evaluation(folder, "gkd", _shifted([base - 5, base - 4, base - 3], 0.0))
        _evaluation(folder, "switch-b", _shifted([sw + 9, sw + 10, sw + 11], 0.0))
        _evaluation(folder, "teacher", _shifted([40.0, 41.0, 42.0], 0.0))
        _evaluation(folder, "student-sft", _shifted([student, student + 1, student + 2], 0.0))
    _evaluation(small, "kd", _shifted([50.0, 51.0, 52.0], 0.0))
    # the large pair's SWITCH: stop rates 0.3, 0.5, 0.7 per seed (50 ± 20%), τ0 0.3, rollouts 80% teacher
    _evaluation(large, "switch", _shifted([25.0, 26.0, 27.0], 0.0),
                stops={"dolly": [0.2, 0.4, 0.6], "sinst": [0.4, 0.6, 0.8]})
    _summary(large, "switch", 0.3)
    _trace(large, "switch", [S] * 2 + [T] * 8)
    _trace(small, "switch", [S] * 5 + [T] * 5)
    for folder, layers in ((small, 20), (large, 6)):
        _model_config(folder, "student-sft", {"num_hidden_layers": layers})
    _model_config(large, "teacher", {"n_layer": 30})  # GPT-2's key
    return GapSpec(small, large, method_of={"switch-b": "switch"}, labels=("runs/small", "runs/large"),
                   settings={"switch": CellSettings("switch", "exponential", 0.1)})


def _model_config(run: Path, name: str, config: dict[str, int]) -> None:
    path = run / "models" / name / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))


def _row(md: str, label: str, after: str = "") -> str:
    text = md.split(after, 1)[1] if after else md
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def _claim_status(md: str, start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {start}")).split(" | ")[1].rstrip(" |")


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_schedules_table_numbers(tmp_path: Path) -> None:
    spec = _schedules(tmp_path / "run")
    doc = write_ablations_doc([spec], tmp_path / "docs" / "ABLATIONS.md", benchmarks=list(BENCHMARKS),
                              commands=["python -m flows.ablation --grid g:schedules"], commit="abc123")
    md = doc.markdown.read_text()
    # ROUGE-L: per benchmark and per-seed average (hand-computed: 35, 36, 37 -> 36.00 ± 1.00); best cell bold
    row = _row(md, "schedule=exponential")
    assert row == "| schedule=exponential | **31.00 ± 1.00** | **41.00 ± 1.00** | **36.00 ± 1.00** |"
    assert _row(md, "schedule=constant") == (f"| schedule=constant | {_cell([24.5, 25.5, 27.5])} | "
                                             f"{_cell([34.5, 35.5, 37.5])} | {_cell([29.5, 30.5, 32.5])} |")
    assert _row(md, "switch (reference run)").endswith(f"| {_cell([25.0, 25.0, 28.0])} |")
    assert "- evaluation of the reference `distillm`" in md
    # behaviour: τ0 (calibrated / set), λ only for the exponential schedule, share, stop rate (80 ± 10), length
    behaviour = "| cell | τ0 | λ |"
    assert _row(md, "schedule=exponential", behaviour) == (
        "| schedule=exponential | 0.2500 (calibrated) | 0.1 | 50.0% of 20 | 80.00 ± 10.00 | 27.00 ± 2.00 |")
    assert _row(md, "schedule=linear", behaviour).startswith("| schedule=linear | 0.3000 (set) | – (linear schedule, T = 64) "
                                                              "| 50.0% of 20 |")
    assert "| schedule=constant | 0.3000 (set) | – (constant schedule) | 30.0% of 20 |" in md
    # teacher share by position bucket
    positions = "Teacher share by response position"
    assert _row(md, "schedule=exponential", positions) == "| schedule=exponential | 0.0% (10) | 100.0% (10) |"
    assert _row(md, "schedule=linear", positions) == "| schedule=linear | 60.0% (10) | 40.0% (10) |"
    assert _row(md, "schedule=constant", positions) == "| schedule=constant | 60.0% (10) | 0.0% (10) |"
    assert "![schedules](ablations/schedules.png)" in md
    assert [p.name for p in doc.plots] == ["schedules.png"]
    assert doc.plots[0].read_bytes().startswith(PNG_MAGIC)


def test_tau0_at_the_calibration_bound_is_marked(tmp_path: Path) -> None:
    spec = _schedules(tmp_path / "run")
    _summary(tmp_path / "run", "abl-schedules-schedule_exponential", math.log(2), calibrated=True, bounded=True)
    md = write_ablations_doc([spec], tmp_path / "ABLATIONS.md", benchmarks=list(BENCHMARKS), commands=[],
                             commit=None).markdown.read_text()
    assert _row(md, "schedule=exponential", "| cell | τ0 | λ |").startswith(
        "| schedule=exponential | 0.6931 (calibrated, at the ln 2 bound) | 0.1 |")
    assert "| schedule=linear | 0.3000 (set) |" in md


def test_schedules_reading_clear_step_and_step_within_the_spread(tmp_path: Path) -> None:
    spec = _schedules(tmp_path / "run")
    doc = write_ablations_doc([spec], tmp_path / "ABLATIONS.md", benchmarks=list(BENCHMARKS), commands=[],
                              commit=None)
    md = doc.markdown.read_text()
    # exponential − linear = 5, pooled sd 1: clear; linear − constant = 0.17, pooled sqrt((1 + 2.33)/2) = 1.29: noise
    pooled = ((1.0 + statistics.variance([29.5, 30.5, 32.5])) / 2) ** 0.5
    assert "- exponential − linear, average ROUGE-L: +5.00 ROUGE-L, 5.0× the pooled seed sd 1.00: clear." in md
    assert (f"- linear − constant, average ROUGE-L: {31 - statistics.mean([29.5, 30.5, 32.5]):+.2f} ROUGE-L, "
            f"{(31 - statistics.mean([29.5, 30.5, 32.5])) / pooled:.1f}× the pooled seed sd {pooled:.2f}: "
            "within seed noise.") in md
    assert doc.claims["schedules"] == DIRECTION
    assert f"Verdict: **{DIRECTION}**" in md
    assert (f"- Exponential best of the three (the part of the claim every source states, docs/METHOD.md §1.1 item 5): "
            f"**{HOLDS}**.") in md
    assert "- Order of the means: exponential 36.00 > linear 31.00 > constant 30.83." in md
    assert "The shares differ by 20.0 points" in md  # 50% vs 30%: not matched
    # constant clearly lower: the claim holds
    clear = dict(SCHEDULE_BASE, constant=[20.0, 21.0, 22.0])
    doc = write_ablations_doc([_schedules(tmp_path / "run2", clear)], tmp_path / "B.md", benchmarks=list(BENCHMARKS),
                              commands=[], commit=None)
    assert doc.claims["schedules"] == HOLDS
    # exponential within the spread of linear, below it: not seen
    close = dict(SCHEDULE_BASE, exponential=[24.0, 26.0, 27.5])
    doc = write_ablations_doc([_schedules(tmp_path / "run3", close)], tmp_path / "C.md", benchmarks=list(BENCHMARKS),
                              commands=[], commit=None)
    assert doc.claims["schedules"] == NOT_SEEN


def test_verdict_rule() -> None:
    def c(diff: float, v: str) -> Comparison:
        return Comparison(diff, 1.0, v)

    assert verdict([c(3.0, "clear"), c(2.5, "clear")]) == HOLDS
    assert verdict([c(3.0, "clear"), c(0.5, "within seed noise")]) == DIRECTION
    assert verdict([c(3.0, "clear"), c(-0.5, "within seed noise")]) == NOT_SEEN
    assert verdict([c(3.0, "clear"), c(-2.5, "clear")]) == AGAINST
    assert verdict([c(1.0, "no seed sd")]) == DIRECTION


def test_decay_strategies_and_gap_readings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    specs = [_schedules(run), _decay(run), _strategies(run)]
    doc = write_ablations_doc(specs, tmp_path / "docs" / "ABLATIONS.md", benchmarks=list(BENCHMARKS), commands=[],
                              commit="abc", gap=_gap(tmp_path))
    md = doc.markdown.read_text()
    # λ = 0.1 (36 ± 1) vs 0.2 (26 ± 1): clear; vs 0.05 (35.67 ± 1.53): within noise -> same direction, not clear
    assert "- λ = 0.1 − λ = 0.2, average ROUGE-L: +10.00 ROUGE-L, 10.0× the pooled seed sd 1.00: clear." in md
    assert "- λ = 0.1 − λ = 0.05, average ROUGE-L: +0.33 ROUGE-L" in md
    assert doc.claims["decay"] == DIRECTION
    assert "Teacher share of the rollouts: λ = 0.2 30.0%, λ = 0.1 50.0%, λ = 0.05 70.0% (paper ≈ 53% at λ = 1/10)." in md
    # strategies: SWITCH 36 clearly above student (26), teacher (31), within noise of random (35), clearly below SKD
    assert "- SWITCH − student only, average ROUGE-L: +10.00 ROUGE-L, 10.0× the pooled seed sd 1.00: clear." in md
    assert "- SWITCH − SKD, average ROUGE-L: −5.00" in md or "- SWITCH − SKD, average ROUGE-L: -5.00" in md
    assert doc.claims["strategies"] == AGAINST
    assert "Not compared: no cell with strategy adaswitch." in md
    assert "random did not run at SWITCH's rate (rerun its cell with --set rollout.random_rate=0.50)" in md
    assert "| abl-decay-decay_0p1" not in md and "| decay=0.1 | 0.2000 (set) | 0.1 | 50.0% of 20 |" in md
    assert "| strategy=student | – | – (strategy student) | 0.0% of 20 |" in md
    # gap: margins +1 (small) and +5 (large), each with sd √2 (the sd of a difference of two scores of sd 1): change +4
    # against the pooled sd sqrt((1 + 1 + 1 + 1) / 2) = √2, 2.8× -> clear; distillm chosen as baseline
    assert "- small gap (`runs/small`): SWITCH − `distillm`, average ROUGE-L: +1.00 ROUGE-L, 1.0× the pooled seed " \
           "sd 1.00: within seed noise." in md
    assert "- Change of the margin, large − small gap: +4.00 ROUGE-L, 2.8× the pooled seed sd 1.41: clear." in md
    assert doc.claims["gap"] == HOLDS
    assert "Teacher − student, average ROUGE-L: small gap +18.00 (vs `student-sft`); large gap +28.00 (vs " \
           "`student-sft`)." in md
    assert _row(md, "large gap") == ("| large gap | 6 of 30 layers | `runs/large` | dolly, sinst | 31.00 ± 1.00 | "
                                     "26.00 ± 1.00 | 46.00 ± 1.00 | 18.00 ± 1.00 (`student-sft`) |")
    assert _row(md, "small gap").startswith("| small gap | 20 layers | `runs/small` |")  # no teacher config.json
    assert ("- SWITCH's teacher share of its training rollouts differs between the pairs (small gap 50.0%, large gap "
            "80.0%): the change of the margin mixes the gap with how much the teacher wrote.") in md
    assert _row(md, "large gap: switch") == "| large gap: switch | 0.3000 (set) | 0.1 | 80.0% of 20 | 50.00 ± 20.00 | " \
                                             "20.00 ± 0.00 |"
    assert _row(md, "small gap: switch") == "| small gap: switch | – | 0.1 | 50.0% of 20 | 100.00 ± 0.00 | 20.00 ± 0.00 |"
    assert _row(md, "large gap: distillm").startswith("| large gap: distillm | – | – | – | 100.00 ± 0.00 |")
    assert _row(md, "large gap: student-sft").startswith("| large gap: student-sft |")
    assert "| small gap: student-sft |" in md and "gap: gkd" not in md and "gap: teacher" not in md
    # by position: only the traced run (positions 0–4: 3 of 5 tokens from the teacher; 5–9: all)
    assert _row(md, "large gap: switch", after="Teacher share by response position of their training rollouts") == \
        "| large gap: switch | 60.0% (10) | 100.0% (10) |"
    assert sorted(p.name for p in doc.plots) == ["decay.png", "gap.png", "schedules.png", "strategies.png"]
    assert _claim_status(md, "Gap:") == HOLDS


def test_partial_inputs_list_the_claims_not_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    decay = _decay(tmp_path / "elsewhere")  # its points; given below with a folder where it never ran
    plots = tmp_path / "docs" / "ablations"
    plots.mkdir(parents=True)
    (plots / "strategies.png").write_bytes(PNG_MAGIC)  # stale plot of an earlier document
    doc = write_ablations_doc([_schedules(run), AblationSpec("decay", tmp_path / "empty", "abl-decay", decay.points,
                                                             decay.grid_spec)],
                              tmp_path / "docs" / "ABLATIONS.md", benchmarks=list(BENCHMARKS), commands=[],
                              commit=None, gap=GapSpec(run, None))
    md = doc.markdown.read_text()
    assert doc.claims == {"schedules": DIRECTION, "decay": NOT_RUN, "strategies": NOT_RUN, "gap": NOT_RUN}
    assert _claim_status(md, "Decay:") == ("not run: `abl-decay-decay_0p2` not evaluated on every benchmark; "
                                           "`abl-decay-decay_0p1` not evaluated on every benchmark; "
                                           "`abl-decay-decay_0p05` not evaluated on every benchmark")
    assert _claim_status(md, "Strategies:") == "not run: the ablation was not given"
    assert _claim_status(md, "Gap:") == "not run: no large-gap run folder given (--gap-large)"
    assert "Not run yet: no evaluation, training summary or rollout trace of these cells in `" in md
    assert "## Intervention strategies (`strategies`)" in md
    assert not (plots / "strategies.png").exists()
    assert "- code: git commit unknown (pass `--commit`)" in md


def test_nothing_to_report_writes_nothing(tmp_path: Path) -> None:
    spec = _decay(tmp_path / "x")
    empty = AblationSpec("decay", tmp_path / "none", "abl-decay", spec.points, spec.grid_spec)
    with pytest.raises(ReportInputError, match="no output of any ablation cell"):
        write_ablations_doc([empty], tmp_path / "A.md", benchmarks=list(BENCHMARKS), commands=[], commit=None)
    assert not (tmp_path / "A.md").exists()


def test_reruns_are_byte_identical(tmp_path: Path) -> None:
    run = tmp_path / "run"
    specs = [_schedules(run), _decay(run), _strategies(run)]
    out = tmp_path / "docs" / "ABLATIONS.md"

    def write() -> dict[str, bytes]:
        doc = write_ablations_doc(specs, out, benchmarks=list(BENCHMARKS), commands=["cmd"], commit="abc",
                                  gap=_gap(tmp_path), notes=["2 cores"])
        return {p.name: p.read_bytes() for p in [doc.markdown, *doc.plots]}

    first = write()
    assert write() == first
    assert len(first) == 5


def test_cell_settings_from_the_configuration_or_the_grid() -> None:
    points = grid_points("abl-x", {"schedule": ["exponential", "linear"], "decay": [0.2]})
    config = load_config(None, overrides={"runs": {"abl-x-schedule_linear": {
        "method": "switch", "overrides": {"rollout.schedule": "linear", "rollout.decay": 0.3, "rollout.horizon": 40}}}})
    settings = cell_settings(config, "switch", points)
    # the horizon T: rollout.horizon where set, else rollout.max_new_tokens
    max_new = config.rollout.max_new_tokens
    assert settings == {"abl-x-schedule_exponential": CellSettings("switch", "exponential", 0.2, horizon=max_new),
                        "abl-x-schedule_linear": CellSettings("switch", "linear", 0.3, horizon=40)}
    strategies = cell_settings(load_config(None), "switch", grid_points("s", {"strategy": ["skd"]}))
    assert strategies == {"s-strategy_skd": CellSettings("skd", "exponential", 0.1, horizon=max_new)}


def test_a_student_strategy_cell_writes_no_trace_and_is_not_missing_one(tmp_path: Path) -> None:
    points = grid_points("s", {"strategy": ["student", "skd"]})
    settings = cell_settings(load_config(None), "switch", points)
    assert settings["s-strategy_student"] == CellSettings("student", "exponential", 0.1, traced=False,
                                                          horizon=load_config(None).rollout.max_new_tokens)
    assert settings["s-strategy_skd"].traced
    run = tmp_path / "run"
    for cell in points:
        _evaluation(run, cell, _shifted([30.0, 31.0, 32.0], 0.0))
        _summary(run, cell, 0.3)
    result = read_ablation(AblationSpec("strategies", run, "s", points, "g:strategies", settings), list(BENCHMARKS))
    assert result.missing == ["state/s-strategy_skd/rollout_traces.jsonl"]


def test_read_ablation_lists_missing_outputs(tmp_path: Path) -> None:
    spec = _schedules(tmp_path / "run")
    (tmp_path / "run" / "eval" / "abl-schedules-schedule_linear" / "sinst" / "metrics.json").unlink()
    (tmp_path / "run" / "state" / "abl-schedules-schedule_constant" / "rollout_traces.jsonl").unlink()
    result = read_ablation(spec, list(BENCHMARKS))
    assert result.missing == ["evaluation of `abl-schedules-schedule_linear` on sinst",
                              "state/abl-schedules-schedule_constant/rollout_traces.jsonl",
                              "evaluation of the reference `distillm`"]
    assert result.rows["abl-schedules-schedule_linear"].average is None
    assert result.rows["abl-schedules-schedule_constant"].share is None


def test_parse_ablation() -> None:
    assert parse_ablation("schedules", "runs/x") == ("schedules", "runs/x", "abl-schedules")
    assert parse_ablation("decay=runs/y", "runs/x") == ("decay", "runs/y", "abl-decay")
    assert parse_ablation("decay=runs/y:my-study", "runs/x") == ("decay", "runs/y", "my-study")
    with pytest.raises(ConfigError, match="NAME\\[=RUN_DIR\\[:STUDY\\]\\]"):
        parse_ablation("=runs/y", "runs/x")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    _schedules(run)
    out = tmp_path / "docs" / "ABLATIONS.md"
    args = ["ablation-doc", "--set", f"run_dir={run}", "--set", "eval.benchmarks=[dolly, sinst]",
            "--ablation", "schedules", "--ablation", "decay", "--out", str(out), "--note", "2 cores", "--commit", "c0"]
    assert main(args) == 0
    md = out.read_text()
    assert "| schedule=exponential | **31.00 ± 1.00** | **41.00 ± 1.00** | **36.00 ± 1.00** |" in md
    assert (f"python -m flows.ablation --set run_dir={run} " in md and "--grid presets/grids/paper-ablations.yaml:schedules "
            "--study abl-schedules" in md)
    assert ("prefect deployment run ablation/default -p grid=presets/grids/paper-ablations.yaml:decay "
            "-p study=abl-decay") in md
    assert "- 2 cores" in md and "- code: git commit `c0`" in md
    printed = capsys.readouterr().out
    assert "claim schedules: same direction, not clear" in printed and "claim decay: not run" in printed
    empty = ["ablation-doc", "--set", f"run_dir={tmp_path / 'none'}", "--out", str(tmp_path / "E.md")]
    assert main(empty) == 2
    assert "no output of any ablation cell" in capsys.readouterr().err and not (tmp_path / "E.md").exists()


def test_gap_with_a_baseline_missing_in_one_folder_is_not_run(tmp_path: Path) -> None:
    gap = _gap(tmp_path)
    (tmp_path / "large" / "eval" / "distillm" / "sinst" / "metrics.json").unlink()
    doc = write_ablations_doc([], tmp_path / "A.md", benchmarks=list(BENCHMARKS), commands=[], commit=None,
                              gap=GapSpec(gap.small_dir, gap.large_dir, baseline="distillm", labels=gap.labels))
    md = doc.markdown.read_text()
    assert doc.claims["gap"] == NOT_RUN
    assert _claim_status(md, "Gap:") == "not run: `distillm` not evaluated on every benchmark in `runs/large`"
    assert _row(md, "large gap").split(" | ")[5] == "–"  # the baseline's cell


def test_command_line_defaults_to_every_grid_of_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    _schedules(run)
    out = tmp_path / "A.md"
    assert main(["ablation-doc", "--set", f"run_dir={run}", "--set", "eval.benchmarks=[dolly, sinst]", "--out",
                 str(out)]) == 0
    md = out.read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == ["## Provenance", "## Status of the paper's claims", "## Threshold schedules (`schedules`)",
                        "## Decay λ of the exponential schedule (`decay`)", "## Intervention strategies (`strategies`)",
                        "## Teacher-student gap"]
    assert "claim strategies: not run" in capsys.readouterr().out
    assert ("(Reconstructed from the arguments, not recorded: the ablations may have run with other grids or cells; "
            "`--command` records the exact ones.)") in md
    # the schedules cells are all there; the other grids ran no cell: their guessed lines say so
    assert "# schedules:" not in md
    assert any(line.startswith("# decay: 0 of the ") and line.endswith(
        " cells of presets/grids/paper-ablations.yaml:decay found: the lines below are a guess, not the recorded "
        "commands") for line in md.splitlines())
    # a cell subset of another grid under the same study prefix
    (run / "models" / "abl-schedules-schedule_cosine").mkdir(parents=True)
    for folder in ("eval", "models", "state"):
        shutil.rmtree(run / folder / "abl-schedules-schedule_constant")
    assert main(["ablation-doc", "--set", f"run_dir={run}", "--set", "eval.benchmarks=[dolly, sinst]", "--out",
                 str(out), "--ablation", "schedules"]) == 0
    assert ("# schedules: 2 of the 3 cells of presets/grids/paper-ablations.yaml:schedules found, and 1 other "
            "abl-schedules-* cells: the lines below are a guess, not the recorded commands") in out.read_text()


def test_provenance_with_uncommitted_changes_compares_bare_shas(tmp_path: Path) -> None:
    spec = _schedules(tmp_path / "run")
    md = write_ablations_doc([spec], tmp_path / "A.md", benchmarks=list(BENCHMARKS), commands=[],
                             commit="abc123 + uncommitted changes",
                             generated_with="def456 + uncommitted changes").markdown.read_text()
    assert "- code: git commit `abc123` with uncommitted changes (not recorded)\n" in md
    assert ("- this document was generated with the code at `def456` with uncommitted changes; `git diff abc123 "
            "def456` shows what changed since the runs (committed changes only)\n") in md
    assert "+ uncommitted changes" not in md


def test_a_claim_read_on_a_subset_of_its_cells_is_incomplete(tmp_path: Path) -> None:
    spec = _strategies(tmp_path / "run")
    for strategy in ("teacher", "random", "skd"):
        shutil.rmtree(tmp_path / "run" / "eval" / f"abl-strategies-strategy_{strategy}")
    doc = write_ablations_doc([spec], tmp_path / "A.md", benchmarks=list(BENCHMARKS), commands=[], commit=None)
    md = doc.markdown.read_text()
    assert doc.claims["strategies"] == "incomplete: 2 of 5 cells"
    assert _claim_status(md, "Strategies").startswith("incomplete: 2 of 5 cells: `abl-strategies-strategy_teacher` "
                                                      "not evaluated on every benchmark")
    assert ("Verdict: **incomplete: 2 of 5 cells** (paper: SWITCH beats each); on the 2 cells compared: holds."
            in md)
    assert NOT_SEEN not in md
    # all five cells (the grid has no adaswitch cell): a verdict, not incomplete
    full = write_ablations_doc([_strategies(tmp_path / "run2")], tmp_path / "B.md", benchmarks=list(BENCHMARKS),
                               commands=[], commit=None)
    assert not full.claims["strategies"].startswith("incomplete")


def test_settings_table_shows_tau0_only_where_it_gates_and_lambda_of_the_switch_reference(tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = _strategies(run)
    for cell in spec.points:
        _summary(run, cell, 0.3)
    for ref in ("teacher", "switch"):
        _evaluation(run, ref, _shifted([30.0, 31.0, 32.0], 0.0))
        _summary(run, ref, 0.3)
    config = load_config(None, overrides={"runs": {"switch": {"method": "switch"}}})
    refs = reference_settings(config, ("teacher", "student-sft", "switch"))
    assert refs == {"switch": CellSettings("switch", "exponential", 0.1, horizon=config.rollout.max_new_tokens)}
    spec = AblationSpec(spec.name, run, spec.study, spec.points, spec.grid_spec, {**spec.settings, **refs},
                        references=("teacher", "switch"))
    md = write_ablations_doc([spec], tmp_path / "A.md", benchmarks=list(BENCHMARKS), commands=[],
                             commit=None).markdown.read_text()
    behaviour = "| cell | τ0 | λ |"
    assert _row(md, "strategy=student", behaviour).startswith("| strategy=student | – | – (strategy student) |")
    assert _row(md, "strategy=switch", behaviour).startswith("| strategy=switch | 0.3000 (set) | 0.1 |")
    assert _row(md, "teacher", behaviour).startswith("| teacher | – | – |")
    assert _row(md, "switch (reference run)", behaviour).startswith("| switch (reference run) | 0.3000 (set) | 0.1 |")
