"""The one training loop of switch-kd: SFT and every distillation method (a batch source + a per-token loss).

Per optimizer step (global batch ``optim.batch_size`` sequences, ``batch_size / num_processes`` per process):

1. the step's examples come from a seeded per-epoch permutation of the training examples;
2. the method's :class:`~switch_core.training.sources.BatchSource` turns this process's share into the batch to
   train on (ground truth, fresh rollout, replay buffer, GKD mix, DistiLLM's adaptive schedule, or MiniLLM's rollout
   with its policy-gradient values, reused for ``ppo_epochs`` steps);
3. the response tokens of the *global* batch are counted (all-reduce), every micro-batch of
   ``optim.micro_batch_size`` sequences back-propagates ``sum(per-token loss) / N_global``
   (:func:`~switch_core.training.objective.batch_loss`), gradients are summed over processes (all-reduce), clipped
   to ``optim.grad_clip``, and AdamW takes one step on the cosine schedule. The gradient is therefore that of the
   token mean over the global batch, identical for any micro-batch split and process count (landscape.md pain
   points 8, 29). Gradients are reduced explicitly rather than by DDP hooks, because the chunked loss runs several
   backward calls per micro-batch. With MiniLLM's pre-training term (``lm_coef > 0``) a batch of the pre-training
   corpus adds ``lm_coef · sum(pt loss) / N_pt_global`` (:mod:`.lm_corpus`) before the gradients are reduced;
4. dev evaluation after every epoch, every ``optim.eval_every`` steps and at the last step (plus once before
   training, which DistiLLM's adaptive schedule needs); the best checkpoint by ``select_by`` is written to the output
   folder (``save_pretrained``, atomically);
5. a resumable state after every epoch, every ``optim.save_every`` steps and at the end (:mod:`.state`).

Every random choice derives from ``optim.seed`` (:mod:`.seeding`) or the saved RNG state, so ``resume`` reaches the
weights of an uninterrupted run. The teacher is frozen: eval mode, ``requires_grad=False``, used under ``no_grad``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import PreTrainedModel

from switch_core.atomic import atomic_write_json
from switch_core.config import EvalConfig, MethodConfig, OptimConfig, RolloutConfig
from switch_core.data.tokenize import TrainExample
from switch_core.evaluation.generate import eos_token_ids
from switch_core.hashing import source_fingerprint
from switch_core.models.checkpoint import save_pretrained_atomic
from switch_core.processes import make_accelerator
from switch_core.rollout import RolloutSettings, calibrate_settings
from switch_core.tracking import NullTracker, Tracker
from switch_core.training import seeding
from switch_core.training.batches import batch_from_examples
from switch_core.training.dev import DevData, dev_losses, dev_rouge_l
from switch_core.training.lm_corpus import PT_LOSS, lm_batch
from switch_core.training.losses import LossSpec
from switch_core.training.objective import batch_loss, check_output_head
from switch_core.training.optim import build_optimizer, build_scheduler
from switch_core.training.progress import Progress
from switch_core.training.sources import ROLLOUT_DATA, BatchSource
from switch_core.training.state import (
    Resumable,
    StateMismatchError,
    clear_state,
    load_state,
    save_state,
    state_changes,
)

SUMMARY_FILE = "train_summary.json"
TRACE_FILE = "rollout_traces.jsonl"
"""Per-step teacher share by response position of the run's rollouts, in ``state/<run>/`` (read by the report)."""


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
        output_dir: where the best checkpoint and ``train_summary.json`` go (``models/<name>``).
        state_dir: resumable state (``state/<name>``).
        select_by: best-checkpoint criterion, ``rouge_l`` (higher is better) or ``loss`` (``dev/loss``, lower).
        teacher: the frozen teacher, or None when the method needs none.
        rollout: rollout engine settings (methods with rollouts).
        generation: decoding settings of the dev ROUGE-L generations (the evaluation protocol's).
        max_prompt_length: prompt truncation for dev generations.
        resume: continue from ``state_dir`` when it holds a state (else start fresh). A state of other settings or
            inputs raises :class:`~switch_core.training.state.StateMismatchError`; a state saved by other library
            code is resumed with a warning.
        restart_if_incompatible: with ``resume``, start over instead when the saved state belongs to other settings,
            inputs, library code or process count (what ``dvc repro`` and ``switch-kd pipeline`` use: a stage re-run
            for a changed dependency never continues a stale state, a killed one continues).
        inputs: fingerprints of what the run starts from (checkpoints, data files, LoRA settings;
            :func:`~switch_core.training.run_setup.input_fingerprints`), part of the resume fingerprint.
        lm_corpus: MiniLLM's pre-training examples (:func:`~switch_core.training.lm_corpus.load_lm_corpus`); required
            when ``method.lm_coef > 0``.
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


@dataclass
class TrainResult:
    """Outcome of :func:`train` (also written as ``train_summary.json`` in the output folder)."""

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
    its share, the target and every (τ0, share) tried), else None."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``calibration`` only when the run calibrated τ0)."""
        out = {
            "run": self.name, "steps": self.steps, "best_step": self.best_step, "best": self.best_metrics,
            "final": self.final_metrics, "wall_seconds": round(self.wall_seconds, 3), "tau0": self.tau0,
        }
        return out | ({"calibration": self.calibration} if self.calibration is not None else {})


