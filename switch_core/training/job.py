"""What one training run is given (:class:`TrainJob`) and what it leaves (:class:`TrainResult`).

A finished run publishes ``output_dir`` (``models/<name>``): the best checkpoint and ``train_summary.json``
(deterministic: a re-run with the same inputs writes the same bytes). Run timings, which differ between re-runs, go
to ``timings.json`` in ``state_dir`` (``state/<name>``), outside the pipeline's tracked outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedModel

from switch_core.config import DistributedConfig, EvalConfig, MethodConfig, OptimConfig, RolloutConfig
from switch_core.data.tokenize import TrainExample
from switch_core.training.dev import DevData

SUMMARY_FILE = "train_summary.json"
"""The finished run's summary (:meth:`TrainResult.to_dict`), in ``output_dir``."""
TIMINGS_FILE = "timings.json"
"""The run's wall-clock time (:meth:`TrainResult.timings`), in ``state_dir``: not part of any tracked output."""


class TrainingSetupError(ValueError):
    """The run cannot start: batch sizes that do not divide, too little data, a missing teacher..."""


@dataclass
class TrainJob:
    """Everything one training run needs (the command modules build it from the configuration).

    Attributes:
        name: run name (``teacher``, ``student-sft`` or a ``runs`` key); tags progress lines and metrics.
        student: the model to train (its weights are updated in place).
        tokenizer: the shared tokenizer (saved with the checkpoint; pad/eos ids).
        train: tokenised training examples (ground truth, or the SeqKD data).
        dev: dev examples and the ROUGE-L subset.
        optim: optimisation settings.
        method: batch source and loss.
        output_dir: where the finished run publishes its best checkpoint and ``train_summary.json``
            (``models/<name>``); it appears (or is replaced) only when the run ends.
        state_dir: resumable state (``state/<name>``), including the best checkpoint so far.
        select_by: best-checkpoint criterion, ``rouge_l`` (higher is better) or ``loss`` (``dev/loss``, lower).
        teacher: the frozen teacher, or None when the method needs none.
        rollout: rollout engine settings (methods with rollouts).
        generation: decoding settings of the dev ROUGE-L generations (the evaluation protocol's).
        max_prompt_length: prompt truncation for dev generations.
        resume: continue from ``state_dir`` when it holds a state (else start fresh, removing any state there). A
            state of other settings or inputs raises :class:`~switch_core.training.state.StateMismatchError`; a
            state saved by other library code is resumed with a warning.
        restart_if_incompatible: with ``resume``, start over instead when the saved state belongs to other settings,
            inputs, library code or process count (what ``dvc repro`` and ``switch-kd pipeline`` use: a stage re-run
            for a changed dependency never continues a stale state, a killed one continues).
        inputs: fingerprints of what the run starts from (checkpoints, data files, LoRA settings;
            :func:`~switch_core.training.run_setup.input_fingerprints`), part of the resume fingerprint.
        lm_corpus: MiniLLM's pre-training examples (:func:`~switch_core.training.lm_corpus.load_lm_corpus`); required
            when ``method.lm_coef > 0``.
        distributed: the engine on several processes (:mod:`~switch_core.training.engine`); unused by one process.
    """

    name: str
    student: PreTrainedModel
    tokenizer: Any
    train: list[TrainExample]
    dev: DevData
    optim: OptimConfig
    method: MethodConfig
    output_dir: Path
    state_dir: Path
    select_by: Literal["rouge_l", "loss"]
    teacher: PreTrainedModel | None = None
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    generation: EvalConfig = field(default_factory=EvalConfig)
    max_prompt_length: int = 256
    resume: bool = False
    restart_if_incompatible: bool = False
    inputs: dict[str, Any] = field(default_factory=dict)
    lm_corpus: list[TrainExample] | None = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass
class TrainResult:
    """Outcome of :func:`~switch_core.training.loop.train` (written as ``train_summary.json`` and ``timings.json``)."""

    name: str
    steps: int
    best_step: int
    best_metrics: dict[str, float]
    final_metrics: dict[str, float]
    wall_seconds: float
    tau0: float | None
    output_dir: Path
    calibration: dict[str, Any] | None = None
    """The τ0 search when the run calibrated τ0 (:meth:`switch_core.rollout.CalibrationResult.to_dict`: the chosen τ0,
    its share, the target, every (τ0, share) tried and whether the target was out of reach in (0, ln 2]), else None."""
    gate: dict[str, Any] | None = None
    """Where SWITCH's gate could act (:func:`switch_core.rollout.schedules.gate_summary`: ``position_switch`` when
    τ0 > ln 2, ``student_only_positions``, ``gate_active_share`` over ``rollout.max_new_tokens`` positions) for runs
    whose rollouts use the ``switch`` strategy, else None."""

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict, without timings (``calibration`` only when the run calibrated τ0,
        ``gate`` only for SWITCH rollouts)."""
        out = {
            "run": self.name, "steps": self.steps, "best_step": self.best_step, "best": self.best_metrics,
            "final": self.final_metrics, "tau0": self.tau0,
        }
        out |= {"calibration": self.calibration} if self.calibration is not None else {}
        return out | ({"gate": self.gate} if self.gate is not None else {})

    def timings(self) -> dict[str, Any]:
        """``{"run", "wall_seconds"}``: wall-clock seconds of the whole run, killed and resumed processes included."""
        return {"run": self.name, "wall_seconds": round(self.wall_seconds, 3)}
