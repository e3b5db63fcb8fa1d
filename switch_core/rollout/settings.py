"""How one rollout is decoded: :class:`RolloutSettings`, built from the validated ``rollout`` config section.

Its decoding fields (strategy, schedule, τ0, λ, sampling, ...) are the fields of the same name of
`switch_core.config.RolloutConfig`: their defaults and their validation are the schema's, declared once there.
The settings add what only the run knows: pad and stop ids, and the method's choices (its rollout strategy, whether
the teacher's logits are kept and in which dtype, whether the divergence is computed for every strategy).
:meth:`RolloutSettings.from_config` is the one place a config becomes settings.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import ValidationError
from torch import Tensor

from switch_core.config import MethodConfig, RolloutConfig, StrategyName, format_validation_error
from switch_core.rollout.schedules import threshold

STRATEGIES: tuple[str, ...] = typing.get_args(StrategyName)
ENGINES: tuple[str, ...] = typing.get_args(RolloutConfig.model_fields["engine"].annotation)
TEACHER_LOGITS_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DIVERGENCE_STRATEGIES: tuple[str, ...] = ("switch", "adaswitch")
"""Strategies whose decisions act on the gate's JSD."""
_SCHEMA = RolloutConfig()  # the schema's defaults
_METHOD_SCHEMA = MethodConfig()


