"""One declaration per rollout setting: RolloutSettings and the rollout / calibrate options take their defaults and
ranges from config.RolloutConfig; the JSD-range arithmetic (τ0 > ln 2) against hand-computed values; calibration
returns settings."""
from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import torch
from test_rollout_calibrate import STUDENT_LOGITS, TEACHER_LOGITS, ConstantLM

from switch_core.commands import calibrate as calibrate_command
from switch_core.commands import rollout as rollout_command
from switch_core.commands.rollout_inputs import OptionError, rollout_config
from switch_core.config import DataConfig, MethodConfig, RolloutConfig
from switch_core.data.tokenize import left_pad
from switch_core.divergences import jensen_shannon
from switch_core.rollout import (
    JSD_MAX,
    CalibrationError,
    RolloutSettings,
    RolloutSettingsError,
    ScheduleError,
    calibrate_settings,
    calibrate_tau0,
    never_crossed_tau0,
    student_only_positions,
    threshold,
)
from switch_core.rollout.schedules import gate_summary

LN2 = 0.6931471805599453
DECODING = ("strategy", "schedule", "tau0", "decay", "horizon", "random_rate", "mixture_alpha", "skd_top_k",
            "adaswitch_window", "adaswitch_k", "max_new_tokens",
            "greedy", "temperature", "top_k", "top_p")


def test_jsd_max_is_ln2_and_reached_by_disjoint_distributions() -> None:
    assert JSD_MAX == LN2
    p = torch.tensor([[0.0, -math.inf]])
    q = torch.tensor([[-math.inf, 0.0]])
    assert jensen_shannon(q, p, beta=0.5).item() == pytest.approx(LN2, rel=1e-6)


def test_student_only_positions_exponential_by_hand() -> None:
    assert student_only_positions("exponential", tau0=0.5, decay=0.1) == 0.0  # below ln 2: none
    assert student_only_positions("exponential", tau0=LN2, decay=0.1) == 0.0
    # τ0 = ln 2 · e²: τ_t = ln 2 · e^(2 − 0.1 t) > ln 2 exactly for t < 20
    assert student_only_positions("exponential", tau0=LN2 * math.exp(2.0), decay=0.1) == pytest.approx(20.0)
    # τ0 = 44.36 = 64.0 · ln 2 (to 4 digits): ln 64 / 0.1 = 41.59
    assert student_only_positions("exponential", tau0=44.36, decay=0.1) == pytest.approx(41.59, abs=0.01)
    assert student_only_positions("exponential", tau0=1.0, decay=0.0) == math.inf  # never decays to ln 2


def test_student_only_positions_linear_and_constant_by_hand() -> None:
    # τ_t = 2 ln 2 · (1 − t/100) > ln 2  <=>  t < 50
    assert student_only_positions("linear", tau0=2 * LN2, horizon=100) == pytest.approx(50.0)
    assert student_only_positions("linear", tau0=0.3, horizon=100) == 0.0
    assert student_only_positions("constant", tau0=0.7) == math.inf
    assert student_only_positions("constant", tau0=0.69) == 0.0


def test_student_only_positions_agree_with_the_thresholds() -> None:
    """The count is where τ_t crosses ln 2: above it before, at or below it from there."""
    for schedule, kwargs in (("exponential", {"decay": 0.07}), ("linear", {"horizon": 64})):
        x = student_only_positions(schedule, tau0=3.1, **kwargs)
        tau = threshold(schedule, torch.arange(80), tau0=3.1, **kwargs).double()
        first = math.ceil(x)
        assert (tau[:first] > LN2).all() and (tau[first:] <= LN2 + 1e-6).all()


