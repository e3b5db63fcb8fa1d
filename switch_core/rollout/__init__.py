"""SWITCH rollouts: lockstep student/teacher decoding with a divergence gate, threshold schedules, τ0 calibration."""
from switch_core.rollout.calibrate import CalibrationError, CalibrationResult, calibrate_settings, calibrate_tau0
from switch_core.rollout.engine import GATE_BETA, RolloutBatch, RolloutInputError, RolloutTimer, rollout
from switch_core.rollout.schedules import (
    JSD_MAX,
    SCHEDULES,
    ScheduleError,
    never_crossed_tau0,
    student_only_positions,
    threshold,
)
from switch_core.rollout.settings import STRATEGIES, TEACHER_LOGITS_DTYPES, RolloutSettings, RolloutSettingsError

__all__ = [
    "GATE_BETA",
    "JSD_MAX",
    "SCHEDULES",
    "STRATEGIES",
    "TEACHER_LOGITS_DTYPES",
    "CalibrationError",
    "CalibrationResult",
    "RolloutBatch",
    "RolloutInputError",
    "RolloutSettings",
    "RolloutSettingsError",
    "RolloutTimer",
    "ScheduleError",
    "calibrate_settings",
    "calibrate_tau0",
    "never_crossed_tau0",
    "rollout",
    "student_only_positions",
    "threshold",
]
