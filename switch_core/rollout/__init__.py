"""SWITCH rollouts: student/teacher decoding (lockstep or speculative) with the divergence gate, threshold schedules,
τ0 calibration."""
from switch_core.rollout.calibrate import CalibrationError, CalibrationResult, calibrate_settings, calibrate_tau0
from switch_core.rollout.engine import RolloutBatch, RolloutInputError, RolloutTimer, rollout
from switch_core.rollout.gate import (
    GATE_BETA,
    adaswitch_decide,
    decide,
    gate_divergence,
    skd_rejects,
    switch_gate,
    teacher_intervenes,
)
from switch_core.rollout.schedules import (
    JSD_MAX,
    SCHEDULES,
    ScheduleError,
    never_crossed_tau0,
    student_only_positions,
    threshold,
)
from switch_core.rollout.settings import (
    ENGINES,
    STRATEGIES,
    TEACHER_LOGITS_DTYPES,
    RolloutSettings,
    RolloutSettingsError,
)

__all__ = [
    "ENGINES",
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
    "adaswitch_decide",
    "calibrate_settings",
    "calibrate_tau0",
    "decide",
    "gate_divergence",
    "never_crossed_tau0",
    "rollout",
    "skd_rejects",
    "student_only_positions",
    "switch_gate",
    "teacher_intervenes",
    "threshold",
]
