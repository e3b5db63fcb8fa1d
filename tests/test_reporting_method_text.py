"""The Methods table of docs/RESULTS.md: each run's batches and loss in words, from the validated configuration."""
from __future__ import annotations

import pytest

from switch_core.config import ConfigError, MethodConfig, RolloutConfig, validate_dict
from switch_core.reporting.method_text import (
    batches_text,
    describe_run,
    generator_text,
    loss_text,
    methods_table,
)


def test_loss_text_names_the_divergence_its_parameter_and_the_ce_mix() -> None:
    assert loss_text(MethodConfig(loss="ce", kd_ratio=0.0)) == "cross-entropy on the batch's response tokens (no teacher)"
    assert loss_text(MethodConfig(loss="rkl")) == "reverse KL KL(q‖p)"
    assert loss_text(MethodConfig(loss="srkl", alpha=0.3)) == "skew reverse KL KL(q‖αq+(1−α)p) (α = 0.3)"
    assert loss_text(MethodConfig(loss="fkl", kd_ratio=0.25)) == "0.75·cross-entropy + 0.25·forward KL KL(p‖q)"
    assert loss_text(MethodConfig(loss="jsd", beta=0.5)).endswith("(β = 0.5)")
    pg = MethodConfig(loss="rkl", data="policy_gradient", single_step_reg=False, ppo_clip=0.1, gamma=1.0)
    assert loss_text(pg) == "sequence-level reverse KL by PPO (clip 0.1, γ 1)"


def test_generator_text_states_the_threshold_schedule_and_tau0() -> None:
    calibrated = RolloutConfig(target_teacher_share=0.4, decay=0.05)
    assert generator_text("switch", calibrated) == (
        "SWITCH rollouts (the teacher writes a token when JSD > τ_t = τ0·exp(−0.05·t); τ0 calibrated inside (0, ln 2] "
        "towards a 40% teacher share)")
    linear = RolloutConfig(schedule="linear", tau0=0.2, max_new_tokens=32)
    assert "τ_t = τ0·(1 − t/32); τ0 = 0.2" in generator_text("switch", linear)
    assert generator_text("mixture", RolloutConfig(mixture_alpha=0.2)) == "rollouts sampled from 0.2·p + 0.8·q"
    assert generator_text("random", RolloutConfig(random_rate=0.3)).endswith("(teacher with probability 0.3)")
    assert generator_text("skd", RolloutConfig(skd_top_k=25)).endswith("outside its top 25)")
    assert "exceeds 2× its mean over the previous 10 tokens" in generator_text(
        "adaswitch", RolloutConfig(adaswitch_k=2.0, adaswitch_window=10))


def test_batches_text_per_source() -> None:
    rollout = RolloutConfig(max_new_tokens=16)
    assert batches_text(MethodConfig(), rollout) == "the training split's reference responses"
    fresh = batches_text(MethodConfig(data="rollout", rollout_strategy="student"), rollout)
    assert fresh == "fresh student rollouts (SGOs) of up to 16 new tokens"
    mixed = MethodConfig(data="mixed", on_policy_fraction=0.25, replay=True, replay_capacity=50,
                         rollout_strategy="teacher")
    assert batches_text(mixed, rollout) == ("teacher rollouts of up to 16 new tokens, drawn from a replay buffer of 50 "
                                            "with probability 0.25, else reference responses")
    # a method without its own strategy takes the engine's (rollout.strategy)
    assert batches_text(MethodConfig(data="rollout"), rollout).startswith("fresh SWITCH rollouts")


def test_describe_run_applies_the_runs_overrides_and_validates_them() -> None:
    config = validate_dict({
        "optim": {"lr": 1e-4, "batch_size": 4, "micro_batch_size": 4, "max_steps": 10},
        "runs": {"switch-fkl": {"method": "switch", "init_from": "student-init",
                                "overrides": {"methods.switch.loss": "fkl", "rollout.tau0": 0.5}},
                 "gkd": {"method": "gkd"}},
    })
    switch = describe_run(config, "switch-fkl")
    assert (switch.method, switch.init_from, switch.loss) == ("switch", "student-init", "forward KL KL(p‖q)")
    assert "τ0 = 0.5" in switch.batches and switch.optimizer == "lr 0.0001, batch 4, 10 steps"
    assert describe_run(config, "gkd").loss.endswith("(β = 0.1)")  # the method default (docs/METHOD.md §6.6)
    table = methods_table({"switch-fkl": switch})
    assert table.splitlines()[2].startswith("| switch-fkl | switch | student-init | fresh SWITCH rollouts")
    assert table.splitlines()[2].endswith("| best dev ROUGE-L on 32 dev examples, checked at each epoch end and at the "
                                          "last step | – |")
    assert methods_table({"a": switch}, {"a": "25%"}).endswith("| 25% |")
    with pytest.raises(ConfigError, match="unknown run 'swtich-fkl'"):
        describe_run(config, "swtich-fkl")