def test_gate_summary_by_hand() -> None:
    """The gate can choose at t only where τ_t < ln 2: τ0 = ln 2·e^2, λ = 0.1 blocks t = 0..20 (τ_20 = ln 2)."""
    gate = gate_summary("exponential", tau0=LN2 * math.exp(2.0), steps=30, decay=0.1)
    assert gate == {"tau0": LN2 * math.exp(2.0), "position_switch": True, "student_only_positions": 21,
                    "gate_active_share": 9 / 30}
    at_ln2 = gate_summary("exponential", tau0=LN2, steps=128, decay=0.1)  # τ_0 = ln 2 exactly: JSD > τ_0 impossible
    assert (at_ln2["position_switch"], at_ln2["student_only_positions"], at_ln2["gate_active_share"]) == (
        False, 1, 127 / 128)
    assert gate_summary("exponential", tau0=0.5, steps=10, decay=0.1)["gate_active_share"] == 1.0
    assert gate_summary("constant", tau0=0.7, steps=10)["student_only_positions"] == 10
    linear = gate_summary("linear", tau0=2 * LN2, steps=100, horizon=100)  # τ_t >= ln 2 iff t <= 50
    assert (linear["student_only_positions"], linear["gate_active_share"]) == (51, 0.49)
    with pytest.raises(ScheduleError, match="steps=0"):
        gate_summary("constant", tau0=0.1, steps=0)


def test_never_crossed_tau0_by_hand() -> None:
    assert never_crossed_tau0("exponential", steps=20, decay=0.1) == pytest.approx(LN2 * math.exp(1.9), rel=1e-6)
    assert never_crossed_tau0("exponential", steps=1, decay=0.1) == pytest.approx(LN2)
    assert never_crossed_tau0("linear", steps=5, horizon=10) == pytest.approx(LN2 / 0.6, rel=1e-6)  # τ_4 = 0.6 τ0
    assert never_crossed_tau0("linear", steps=11, horizon=10) == math.inf  # τ_10 = 0
    assert never_crossed_tau0("constant", steps=300) == pytest.approx(LN2)
    # consistent with the forward count: that τ0 leaves (almost exactly) the 20 positions to the student
    assert student_only_positions("exponential", tau0=LN2 * math.exp(1.9), decay=0.1) == pytest.approx(19.0)


def test_schedule_parameters_are_required_by_the_schedule_that_uses_them() -> None:
    with pytest.raises(ScheduleError, match="decay=None"):
        threshold("exponential", 3, tau0=0.1)
    with pytest.raises(ScheduleError, match="horizon=None"):
        student_only_positions("linear", tau0=1.0)
    with pytest.raises(ScheduleError, match="steps=0"):
        never_crossed_tau0("constant", steps=0)


def test_settings_defaults_and_ranges_are_the_schemas() -> None:
    settings, schema = RolloutSettings(pad_token_id=0), RolloutConfig()
    shared = {f.name for f in dataclasses.fields(RolloutSettings)} & set(RolloutConfig.model_fields)
    assert set(DECODING) <= shared
    assert all(getattr(settings, name) == getattr(schema, name) for name in shared)
    assert settings.tau0 is None and settings.needs_calibration
    assert settings.teacher_logits_dtype == MethodConfig().teacher_logits_dtype
    coerced = RolloutSettings(pad_token_id=0, tau0=1).tau0
    assert coerced == 1.0 and isinstance(coerced, float)
    for name, value in (("tau0", math.inf), ("temperature", math.nan), ("top_k", 1.5), ("decay", -0.1)):
        with pytest.raises(RolloutSettingsError, match=name):
            RolloutSettings(pad_token_id=0, **{name: value})


def test_thresholds_without_tau0() -> None:
    with pytest.raises(RolloutSettingsError, match="tau0=None.*calibrate"):
        RolloutSettings(pad_token_id=0).thresholds()
    student = RolloutSettings(pad_token_id=0, strategy="student", max_new_tokens=3)
    assert not student.needs_calibration and torch.isnan(student.thresholds()).all()


