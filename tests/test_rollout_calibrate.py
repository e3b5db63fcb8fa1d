"""τ0 calibration: exact targets with stub models whose share is known in closed form, and a tiny-model run."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config

from switch_core.data.tokenize import left_pad
from switch_core.rollout import CalibrationError, RolloutSettings, calibrate_tau0
from switch_core.rollout.calibrate import JSD_MAX, teacher_share

STUDENT_LOGITS = [0.0, 0.5, 0.0, 0.0, 0.0]
TEACHER_LOGITS = [0.0, 0.0, 0.0, 3.0, 0.0]


class ConstantLM(nn.Module):
    """Hugging Face-like stub with fixed next-token logits (so the JSD is the same at every step)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=len(logits))
        self.row = torch.tensor(logits)

    def get_output_embeddings(self) -> None:
        return None

    def forward(self, *, input_ids, cache, logits_to_keep, **kwargs):
        return SimpleNamespace(logits=self.row.expand(input_ids.shape[0], logits_to_keep, -1).clone(), cache=cache)


def _jsd64(q_logits: list[float], p_logits: list[float]) -> float:
    q, p = (np.exp(np.array(x)) / np.exp(np.array(x)).sum() for x in (q_logits, p_logits))
    m = 0.5 * (p + q)
    return float(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m)))


def _stub_setup() -> tuple[ConstantLM, ConstantLM, list[tuple[torch.Tensor, torch.Tensor]], RolloutSettings]:
    batches = [left_pad([[4, 4], [4]], pad_token_id=0), left_pad([[4]], pad_token_id=0)]
    settings = RolloutSettings(pad_token_id=0, max_new_tokens=20, decay=0.1, greedy=True)
    return ConstantLM(STUDENT_LOGITS), ConstantLM(TEACHER_LOGITS), batches, settings


def _closed_form_share(tau0: float, d: float, steps: int = 20, decay: float = 0.1) -> float:
    student_steps = sum(tau0 * math.exp(-decay * t) >= d for t in range(steps))
    return (steps - student_steps) / steps


@pytest.mark.parametrize("target", [0.5, 0.85])
def test_calibration_hits_a_reachable_target_exactly(target: float) -> None:
    student, teacher, batches, settings = _stub_setup()
    d = _jsd64(STUDENT_LOGITS, TEACHER_LOGITS)
    result = calibrate_tau0(student, teacher, batches, settings, target_share=target, tolerance=0.0)
    assert result.achieved_share == target and not result.bounded and result.reason is None
    assert _closed_form_share(result.tau0, d) == target
    # the switch step t* = 20 (1 - target) needs tau0 in [d e^{0.1 (t*-1)}, d e^{0.1 t*})
    switch = round(20 * (1 - target))
    assert d * math.exp(0.1 * (switch - 1)) <= result.tau0 < d * math.exp(0.1 * switch)
    assert result.history[0][0] == JSD_MAX
    assert all(share == _closed_form_share(tau0, d) for tau0, share in result.history)
    assert all(0 < tau0 <= JSD_MAX for tau0, _ in result.history)  # the search never leaves (0, ln 2]


def test_calibration_keeps_ln2_when_the_target_is_out_of_reach() -> None:
    """d = 0.2366 nats at every step: with tau0 = ln 2 the student keeps the steps t <= ln(ln 2 / d) / 0.1 = 10.75,
    i.e. 11 of 20, so the smallest share in (0, ln 2] is 9/20 = 0.45; a 25% target would need tau0 > ln 2."""
    student, teacher, batches, settings = _stub_setup()
    d = _jsd64(STUDENT_LOGITS, TEACHER_LOGITS)
    assert d == pytest.approx(0.2366170170, abs=1e-9) and _closed_form_share(JSD_MAX, d) == 0.45
    result = calibrate_tau0(student, teacher, batches, settings, target_share=0.25, tolerance=0.0)
    assert result.bounded and result.tau0 == JSD_MAX and result.achieved_share == 0.45
    assert result.history == ((JSD_MAX, 0.45),)  # one evaluation: nothing inside the range can do better
    assert "out of reach" in result.reason and "0.450" in result.reason
    assert "slower decay" in result.reason  # a faster decay lowers τ_t and gives *more* teacher tokens
    assert result.to_dict()["bounded"] is True and result.to_dict()["reason"] == result.reason
    within = calibrate_tau0(student, teacher, batches, settings, target_share=0.44, tolerance=0.02)
    assert not within.bounded and within.tau0 == JSD_MAX and within.history == ((JSD_MAX, 0.45),)


def test_calibration_returns_the_closest_evaluation_when_the_budget_runs_out() -> None:
    student, teacher, batches, settings = _stub_setup()
    result = calibrate_tau0(student, teacher, batches, settings, target_share=0.5, tolerance=0.0, max_evaluations=2)
    assert len(result.history) == 2
    best = min(result.history, key=lambda item: abs(item[1] - 0.5))
    assert (result.tau0, result.achieved_share) == best
    assert not result.bounded and "used its 2 evaluations" in result.reason  # missed the target: said, not silent
    assert result.to_dict()["reason"] == result.reason
    assert result.to_dict()["history"][0] == {"tau0": result.history[0][0], "share": result.history[0][1]}


def test_calibration_rejects_bad_arguments() -> None:
    student, teacher, batches, settings = _stub_setup()
    with pytest.raises(CalibrationError, match="target_share"):
        calibrate_tau0(student, teacher, batches, settings, target_share=1.0)
    with pytest.raises(CalibrationError, match="strategy"):
        calibrate_tau0(student, teacher, batches, RolloutSettings(pad_token_id=0, strategy="random"))
    with pytest.raises(CalibrationError, match="no prompt batches"):
        calibrate_tau0(student, teacher, [], settings)
    with pytest.raises(CalibrationError, match="max_evaluations"):
        calibrate_tau0(student, teacher, batches, settings, max_evaluations=0)


def test_calibration_with_sampled_rollouts_of_tiny_models_is_reproducible() -> None:
    def model(hidden: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=61, n_embd=hidden, n_layer=1, n_head=2, n_positions=64, initializer_range=0.3,
                            bos_token_id=1, eos_token_id=2)
        return AutoModelForCausalLM.from_config(config).eval()

    student, teacher = model(16, 1), model(32, 2)
    batches = [left_pad([[5, 6, 7], [8, 9]], pad_token_id=0), left_pad([[10], [11, 12, 13, 14]], pad_token_id=0)]
    settings = RolloutSettings(pad_token_id=0, max_new_tokens=16, decay=0.1, stop_token_ids=(2,))
    seen: list[tuple[float, float]] = []
    result = calibrate_tau0(student, teacher, batches, settings, target_share=0.85, tolerance=0.03, seed=3,
                            max_evaluations=8, progress=lambda tau0, share: seen.append((tau0, share)))
    assert tuple(seen) == result.history
    assert len(result.history) > 2  # ln 2 gives too few teacher tokens here: the search has to bisect
    assert abs(result.achieved_share - 0.85) <= 0.03
    assert result.tau0 < JSD_MAX
    again = teacher_share(student, teacher, batches, RolloutSettings(
        pad_token_id=0, max_new_tokens=16, decay=0.1, stop_token_ids=(2,), tau0=result.tau0), seed=3)
    assert again == result.achieved_share