class RolloutSettingsError(ValueError):
    """A :class:`RolloutSettings` field is out of range; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class RolloutSettings:
    """How to decode a rollout batch (validated on construction; defaults and ranges of the decoding fields are
    those of `switch_core.config.RolloutConfig`, whose field descriptions say what each one means).

    Attributes:
        pad_token_id: id written after a row has finished (may equal a stop id; padding is marked by
            ``response_mask``, never by comparing ids).
        strategy: token source rule, one of :data:`STRATEGIES` (see `switch_core.rollout.engine`).
        schedule: threshold schedule, ``exponential | linear | constant`` (`switch_core.rollout.schedules`).
        tau0: τ0 >= 0 in nats, or None = not set: the paper does not give it (docs/METHOD.md §1.2), so it is
            calibrated (:func:`switch_core.rollout.calibrate.calibrate_tau0` returns settings with it). A ``switch``
            rollout needs it; the other strategies only record τ_t (NaN when it is None).
        decay: λ >= 0 per response token (the paper's "decay factor 1/10" read as λ = 0.1, docs/METHOD.md §1.1
            item 4).
        horizon: T of the linear schedule; None = ``max_new_tokens``.
        random_rate: teacher probability per token of the ``random`` strategy, in [0, 1].
        mixture_alpha: teacher weight α of the ``mixture`` strategy, in [0, 1] (MiniLLM: 0.2).
        skd_top_k: K >= 1 of the ``skd`` strategy: a student token outside the teacher's top K is replaced by a
            teacher draw (SKD's configuration: 25).
        adaswitch_window: W >= 1 of the ``adaswitch`` strategy: positions in the moving average of the JSD.
        adaswitch_k: K > 0 of the ``adaswitch`` strategy: the teacher takes over a row at the first position whose
            JSD exceeds K times that average.
        max_new_tokens: maximum response length, >= 1 (docs/METHOD.md §5.3: 256).
        greedy: argmax decoding instead of sampling.
        temperature: > 0; divides the logits for sampling *and* for the gate's JSD (docs/METHOD.md §1.3).
        top_k: keep the k most likely tokens when sampling; 0 = off (docs/METHOD.md §5.4: 0).
        top_p: nucleus sampling mass in (0, 1]; 1.0 = off.
        stop_token_ids: a row stops after emitting one of these (the stop token is part of the response).
        keep_teacher_logits: return the teacher's raw (temperature 1) next-token logits at every response step.
        teacher_logits_dtype: storage dtype of those logits: ``float32 | bfloat16 | float16`` (default: the
            schema's ``methods.<m>.teacher_logits_dtype``).
        compute_divergence: record the gate's JSD for every strategy. ``switch`` and ``adaswitch`` always compute
            it (:attr:`needs_divergence`). With
            ``student`` and neither this nor ``keep_teacher_logits`` the teacher is never run (pure student
            sampling); with ``teacher`` and not this the student is never run.
        engine: ``speculative`` (one model drafts, the other verifies the chunk; `switch_core.rollout.speculative`)
            or ``lockstep`` (one token at a time); the same rollout for the same seed, exactly in float64 (float32
            rounding of the chunked forward parts ~0.3% of positions).
        max_draft_tokens: longest draft of the speculative engine, >= 1 (its planner picks the length below it).
    """

    pad_token_id: int
    strategy: str = _SCHEMA.strategy
    schedule: str = _SCHEMA.schedule
    tau0: float | None = _SCHEMA.tau0
    decay: float = _SCHEMA.decay
    horizon: int | None = _SCHEMA.horizon
    random_rate: float = _SCHEMA.random_rate
    mixture_alpha: float = _SCHEMA.mixture_alpha
    skd_top_k: int = _SCHEMA.skd_top_k
    adaswitch_window: int = _SCHEMA.adaswitch_window
    adaswitch_k: float = _SCHEMA.adaswitch_k
    max_new_tokens: int = _SCHEMA.max_new_tokens
    greedy: bool = _SCHEMA.greedy
    temperature: float = _SCHEMA.temperature
    top_k: int = _SCHEMA.top_k
    top_p: float = _SCHEMA.top_p
    stop_token_ids: tuple[int, ...] = ()
    keep_teacher_logits: bool = False
    teacher_logits_dtype: str = _METHOD_SCHEMA.teacher_logits_dtype
    compute_divergence: bool = True
    engine: str = _SCHEMA.engine
    max_draft_tokens: int = _SCHEMA.max_draft_tokens

    def __post_init__(self) -> None:
        decoding = {name: getattr(self, name) for name in _decoding_fields()}
        try:
            checked = RolloutConfig.model_validate(decoding)
        except ValidationError as error:
            raise RolloutSettingsError(format_validation_error(error, "rollout settings")) from None
        for name in decoding:  # the schema's coercions (an int τ0 becomes a float, ...)
            object.__setattr__(self, name, getattr(checked, name))

        def bad(name: str, message: str) -> RolloutSettingsError:
            return RolloutSettingsError(f"rollout setting {name}={getattr(self, name)!r}: {message}")

        if not isinstance(self.pad_token_id, int) or self.pad_token_id < 0:
            raise bad("pad_token_id", "must be an integer token id >= 0 (e.g. tokenizer.pad_token_id)")
        stop_ids = tuple(self.stop_token_ids)
        if not all(isinstance(i, int) and i >= 0 for i in stop_ids):
            raise bad("stop_token_ids", "must be integer token ids >= 0 (e.g. (tokenizer.eos_token_id,))")
        object.__setattr__(self, "stop_token_ids", stop_ids)
        if self.teacher_logits_dtype not in TEACHER_LOGITS_DTYPES:
            raise bad("teacher_logits_dtype", f"use one of {', '.join(TEACHER_LOGITS_DTYPES)}")

    @classmethod
    def from_config(
        cls,
        config: RolloutConfig,
        method: MethodConfig | None = None,
        *,
        pad_token_id: int,
        stop_token_ids: Sequence[int],
    ) -> RolloutSettings:
        """The settings of the ``rollout`` config section, for a method's rollouts when ``method`` is given.

        A method sets the strategy (``method.rollout_strategy``, None = ``config.strategy``) and the kept teacher
        logits' dtype; it computes the divergence for ``switch`` and ``adaswitch`` (their gates act on it) and for
        ``data: policy_gradient``, whose rewards need
        the teacher's and the student's log-probability of every token, and skips it otherwise. Without a method the
        settings decode ``config`` as it is, divergence included (the ``rollout`` command). ``tau0`` is the config's
        (None = to calibrate).

        Args:
            config: the validated ``rollout`` section (with the run's overrides).
            method: the run's method, or None.
            pad_token_id: the tokenizer's pad id.
            stop_token_ids: ids that end a response (e.g. the EOS ids).
        """
        decoding = {name: getattr(config, name) for name in _decoding_fields()}
        stop_ids = tuple(int(i) for i in stop_token_ids)
        if method is None:
            return cls(pad_token_id=int(pad_token_id), stop_token_ids=stop_ids, **decoding)
        strategy = method.rollout_strategy or config.strategy
        return cls(
            pad_token_id=int(pad_token_id), stop_token_ids=stop_ids, **(decoding | {"strategy": strategy}),
            teacher_logits_dtype=method.teacher_logits_dtype,
            compute_divergence=strategy in DIVERGENCE_STRATEGIES or method.data == "policy_gradient",
        )

    @property
    def needs_divergence(self) -> bool:
        """Whether the strategy's decisions act on the gate's JSD (``switch``, ``adaswitch``): it is computed
        whatever ``compute_divergence`` says."""
        return self.strategy in DIVERGENCE_STRATEGIES

    @property
    def needs_calibration(self) -> bool:
        """Whether τ0 must be calibrated before these settings decode: a ``switch`` rollout without τ0."""
        return self.strategy == "switch" and self.tau0 is None

    @property
    def schedule_horizon(self) -> int:
        """The linear schedule's horizon T: ``horizon``, or ``max_new_tokens`` when it is None."""
        return self.horizon if self.horizon is not None else self.max_new_tokens

    def thresholds(self, device: torch.device | str | None = None) -> Tensor:
        """τ_t for t = 0 .. max_new_tokens − 1: ``[max_new_tokens]`` float32; NaN when τ0 is not set.

        Raises:
            RolloutSettingsError: a ``switch`` strategy without τ0 (:attr:`needs_calibration`).
        """
        if self.tau0 is None:
            if self.strategy == "switch":
                raise RolloutSettingsError(
                    "rollout setting tau0=None: a switch rollout needs τ0; set it (rollout.tau0, --tau0) or calibrate "
                    "it (switch_core.rollout.calibrate.calibrate_tau0, switch-kd calibrate)"
                )
            return torch.full((self.max_new_tokens,), float("nan"), device=device)
        steps = torch.arange(self.max_new_tokens, device=device)
        return threshold(self.schedule, steps, tau0=self.tau0, decay=self.decay, horizon=self.schedule_horizon)

    @property
    def runs_teacher(self) -> bool:
        """Whether the teacher model is run at all."""
        return self.strategy != "student" or self.compute_divergence or self.keep_teacher_logits

    @property
    def runs_student(self) -> bool:
        """Whether the student model is run at all."""
        return self.strategy != "teacher" or self.compute_divergence


def _decoding_fields() -> tuple[str, ...]:
    """Names of the :class:`RolloutSettings` fields that are `~switch_core.config.RolloutConfig` fields."""
    return tuple(f.name for f in dataclasses.fields(RolloutSettings) if f.name in RolloutConfig.model_fields)
