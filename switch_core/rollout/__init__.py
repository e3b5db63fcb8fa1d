"""SWITCH rollouts: lockstep student/teacher decoding with a divergence gate, threshold schedules, τ0 calibration."""
from switch_core.rollout.calibrate import CalibrationError, CalibrationResult, calibrate_tau0
from switch_core.rollout.engine import (
    GATE_BETA,
    STRATEGIES,
    TEACHER_LOGITS_DTYPES,
    RolloutBatch,
    RolloutInputError,
    RolloutSettings,
    RolloutSettingsError,
    RolloutTimer,
    rollout,
)
from switch_core.rollout.schedules import SCHEDULES, ScheduleError, threshold, validate_schedule

__all__ = [
    "GATE_BETA",
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
    "calibrate_tau0",
    "rollout",
    "threshold",
    "validate_schedule",
]