def test_from_config_copies_the_section_and_applies_the_method() -> None:
    config = RolloutConfig(strategy="random", schedule="linear", tau0=0.4, decay=0.2, horizon=9, random_rate=0.3,
                           mixture_alpha=0.6, skd_top_k=7, adaswitch_window=4, adaswitch_k=1.5, max_new_tokens=17,
                           greedy=True, temperature=0.7, top_k=5, top_p=0.9)
    plain = RolloutSettings.from_config(config, pad_token_id=3, stop_token_ids=[2, 4])
    assert all(getattr(plain, name) == getattr(config, name) for name in DECODING)
    assert (plain.pad_token_id, plain.stop_token_ids, plain.compute_divergence) == (3, (2, 4), True)
    student_method = MethodConfig(data="rollout", rollout_strategy="student", teacher_logits_dtype="bfloat16")
    imitkd = RolloutSettings.from_config(config, student_method, pad_token_id=3, stop_token_ids=[2])
    assert (imitkd.strategy, imitkd.teacher_logits_dtype, imitkd.compute_divergence) == ("student", "bfloat16", False)
    switch = RolloutSettings.from_config(config.model_copy(update={"strategy": "switch"}), MethodConfig(data="rollout"),
                                         pad_token_id=3, stop_token_ids=[2])
    assert (switch.strategy, switch.compute_divergence) == ("switch", True)
    minillm = MethodConfig(data="policy_gradient", loss="rkl", rollout_strategy="mixture")
    policy = RolloutSettings.from_config(config, minillm, pad_token_id=3, stop_token_ids=[2])
    assert (policy.strategy, policy.compute_divergence) == ("mixture", True)
    for strategy, divergence in (("adaswitch", True), ("skd", False)):  # adaswitch's gate acts on the JSD
        peer = RolloutSettings.from_config(config, MethodConfig(data="rollout", rollout_strategy=strategy),
                                           pad_token_id=3, stop_token_ids=[2])
        assert (peer.strategy, peer.compute_divergence, peer.needs_divergence) == (strategy, divergence, divergence)
        assert peer.runs_teacher and peer.runs_student
    for name, value in (("skd_top_k", 0), ("adaswitch_window", 0), ("adaswitch_k", 0.0), ("adaswitch_k", math.inf)):
        with pytest.raises(RolloutSettingsError, match=name):
            RolloutSettings(pad_token_id=0, **{name: value})


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("module", [rollout_command, calibrate_command])
def test_command_defaults_are_the_schema_defaults(module) -> None:
    args = _parse(module, ["--teacher", "t", "--student", "s", "--prompts", "p.jsonl", "--out", "o"])
    fields = [name for name in vars(args) if name in RolloutConfig.model_fields]
    assert {"max_new_tokens", "decay", "schedule", "batch_size", "top_p", "greedy"} <= set(fields)
    assert all(getattr(args, name) == getattr(RolloutConfig(), name) for name in fields)
    assert rollout_config(args) == RolloutConfig()
    assert args.max_prompt_length == DataConfig().max_prompt_length
    calibration = {"target_teacher_share", "calibration_tolerance", "calibration_evaluations", "calibration_prompts"}
    assert calibration <= set(fields)
    if module is rollout_command:
        assert {"strategy", "tau0", "random_rate", "mixture_alpha", "skd_top_k", "adaswitch_window",
                "adaswitch_k"} <= set(fields)