def _layout(optim: OptimConfig, world: int, n_train: int) -> tuple[int, int]:
    """``(sequences per process per step, steps per epoch)``."""
    if optim.batch_size % world:
        raise TrainingSetupError(f"{optim.key}.batch_size={optim.batch_size} must be divisible by the {world} processes")
    local = optim.batch_size // world
    steps_per_epoch = n_train // optim.batch_size
    if steps_per_epoch == 0:
        raise TrainingSetupError(
            f"{n_train} training examples are fewer than one batch ({optim.key}.batch_size={optim.batch_size})"
        )
    return local, steps_per_epoch


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=seeding.generator(seed, seeding.Stream.DATA_ORDER, epoch)).tolist()


def _all_reduce_gradients(params: Sequence[torch.nn.Parameter], accelerator: Accelerator) -> None:
    """Sum gradients over processes in one flat buffer (missing gradients count as zeros)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


def _is_better(select_by: str, value: float, best: float | None) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if select_by == "rouge_l" else value < best


def resume_fingerprint(job: TrainJob) -> dict[str, Any]:
    """What a resumed run must share with the saved state: settings (optimiser without logging cadence, method,
    rollout settings when the method rolls out, training-set size, selection criterion), ``job.inputs`` and the
    library code (``code``: :func:`~switch_core.hashing.source_fingerprint`; a strict resume only warns about it).

    Returns:
        A JSON-ready dict (saved in ``trainer.json``).
    """
    uses_rollouts = job.method.data in ROLLOUT_DATA
    data = {
        "optim": job.optim.model_dump(exclude={"log_every", "save_every"}), "method": job.method.model_dump(),
        "rollout": job.rollout.model_dump() if uses_rollouts else None, "train": len(job.train),
        "select_by": job.select_by, "inputs": job.inputs, "code": source_fingerprint(),
    }
    return json.loads(json.dumps(data))


def _lenient_keys(job: TrainJob) -> frozenset[str]:
    return frozenset() if job.restart_if_incompatible else frozenset({"code"})


def will_resume(job: TrainJob, num_processes: int) -> bool:
    """Whether :func:`train` will continue the saved state of ``job`` (False when it starts over or will raise).

    The stage commands ask this before training, to continue the run's metrics log only when the run continues.

    Raises:
        switch_core.training.state.StateError: ``latest`` names a folder that does not exist.
    """
    if not job.resume:
        return False
    changes = state_changes(job.state_dir, resume_fingerprint(job), num_processes, lenient=_lenient_keys(job))
    return changes is not None and not changes


class _Run:
    """State and steps of one :func:`train` call (kept small: each method is one job)."""

    def __init__(self, job: TrainJob, accelerator: Accelerator, tracker: Tracker) -> None:
        self.job, self.acc, self.tracker = job, accelerator, tracker
        self.optim = job.optim
        self.local_size, self.steps_per_epoch = _layout(job.optim, accelerator.num_processes, len(job.train))
        self.total_steps = job.optim.max_steps or job.optim.epochs * self.steps_per_epoch
        self.spec = LossSpec.from_method(job.method)
        self.pad_id = job.tokenizer.pad_token_id if job.tokenizer.pad_token_id is not None else job.tokenizer.eos_token_id
        self.uses_rollouts = job.method.data in ROLLOUT_DATA
        if (self.spec.needs_teacher or self.uses_rollouts) and job.teacher is None:
            raise TrainingSetupError(f"run {job.name!r}: method needs the teacher, but none was given")
        if job.method.lm_coef > 0 and not job.lm_corpus:
            raise TrainingSetupError(
                f"run {job.name!r}: lm_coef = {job.method.lm_coef} needs the pre-training corpus (lm_data), none given"
            )
        self.student = job.student.to(accelerator.device)
        self.teacher = job.teacher
        if self.teacher is not None:
            self.teacher = self.teacher.to(accelerator.device).eval().requires_grad_(False)
        if job.optim.gradient_checkpointing:
            self.student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        probe = batch_from_examples(job.dev.examples[:1], self.pad_id).to(accelerator.device)
        check_output_head(self.student, probe)
        if self.teacher is not None and self.spec.needs_teacher:
            check_output_head(self.teacher, probe, atol=1e-3)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = accelerator.prepare_optimizer(build_optimizer(self.student, job.optim))
        self.scheduler = build_scheduler(self.optimizer, job.optim, self.total_steps)
        self.settings = RolloutSettings.from_config(  # tau0 None until calibrated (switch) or restored
            job.rollout, job.method, pad_token_id=self.pad_id,
            stop_token_ids=eos_token_ids(self.student, job.tokenizer),
        )
        self.calibration: dict[str, Any] | None = None
        self.step = 0
        self.best_step, self.best_value, self.best_metrics = -1, None, {}
        self.last_metrics: dict[str, float] = {}
        self.elapsed_before = 0.0  # wall seconds of earlier (killed) processes of this run
        self.started = time.perf_counter()
        self.source: BatchSource | None = None
        self.rouge_seed = seeding.derive_seed(job.optim.seed, seeding.Stream.DEV_SUBSET) % 2**31
        self.progress: Progress | None = None
        self.saved_fingerprint: dict[str, Any] | None = None  # resume_fingerprint(job), computed once

    # ------------------------------------------------------------------ setup

    def fingerprint(self) -> dict[str, Any]:
        if self.saved_fingerprint is None:
            self.saved_fingerprint = resume_fingerprint(self.job)
        return self.saved_fingerprint

    def calibrate(self) -> None:
        """τ0 for a target teacher share, once at the start (student at its init checkpoint, train prompts)."""
        if not self.uses_rollouts or not self.settings.needs_calibration:
            return
        result: list[Any] = [None]
        if self.acc.is_main_process:
            seed = seeding.derive_seed(self.optim.seed, seeding.Stream.CALIBRATION) % 2**31
            result = [calibrate_settings(
                self.student, self.teacher, [e.prompt_ids for e in self.job.train], self.settings, self.job.rollout,
                seed=seed,
            )]
        if self.acc.num_processes > 1:
            broadcast_object_list(result, from_process=0)
        self.settings, self.calibration = result[0].settings, result[0].to_dict()
        if self.acc.is_main_process:
            self.tracker.log_params({"rollout.tau0_calibrated": result[0].tau0})
            self.tracker.log_metrics(
                {"calibration/tau0": result[0].tau0, "calibration/teacher_share": result[0].achieved_share}, step=0
            )
            self._say(f"calibrated tau0 = {result[0].tau0:.4f} (teacher share {result[0].achieved_share:.3f}, "
                      f"target {result[0].target_share:.2f})")

    def build_source(self) -> None:
        self.source = BatchSource(
            self.job.method, student=self.student, teacher=self.teacher,
            settings=self.settings if self.uses_rollouts else None, pad_token_id=self.pad_id,
            seed=self.optim.seed, total_steps=self.total_steps, rollout_batch_size=self.job.rollout.batch_size,
            keep_teacher_logits=self.job.method.reuse_rollout_teacher_logits and self.spec.needs_teacher,
            rank=self.acc.process_index,
            reduce_sum=(lambda t: self.acc.reduce(t, reduction="sum")) if self.acc.num_processes > 1 else None,
        )

    # ------------------------------------------------------------------ state

    def objects(self) -> Resumable:
        return Resumable(self.student, self.optimizer, self.scheduler)

    def trainer_state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint(), "best_step": self.best_step, "best_value": self.best_value,
            "best_metrics": self.best_metrics, "last_metrics": self.last_metrics, "tau0": self.settings.tau0,
            "calibration": self.calibration, "elapsed": self.wall_seconds(),
        }

    def wall_seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def restore(self) -> bool:
        """Load the saved state (True), or report that the run starts over (False).

        Raises:
            StateMismatchError: the state belongs to another run and ``restart_if_incompatible`` is off.
        """
        try:
            loaded = load_state(
                self.job.state_dir, self.objects(), self.acc, self.fingerprint(), lenient=_lenient_keys(self.job)
            )
        except StateMismatchError as error:
            if not self.job.restart_if_incompatible:
                raise
            self._say(f"saved state not resumed, starting over (changed: {', '.join(error.changed)})")
            return False
        if loaded is None:
            return False
        trainer, rank_state = loaded
        if trainer["fingerprint"].get("code") != self.fingerprint()["code"]:
            self._say("resuming a state saved by other switch_core code (the library changed since)")
        self.step, self.elapsed_before = int(trainer["step"]), float(trainer["elapsed"])
        self.settings = dataclasses.replace(self.settings, tau0=trainer["tau0"])
        self.calibration = trainer.get("calibration")  # absent from states saved before it was recorded
        self.best_step, self.best_value = int(trainer["best_step"]), trainer["best_value"]
        self.best_metrics, self.last_metrics = trainer["best_metrics"], trainer["last_metrics"]
        self.build_source()
        self.source.load_state_dict(rank_state["source"])
        return True

    def save(self) -> None:
        save_state(
            self.job.state_dir, self.step, self.objects(), self.trainer_state(), {"source": self.source.state_dict()},
            self.acc,
        )

    # ------------------------------------------------------------------ steps

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns the step's metrics (global over processes)."""
        began = time.perf_counter()
        epoch, position = divmod(self.step, self.steps_per_epoch)
        order = _epoch_order(len(self.job.train), self.optim.seed, epoch)
        start = position * self.optim.batch_size + self.acc.process_index * self.local_size
        examples = [self.job.train[i] for i in order[start : start + self.local_size]]
        out = self.source.next(self.step, examples, offset=start - position * self.optim.batch_size)
        batch = out.batch.to(self.acc.device)
        counts = torch.tensor(
            [batch.num_loss_tokens, int(batch.attention_mask.sum())], dtype=torch.float64, device=self.acc.device
        )
        counts = self.acc.reduce(counts, reduction="sum")
        self.student.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.acc.device)
        terms: dict[str, torch.Tensor] = {}
        for micro in batch.micro_batches(self.optim.micro_batch_size):
            loss_sum += batch_loss(
                self.student, self.teacher, micro, self.spec, chunk_tokens=self.optim.loss_chunk_tokens,
                scale=1.0 / float(counts[0]), backward=self.acc.backward, autocast=self.acc.autocast, terms=terms,
            ).double()
        lm_loss = self._lm_loss(start) if self.job.method.lm_coef > 0 else None
        if self.acc.num_processes > 1:
            _all_reduce_gradients(self.params, self.acc)
        grad_norm = self.acc.clip_grad_norm_(self.params, self.optim.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        counters = ("rollout_tokens", "teacher_tokens", "rollout_seconds", *_POLICY_COUNTERS)
        stats = torch.tensor(
            [float(loss_sum)] + [out.stats.get(k, 0.0) for k in counters] + [float(terms.get(k, 0.0)) for k in _TERMS],
            dtype=torch.float64, device=self.acc.device,
        )
        stats = self.acc.reduce(stats, reduction="sum")
        seconds = time.perf_counter() - began
        loss = float(stats[0] / counts[0])
        metrics = {
            "train/loss": loss if lm_loss is None else loss + self.job.method.lm_coef * lm_loss,
            "train/lr": lr, "train/grad_norm": float(grad_norm),
            "train/response_tokens": float(counts[0]), "train/tokens_per_second": float(counts[1]) / seconds,
            "train/step_seconds": seconds, "train/epoch": self.step / self.steps_per_epoch,
            f"source/{out.action.value}": 1.0,
        }
        if self.uses_rollouts:
            metrics["train/phi"] = self.source.phi
        if stats[1] > 0:
            if self.source.settings.strategy != "student":
                metrics["rollout/teacher_share"] = float(stats[2] / stats[1])
            metrics["rollout/mean_length"] = float(stats[1]) / self.optim.batch_size
            metrics["rollout/seconds"] = float(stats[3]) / self.acc.num_processes
        if self.spec.policy_gradient:
            sums = dict(zip(counters + _TERMS, stats[1:].tolist(), strict=True))
            metrics.update(_policy_metrics(sums, float(counts[0]), self.spec.single_step_reg))
        if lm_loss is not None:
            metrics["train/lm_loss"] = lm_loss
        if out.by_position is not None and self.source.settings.strategy != "student" and self.acc.is_main_process:
            self._append_trace(*out.by_position)
        return metrics

    def _lm_loss(self, start: int) -> float:
        """Back-propagate ``lm_coef ×`` the pre-training loss token mean of the step's corpus batch (MiniLLM's
        ``pt_loss``, method.md §6.5; normalised by the batch's global token count); returns that mean."""
        batch = lm_batch(
            self.job.lm_corpus, seed=self.optim.seed, step=self.step, offset=start, count=self.local_size,
            global_count=self.optim.batch_size, pad_token_id=self.pad_id,
        ).to(self.acc.device)
        tokens = self.acc.reduce(
            torch.tensor(float(batch.num_loss_tokens), dtype=torch.float64, device=self.acc.device), reduction="sum"
        )
        total = torch.zeros((), dtype=torch.float64, device=self.acc.device)
        for micro in batch.micro_batches(self.optim.micro_batch_size):
            total += batch_loss(
                self.student, self.teacher, micro, PT_LOSS, chunk_tokens=self.optim.loss_chunk_tokens,
                scale=self.job.method.lm_coef / float(tokens), backward=self.acc.backward, autocast=self.acc.autocast,
            ).double()
        return float(self.acc.reduce(total, reduction="sum") / tokens)

    def _append_trace(self, teacher_at: list[int], tokens_at: list[int]) -> None:
        """One line of the rollout trace: the main process's teacher share at each response position."""
        row = {
            "step": self.step, "count_by_position": tokens_at,
            "teacher_share_by_position": [t / n if n else None for t, n in zip(teacher_at, tokens_at)],
        }
        self.job.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.job.state_dir / TRACE_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def evaluate(self) -> dict[str, float]:
        """Dev metrics of the current student; updates the best checkpoint and DistiLLM's φ.

        Before training (step 0) only the dev losses are computed: the start checkpoint is never selected, and
        DistiLLM's φ needs only the dev CE; dev ROUGE-L generations start at the first evaluation after a step.
        """
        self.student.eval()
        job = self.job
        metrics = dev_losses(
            self.student, self.teacher, job.dev.examples, self.spec, accelerator=self.acc,
            batch_size=self.optim.micro_batch_size, chunk_tokens=self.optim.loss_chunk_tokens, pad_token_id=self.pad_id,
        )
        if self.step > 0:
            metrics["dev/rouge_l"] = dev_rouge_l(
                self.student, job.tokenizer, job.dev, job.generation, accelerator=self.acc,
                max_prompt_length=job.max_prompt_length, seed=self.rouge_seed,
            )
        self.student.train()
        self.source.after_evaluation(metrics["dev/ce"])
        value = metrics.get("dev/rouge_l" if job.select_by == "rouge_l" else "dev/loss", math.nan)
        if self.step > 0 and _is_better(job.select_by, value, self.best_value):
            self.best_step, self.best_value, self.best_metrics = self.step, value, dict(metrics)
            if self.acc.is_main_process:
                save_pretrained_atomic(self.student, job.tokenizer, job.output_dir)
            self.acc.wait_for_everyone()
        self.last_metrics = dict(metrics)
        if self.acc.is_main_process:
            self.tracker.log_metrics(metrics, step=self.step)
            shown = ", ".join(f"{k.removeprefix('dev/')} {v:.4f}" for k, v in metrics.items())
            mark = " (best)" if self.best_step == self.step else ""
            self._say(f"dev @ step {self.step}: {shown}{mark}")
        return metrics

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)
        elif self.acc.is_main_process:
            print(f"[{self.job.name}] {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ run

    def run(self) -> TrainResult:
        job = self.job
        resumed = job.resume and self.restore()
        if not resumed:
            clear_state(job.state_dir, self.acc)
            torch.manual_seed(seeding.derive_seed(self.optim.seed, seeding.Stream.GLOBAL, self.acc.process_index))
            self.calibrate()
            self.build_source()
            self.evaluate()
        else:
            self._say(f"resuming at step {self.step}/{self.total_steps}")
        if self.acc.is_main_process:
            self.progress = Progress(job.name, self.total_steps, self.step, self.optim.log_every)
        window: list[dict[str, float]] = []
        while self.step < self.total_steps:
            metrics = self.train_step()
            window.append(metrics)
            if self.progress is not None:
                self.progress.update(
                    self.step, metrics["train/loss"], metrics["train/tokens_per_second"],
                    metrics.get("rollout/teacher_share"),
                )
            if self.acc.is_main_process and (self.step % self.optim.log_every == 0 or self.step == self.total_steps):
                self.tracker.log_metrics(_mean_metrics(window), step=self.step)
                window = []
            last = self.step == self.total_steps
            epoch_end = self.step % self.steps_per_epoch == 0
            if epoch_end or last or (self.optim.eval_every and self.step % self.optim.eval_every == 0):
                self.evaluate()
            if epoch_end or last or (self.optim.save_every and self.step % self.optim.save_every == 0):
                self.save()
        if self.progress is not None:
            self.progress.close()
        result = TrainResult(
            job.name, self.step, self.best_step, self.best_metrics, self.last_metrics, self.wall_seconds(),
            self.settings.tau0, job.output_dir, self.calibration,
        )
        if self.acc.is_main_process:
            atomic_write_json(job.output_dir / SUMMARY_FILE, result.to_dict())
            self.tracker.log_artifact(job.output_dir)
        self.acc.wait_for_everyone()
        return result


_LAST_VALUE = ("train/lr", "train/epoch", "train/phi")
_POLICY_COUNTERS = ("reward_sum", "return_sum", "return_sq_sum", "weight_sum")
_TERMS = ("pg", "reg", "clipped")


def _policy_metrics(sums: dict[str, float], tokens: float, with_reg: bool) -> dict[str, float]:
    """MiniLLM's step metrics from global sums: token means of the PPO loss, of the single-step KL and of the clipped
    tokens; on rollout steps the rollout's reward mean, return mean / std before whitening and importance-weight
    mean."""
    metrics = {"train/pg_loss": sums["pg"] / tokens, "train/clip_fraction": sums["clipped"] / tokens}
    if with_reg:
        metrics["train/reg_loss"] = sums["reg"] / tokens
    rolled = sums["rollout_tokens"]
    if rolled > 0:
        mean = sums["return_sum"] / rolled
        metrics.update({
            "rollout/reward_mean": sums["reward_sum"] / rolled, "rollout/return_mean": mean,
            "rollout/return_std": math.sqrt(max(sums["return_sq_sum"] / rolled - mean * mean, 0.0)),
            "rollout/importance_weight_mean": sums["weight_sum"] / rolled,
        })
    return metrics


def _mean_metrics(window: list[dict[str, float]]) -> dict[str, float]:
    """Each metric over the steps of a logging window: the mean (``source/*`` become the fraction of steps that
    used that source; rollout metrics average over the steps that had rollouts), the last value for lr, epoch, φ."""
    keys = sorted({k for m in window for k in m})
    out = {}
    for key in keys:
        if key in _LAST_VALUE:
            out[key] = window[-1][key]
        elif key.startswith("source/"):
            out[key] = sum(m.get(key, 0.0) for m in window) / len(window)
        else:
            values = [m[key] for m in window if key in m]
            out[key] = sum(values) / len(values)
    return out


def train(job: TrainJob, *, accelerator: Accelerator | None = None, tracker: Tracker | None = None) -> TrainResult:
    """Train ``job.student`` with ``job.method`` (module docstring); write the best checkpoint and a summary.

    Args:
        job: the run.
        accelerator: device / process placement and mixed precision; default ``make_accelerator(
            job.optim.mixed_precision)``.
        tracker: where metrics go (main process only); default :class:`~switch_core.tracking.NullTracker`.

    Returns:
        The :class:`TrainResult`; ``job.output_dir`` holds the best checkpoint (loadable with
        ``AutoModelForCausalLM.from_pretrained``) and ``train_summary.json``.

    Raises:
        TrainingSetupError: batch sizes, data size or a missing teacher.
        switch_core.training.objective.OutputHeadError: an architecture whose logits the chunked loss cannot rebuild.
        switch_core.training.state.StateError: ``resume`` with an incompatible saved state.
    """
    accelerator = accelerator or make_accelerator(job.optim.mixed_precision)
    return _Run(job, accelerator, tracker or NullTracker()).run()
