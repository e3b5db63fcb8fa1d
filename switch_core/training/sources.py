"""Batch sources: where each method's training batch comes from at each step (docs/METHOD.md §6).

A method is a batch source plus a loss. Each step the loop hands the source this process's share of the step's
ground-truth examples (ground-truth or SeqKD data, in the seeded epoch order); the source returns the batch to train
on, chosen by the method's ``data`` mode:

==============  ==============================================================================================
``data``        batch of step ``k`` (1-based; ``r ~ U(0, 1)`` drawn per step, the same on every process)
==============  ==============================================================================================
ground_truth    the examples (SFT, KD §6.2; SeqKD §6.3 when the examples are the teacher's responses)
seqkd           the same (the command loads the SeqKD data file as the examples)
rollout         a fresh rollout of the examples' prompts; with ``replay``: pushed into the replay buffer and the
                batch drawn from the buffer (ImitKD §6.4, DistiLLM ``finetune.py``'s "mixed" branch, §6.9 item 3)
mixed           with probability λ = ``on_policy_fraction`` as ``rollout`` (with or without ``replay``), else the
                examples (GKD §6.6)
adaptive        DistiLLM's adaptive off-policy schedule (§6.7): ``s = φ·(1 − k / total_steps)``; if ``r < s`` or
                (``r < φ`` and the buffer holds fewer than ``capacity``): a fresh rollout, pushed and trained on;
                elif ``r < φ``: a batch drawn from the buffer; else the examples. After each dev evaluation, if
                dev loss >= previous + ε then φ ← min(φ + 0.1, 1) and previous ← dev loss.
policy_gradient MiniLLM (§6.5): at steps ``k`` with ``(k − 1) % ppo_epochs == 0`` a fresh rollout of the examples'
                prompts (teacher-mixed with the ``mixture`` strategy), stored with its per-token policy values
                (:mod:`switch_core.training.policy_gradient`: rewards, whitened advantages, importance weights, the
                old log-probabilities); the next ``ppo_epochs − 1`` steps train on the stored batch again (PPO
                epochs, as MiniLLM iterates ``ppo_epochs`` times over its rollout storage), and the examples of those
                steps are not used.
==============  ==============================================================================================

Rollouts come from :func:`switch_core.rollout.rollout` with the method's strategy (``student`` for ImitKD / GKD /
DistiLLM; the configured SWITCH engine for ``switch``), always with the KV cache and the models in eval mode. When
the fresh rollout itself is trained on, the loss needs the teacher and the rollout runs the teacher anyway (SWITCH's gate and
every strategy but pure student sampling), the teacher logits computed during the rollout are kept and the loss
skips its own teacher forward pass (same frozen teacher, same prefix). Pure student rollouts never run the teacher
while decoding: one teacher forward over the finished batch is much cheaper than T incremental teacher steps.
MiniLLM's rollouts run both models (rewards need the teacher's and the student's log-probability of every token) but
never keep the teacher logits: the stored batch lives for ``ppo_epochs`` steps and is part of the resumable state.

Rollouts (and the stop-token statistics' forwards) run under the run's autocast (``optim.mixed_precision``: the
``autocast`` the loop passes, its accelerator's), as the losses do.

Every fresh rollout also reports its stop-token statistics (:func:`switch_core.training.stop_tokens.stop_statistics`).
With ``supervise_stop`` (docs/METHOD.md §6.10) the rollout's responses that were cut without a stop token get one
appended before they are trained on or pushed into the buffer, and every batch made of rollouts (fresh or replayed)
marks its stop labels for the extra cross-entropy; the rollout's teacher logits are then not kept.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import nn

from switch_core.config import ROLLOUT_DATA, MethodConfig
from switch_core.data.tokenize import TrainExample, left_pad
from switch_core.models.device import model_device
from switch_core.rollout import RolloutBatch, RolloutSettings, rollout
from switch_core.training import seeding
from switch_core.training.batches import (
    PolicyTokens,
    Sequence1D,
    TrainBatch,
    batch_from_examples,
    batch_from_sequences,
)
from switch_core.training.policy_gradient import ReduceSum, rollout_policy_tokens
from switch_core.training.replay import ReplayBuffer
from switch_core.training.stop_tokens import append_stop, stop_statistics

ADAPTIVE_PHI_STEP = 0.1
"""DistiLLM ``finetune.py``: φ grows by 0.1 (capped at 1.0) when the dev loss rose by at least ε."""


class MethodSetupError(ValueError):
    """A method configuration that cannot run (e.g. the adaptive schedule without a replay buffer)."""


class Action(str, Enum):
    """What a step trains on."""

    GROUND_TRUTH = "ground_truth"
    ROLLOUT = "rollout"  # fresh rollout, trained on, not stored
    ROLLOUT_STORE = "rollout_store"  # fresh rollout, pushed into the buffer and trained on (DistiLLM adaptive)
    ROLLOUT_REPLAY = "rollout_replay"  # fresh rollout pushed into the buffer, batch drawn from the buffer
    REPLAY = "replay"  # batch drawn from the buffer, no rollout
    POLICY_ROLLOUT = "policy_rollout"  # fresh rollout with policy values, stored for the PPO epochs and trained on
    POLICY_REUSE = "policy_reuse"  # the stored rollout of the current PPO epochs


def choose_action(method: MethodConfig, *, r: float, step: int, total_steps: int, phi: float, buffered: int) -> Action:
    """The batch source of step ``step`` (module docstring table).

    Args:
        method: the method configuration (``data``, ``replay``, ``on_policy_fraction``, ``replay_capacity``,
            ``ppo_epochs``).
        r: the step's U(0, 1) draw.
        step: 1-based optimizer step (DistiLLM's ``global_step``).
        total_steps: optimizer steps of the run.
        phi: DistiLLM's current φ (adaptive only).
        buffered: sequences in the replay buffer.

    Returns:
        The :class:`Action`.
    """
    fresh = Action.ROLLOUT_REPLAY if method.replay else Action.ROLLOUT
    if method.data == "policy_gradient":
        return Action.POLICY_ROLLOUT if (step - 1) % method.ppo_epochs == 0 else Action.POLICY_REUSE
    if method.data in ("ground_truth", "seqkd"):
        return Action.GROUND_TRUTH
    if method.data == "rollout":
        return fresh
    if method.data == "mixed":
        return fresh if r < method.on_policy_fraction else Action.GROUND_TRUTH
    s = phi * (1.0 - step / total_steps)
    if r < s or (r < phi and buffered < method.replay_capacity):
        return Action.ROLLOUT_STORE
    if r < phi:
        return Action.REPLAY
    return Action.GROUND_TRUTH


@dataclass
class SourceOutput:
    """A step's training batch and what it came from.

    Attributes:
        batch: the batch (on the CPU or the rollout device).
        action: where it came from.
        stats: additive counters for logging, summed over processes by the loop: ``rollout_sequences``,
            ``rollout_tokens``, ``teacher_tokens`` (SWITCH share = teacher_tokens / rollout_tokens),
            ``rollout_seconds``, the stop-token sums of :data:`switch_core.training.stop_tokens.STOP_STAT_NAMES`;
            for a policy-gradient rollout also the sums over its response tokens of the rewards (``reward_sum``), of
            the returns before whitening and their squares (``return_sum``, ``return_sq_sum``) and of the importance
            weights (``weight_sum``).
        by_position: for a fresh rollout, ``(teacher_tokens, tokens)`` at each 0-based response position of this
            process's rollouts (the teacher-share-by-position diagnostic of docs/METHOD.md §1.3); None otherwise.
    """

    batch: TrainBatch
    action: Action
    stats: dict[str, float] = field(default_factory=dict)
    by_position: tuple[list[int], list[int]] | None = None


@dataclass
class RolloutDraw:
    """One fresh rollout of a step's prompts, in the forms the batch source needs.

    Attributes:
        chunks: the rollout batches as the engine returned them (``rollout.batch_size`` prompts each).
        batch: the training batch of all of them (teacher logits kept when asked).
        sequences: the unpadded prompt/response pairs (what the replay buffer stores).
        stats: additive counters (:attr:`SourceOutput.stats`: ``rollout_sequences``, ``rollout_tokens``,
            ``teacher_tokens``, ``rollout_seconds`` and the stop-token sums).
        by_position: ``(teacher_tokens, tokens)`` at each 0-based response position (:attr:`SourceOutput.by_position`).
    """

    chunks: list[RolloutBatch]
    batch: TrainBatch
    sequences: list[Sequence1D]
    stats: dict[str, float]
    by_position: tuple[list[int], list[int]]


def _sequences(rb: RolloutBatch) -> list[Sequence1D]:
    """Unpadded prompt/response pairs of a rollout batch (the response keeps its stop token)."""
    return [
        Sequence1D(rb.prompt_ids[b][rb.prompt_mask[b].bool()], rb.tokens[b][rb.response_mask[b]])
        for b in range(rb.tokens.shape[0])
    ]


def batch_from_rollout(rb: RolloutBatch) -> TrainBatch:
    """The training batch of one rollout: prompt + mixed response, labels on every response token (stop included),
    teacher logits kept when the rollout kept them (``rb.teacher_logits[:, t]`` predicts ``rb.tokens[:, t]``)."""
    input_ids, attention_mask = rb.full_sequences()
    labels = torch.cat(
        [torch.full_like(rb.prompt_ids, -100), torch.where(rb.response_mask, rb.tokens, -100)], dim=1
    )
    return TrainBatch(input_ids, attention_mask, labels, rb.teacher_logits)


class BatchSource:
    """Produces each step's batch for one method; holds the replay buffer, DistiLLM's φ and MiniLLM's stored rollout
    (resumable state).

    Args:
        method: the method configuration.
        student: the student (rollouts are decoded with it in eval mode; its training flag is restored).
        teacher: the teacher, or None for methods without rollouts.
        settings: rollout settings (None for methods without rollouts).
        pad_token_id: pad id of training batches.
        seed: training seed; every random choice derives from it (:mod:`switch_core.training.seeding`).
        total_steps: optimizer steps of the run (for the adaptive schedule).
        rollout_batch_size: prompts per rollout call (``rollout.batch_size``).
        keep_teacher_logits: keep the rollout's teacher logits for the loss when a fresh rollout is trained on (and
            the rollout runs the teacher anyway).
        rank: this process's index (for its replay-buffer draws).
        reduce_sum: sums a tensor over processes (MiniLLM's advantage whitening uses global statistics); None = one
            process.
        autocast: context manager factory the rollouts run under (the run's ``accelerator.autocast``, as for the
            losses); default none.

    Raises:
        MethodSetupError: a rollout method without teacher or settings, the adaptive schedule without replay,
            policy-gradient rollouts decoded greedily (no sampling distribution to weight by), or ``supervise_stop``
            without a stop token id.
    """

    def __init__(
        self,
        method: MethodConfig,
        *,
        student: nn.Module,
        teacher: nn.Module | None,
        settings: RolloutSettings | None,
        pad_token_id: int,
        seed: int,
        total_steps: int,
        rollout_batch_size: int,
        keep_teacher_logits: bool,
        rank: int = 0,
        reduce_sum: ReduceSum | None = None,
        autocast: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.uses_rollouts = method.data in ROLLOUT_DATA
        if self.uses_rollouts and (teacher is None or settings is None):
            raise MethodSetupError(f"data={method.data!r} needs rollouts: give the teacher and rollout settings")
        if method.data == "adaptive" and not method.replay:
            raise MethodSetupError("data='adaptive' (DistiLLM) trains on replayed rollouts: set replay: true")
        if method.data == "policy_gradient" and settings.greedy:
            raise MethodSetupError(
                "data='policy_gradient' (MiniLLM) needs sampled rollouts: set rollout.greedy: false"
            )
        if method.supervise_stop and not settings.stop_token_ids:
            raise MethodSetupError("supervise_stop needs a stop token: the rollout settings have no stop_token_ids")
        self.method = method
        self.student, self.teacher, self.settings = student, teacher, settings
        self.pad_token_id, self.seed, self.total_steps, self.rank = pad_token_id, seed, total_steps, rank
        self.rollout_batch_size = rollout_batch_size
        self.keep_teacher_logits = keep_teacher_logits
        self.buffer = ReplayBuffer(method.replay_capacity) if method.replay and self.uses_rollouts else None
        # Kept teacher logits are free only when the rollout runs the teacher anyway (every strategy but pure student
        # sampling); for student rollouts one teacher forward over the finished batch beats T incremental steps.
        self._runs_teacher = settings is not None and dataclasses.replace(settings, keep_teacher_logits=False).runs_teacher
        self.phi = method.init_threshold
        self.prev_dev_loss: float | None = None
        self.reduce_sum = reduce_sum
        self.autocast = autocast
        self.stored: TrainBatch | None = None  # MiniLLM: the rollout of the current PPO epochs

    def next(self, step: int, examples: Sequence[TrainExample], offset: int) -> SourceOutput:
        """The batch of optimizer step ``step`` (0-based) from this process's examples.

        Args:
            step: 0-based optimizer step.
            examples: this process's share of the step's examples (non-empty).
            offset: global index of ``examples[0]`` in the step's global batch (keys the rollout random streams, so
                the same sequence gets the same rollout whatever the process count).
        """
        r = seeding.uniform(self.seed, seeding.Stream.SOURCE_CHOICE, step)
        buffered = len(self.buffer) if self.buffer is not None else 0
        action = choose_action(
            self.method, r=r, step=step + 1, total_steps=self.total_steps, phi=self.phi, buffered=buffered
        )
        if action is Action.GROUND_TRUTH:
            return SourceOutput(batch_from_examples(examples, self.pad_token_id), action)
        if action is Action.REPLAY:
            return SourceOutput(self._stop_labelled(self._replay(step, len(examples))), action)
        if action is Action.POLICY_REUSE:
            if self.stored is None:
                raise MethodSetupError(f"step {step}: no stored rollout to reuse (a state saved without it?)")
            return SourceOutput(self.stored, action)
        if action is Action.POLICY_ROLLOUT:
            draw = self._rollout(step, examples, offset, keep=False)
            policy, policy_stats = self._policy_values(draw.chunks)
            self.stored = dataclasses.replace(draw.batch, policy=policy)
            return SourceOutput(self.stored, action, draw.stats | policy_stats, draw.by_position)
        keep = (self.keep_teacher_logits and action in (Action.ROLLOUT, Action.ROLLOUT_STORE) and self._runs_teacher
                and not self.method.supervise_stop)
        draw = self._rollout(step, examples, offset, keep)
        if action is not Action.ROLLOUT:
            self.buffer.push(draw.sequences)
        batch = self._replay(step, len(examples)) if action is Action.ROLLOUT_REPLAY else draw.batch
        return SourceOutput(self._stop_labelled(batch), action, draw.stats, draw.by_position)

    def _stop_labelled(self, batch: TrainBatch) -> TrainBatch:
        """A batch of rollouts with its stop labels marked when ``supervise_stop`` is on (else unchanged)."""
        return batch.with_stop_labels(self.settings.stop_token_ids) if self.method.supervise_stop else batch

    def _replay(self, step: int, count: int) -> TrainBatch:
        drawn = self.buffer.sample(count, seeding.generator(self.seed, seeding.Stream.REPLAY, step, self.rank))
        return batch_from_sequences(drawn, self.pad_token_id)

    def _rollout(self, step: int, examples: Sequence[TrainExample], offset: int, keep: bool) -> RolloutDraw:
        settings = dataclasses.replace(self.settings, keep_teacher_logits=keep)
        device = model_device(self.student)
        began = time.perf_counter()
        chunks: list[RolloutBatch] = []
        with self.autocast():
            for start in range(0, len(examples), self.rollout_batch_size):
                part = examples[start : start + self.rollout_batch_size]
                prompt_ids, prompt_mask = left_pad([e.prompt_ids for e in part], self.pad_token_id)
                gen = seeding.generator(self.seed, seeding.Stream.ROLLOUT, step, offset + start, device=device)
                chunks.append(rollout(self.student, self.teacher, prompt_ids, prompt_mask, settings, generator=gen))
        sequences = [s for rb in chunks for s in _sequences(rb)]
        if self.method.supervise_stop:
            sequences = append_stop(sequences, settings.stop_token_ids)
            batch = batch_from_sequences(sequences, self.pad_token_id)
        elif len(chunks) == 1:
            batch = batch_from_rollout(chunks[0])
        else:
            kept = [block for rb in chunks for block in rb.teacher_logits] if keep else None
            batch = batch_from_sequences(sequences, self.pad_token_id, kept)
        stats = {
            "rollout_sequences": float(len(sequences)),
            "rollout_tokens": float(sum(int(rb.response_mask.sum()) for rb in chunks)),
            "teacher_tokens": float(sum(int(rb.teacher_counts()[0].sum()) for rb in chunks)),
            "rollout_seconds": time.perf_counter() - began,
        }
        with self.autocast():
            for rb in chunks:
                for name, value in stop_statistics(
                    rb, settings.stop_token_ids, student=self.student, teacher=self.teacher
                ).items():
                    stats[name] = stats.get(name, 0.0) + value
        width = max(rb.tokens.shape[1] for rb in chunks)
        teacher_at, tokens_at = torch.zeros(width, dtype=torch.long), torch.zeros(width, dtype=torch.long)
        for rb in chunks:
            teacher, tokens = (c.cpu() for c in rb.teacher_counts())
            teacher_at[: teacher.shape[0]] += teacher
            tokens_at[: tokens.shape[0]] += tokens
        return RolloutDraw(chunks, batch, sequences, stats, (teacher_at.tolist(), tokens_at.tolist()))

    def _policy_values(self, chunks: list[RolloutBatch]) -> tuple[PolicyTokens, dict[str, float]]:
        """MiniLLM's per-token values of a rollout's response tokens (chunks right-padded to the longest response,
        which is the batch's response width) and their logging sums."""
        width = max(rb.tokens.shape[1] for rb in chunks)

        def joined(name: str) -> torch.Tensor:
            parts = [getattr(rb, name) for rb in chunks]
            out = parts[0].new_zeros((sum(x.shape[0] for x in parts), width))  # zeros / False: padding
            row = 0
            for x in parts:
                out[row : row + x.shape[0], : x.shape[1]] = x
                row += x.shape[0]
            return out

        mask = joined("response_mask")
        policy, returns = rollout_policy_tokens(
            joined("student_logprobs"), joined("teacher_logprobs"), joined("sampling_logprobs"), mask,
            gamma=self.method.gamma, reward_scaling=self.method.reward_scaling, reward_clip=self.method.reward_clip,
            reduce_sum=self.reduce_sum,
        )
        stats = {
            "reward_sum": float(policy.rewards[mask].sum()), "return_sum": float(returns[mask].sum()),
            "return_sq_sum": float(returns[mask].square().sum()), "weight_sum": float(policy.weights[mask].sum()),
        }
        return policy, stats

    def after_evaluation(self, dev_loss: float) -> None:
        """DistiLLM's φ update after a dev evaluation (adaptive only; ``dev_loss`` = dev CE, as its ``evaluate``).

        The first call (the evaluation before training) only records the loss.
        """
        if self.method.data != "adaptive" or not math.isfinite(dev_loss):
            return
        if self.prev_dev_loss is None:
            self.prev_dev_loss = dev_loss
        elif dev_loss >= self.prev_dev_loss + self.method.loss_eps:
            self.phi = min(self.phi + ADAPTIVE_PHI_STEP, 1.0)
            self.prev_dev_loss = dev_loss

    def state_dict(self) -> dict[str, Any]:
        """Resumable state: φ, the previous dev loss, the replay buffer and MiniLLM's stored rollout."""
        return {
            "phi": self.phi,
            "prev_dev_loss": self.prev_dev_loss,
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "stored": self.stored.state_dict() if self.stored is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.phi = float(state["phi"])
        self.prev_dev_loss = state["prev_dev_loss"]
        if self.buffer is not None and state["buffer"] is not None:
            self.buffer.load_state_dict(state["buffer"])
        stored = state.get("stored")
        self.stored = None if stored is None else TrainBatch.from_state_dict(stored).to(model_device(self.student))
