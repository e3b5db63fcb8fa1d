"""SWITCH rollouts: student/teacher decoding (lockstep or speculative) with the divergence gate, threshold schedules,
τ0 calibration."""
from switch_core.rollout.calibrate import CalibrationError, CalibrationResult, calibrate_tau0
from switch_core.rollout.engine import (
    ENGINES,
    STRATEGIES,
    TEACHER_LOGITS_DTYPES,
    RolloutBatch,
    RolloutInputError,
    RolloutSettings,
    RolloutSettingsError,
    RolloutTimer,
    rollout,
)
from switch_core.rollout.gate import GATE_BETA, decide, switch_gate
from switch_core.rollout.schedules import SCHEDULES, ScheduleError, threshold, validate_schedule

__all__ = [
    "ENGINES",
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
    "decide",
    "rollout",
    "switch_gate",
    "threshold",
    "validate_schedule",
]
