"""Threshold schedules against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from switch_core.rollout.schedules import ScheduleError, threshold


def test_exponential_is_tau0_times_exp_minus_lambda_t() -> None:
    steps = torch.arange(60)
    got = threshold("exponential", steps, tau0=0.4, decay=0.1)
    assert got.dtype == torch.float32 and got.shape == (60,)
    expected = torch.tensor([0.4 * math.exp(-0.1 * t) for t in range(60)], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-7, atol=0.0)
    # docs/METHOD.md §1.1 item 4: tau_t / tau0 is 0.61 at t=5, 0.37 at t=10, 0.135 at t=20
    assert got[5].item() / 0.4 == pytest.approx(0.6065, abs=1e-4)
    assert got[10].item() / 0.4 == pytest.approx(0.3679, abs=1e-4)
    assert got[20].item() / 0.4 == pytest.approx(0.1353, abs=1e-4)


def test_linear_reaches_zero_at_the_horizon_and_stays_there() -> None:
    got = threshold("linear", torch.tensor([0, 1, 5, 9, 10, 11, 30]), tau0=0.5, horizon=10)
    expected = torch.tensor([0.5, 0.45, 0.25, 0.05, 0.0, 0.0, 0.0])
    torch.testing.assert_close(got, expected)


def test_constant_and_scalar_steps() -> None:
    assert threshold("constant", 17, tau0=0.3).item() == pytest.approx(0.3)
    assert threshold("constant", 17, tau0=0.3).dim() == 0
    torch.testing.assert_close(threshold("constant", torch.arange(4).reshape(2, 2), tau0=0.3), torch.full((2, 2), 0.3))
    assert threshold("exponential", 0, tau0=0.25, decay=3.0).item() == 0.25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "cosine", "tau0": 0.1}, "exponential, linear, constant"),
        ({"schedule": "exponential", "tau0": -0.1}, "tau0"),
        ({"schedule": "exponential", "tau0": math.inf}, "tau0"),
        ({"schedule": "exponential", "tau0": 0.1, "decay": -1.0}, "decay"),
        ({"schedule": "linear", "tau0": 0.1, "horizon": 0}, "horizon"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict, message: str) -> None:
    schedule = kwargs.pop("schedule")
    with pytest.raises(ScheduleError, match=message):
        threshold(schedule, 3, **kwargs)


def test_negative_steps_are_rejected() -> None:
    with pytest.raises(ScheduleError, match="t must be >= 0"):
        threshold("exponential", torch.tensor([-1, 0]), tau0=0.1, decay=0.1)