def test_command_help_is_the_field_description(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    rollout_command.add_arguments(parser)
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--decay DECAY λ of τ_t = τ0·exp(−λ·t), per response token. (default: 0.1)" in text


def test_command_options_are_validated_by_the_schema() -> None:
    argv = ["--teacher", "t", "--student", "s", "--prompts", "p.jsonl", "--out", "o"]
    with pytest.raises(OptionError, match=r"--top-p 2.0: Input should be less than or equal to 1"):
        rollout_config(_parse(rollout_command, [*argv, "--top-p", "2"]))
    with pytest.raises(OptionError, match=r"--target-share 1.0: Input should be less than 1"):
        rollout_config(_parse(calibrate_command, [*argv, "--target-share", "1"]))


def test_calibration_returns_the_settings_with_the_chosen_tau0() -> None:
    student, teacher = ConstantLM(STUDENT_LOGITS), ConstantLM(TEACHER_LOGITS)
    settings = RolloutSettings(pad_token_id=0, max_new_tokens=20, greedy=True, keep_teacher_logits=True)
    batches = [left_pad([[4, 4], [4]], pad_token_id=0)]
    result = calibrate_tau0(student, teacher, batches, settings, target_share=0.5, tolerance=0.0)
    assert result.settings == dataclasses.replace(settings, tau0=result.tau0)  # everything else as given
    assert not result.settings.needs_calibration
    assert result.to_dict()["tau0"] == result.tau0
    with pytest.raises(CalibrationError, match=r"tolerance=1.5: .*rollout.calibration_tolerance"):
        calibrate_tau0(student, teacher, batches, settings, tolerance=1.5)


def test_calibrate_settings_follows_the_config() -> None:
    """The first calibration_prompts prompts, in batches of batch_size, searched with the config's target, tolerance
    and budget: the same search as calling calibrate_tau0 with those values (the stub's share at ln 2 is 0.45 and
    every share a multiple of 0.05, so a 0.62 target keeps the bisection of (0, ln 2] going until the budget of 4
    runs out)."""
    student, teacher = ConstantLM(STUDENT_LOGITS), ConstantLM(TEACHER_LOGITS)
    config = RolloutConfig(max_new_tokens=20, greedy=True, calibration_prompts=3, batch_size=2,
                           target_teacher_share=0.62, calibration_tolerance=0.0, calibration_evaluations=4)
    settings = RolloutSettings.from_config(config, MethodConfig(data="rollout"), pad_token_id=0, stop_token_ids=[])
    prompts = [[4, 4], [4], [4, 4, 4], [1, 2, 3, 4]]
    result = calibrate_settings(student, teacher, prompts, settings, config, seed=5)
    by_hand = calibrate_tau0(student, teacher, [left_pad(prompts[:2], 0), left_pad(prompts[2:3], 0)], settings,
                             target_share=0.62, tolerance=0.0, max_evaluations=4, seed=5)
    assert result == by_hand and len(result.history) == 4 and not result.bounded


def test_a_resumed_run_keeps_its_calibrated_tau0(tmp_path) -> None:
    """τ0 travels in the run's settings: saved in trainer.json, restored on resume, no second search."""
    from test_training_support import make_job, method

    from switch_core.tracking import JsonlTracker, read_jsonl_events
    from switch_core.training import train

    first = train(make_job(tmp_path, method("switch"), rollout={"tau0": None}, max_steps=1))
    assert first.tau0 is not None and first.calibration["tau0"] == first.tau0
    tracker = JsonlTracker(tmp_path / "events.jsonl")
    again = train(make_job(tmp_path, method("switch"), rollout={"tau0": None}, max_steps=1, resume=True),
                  tracker=tracker)
    assert (again.tau0, again.calibration) == (first.tau0, first.calibration)
    assert not [e for e in read_jsonl_events(tracker.path, "metrics") if "calibration/tau0" in e["metrics"]]


def test_a_tau0_above_ln2_is_named_a_position_switch_in_the_summary(tmp_path, capsys) -> None:
    """τ0 = ln 2·e^0.5 with λ = 0.1 over 12 positions: τ_t >= ln 2 for t <= 5, so 6 positions are the student's."""
    import json

    from test_training_support import make_job, method

    from switch_core.training import train
    from switch_core.training.job import SUMMARY_FILE

    tau0 = LN2 * math.exp(0.5)
    result = train(make_job(tmp_path, method("switch"), rollout={"tau0": tau0}, max_steps=1))
    gate = {"tau0": tau0, "position_switch": True, "student_only_positions": 6, "gate_active_share": 0.5}
    assert result.gate == gate
    assert json.loads((result.output_dir / SUMMARY_FILE).read_text())["gate"] == gate
    assert "position switch" in capsys.readouterr().err
    student = train(make_job(tmp_path, method("imitkd"), name="imitkd", max_steps=1))
    assert student.gate is None and "gate" not in student.to_dict()
