"""The one training loop of switch-kd: SFT and every distillation method (a batch source + a per-token loss).

Per optimizer step (global batch ``optim.batch_size`` sequences, ``batch_size / num_processes`` per process):

1. the step's examples come from a seeded per-epoch permutation of the training examples;
2. the method's :class:`~switch_core.training.sources.BatchSource` turns this process's share into the batch to
   train on (ground truth, fresh rollout, replay buffer, GKD mix, DistiLLM's adaptive schedule, or MiniLLM's rollout
   with its policy-gradient values, reused for ``ppo_epochs`` steps);
3. the response tokens of the *global* batch are counted (all-reduce), every micro-batch of
   ``optim.micro_batch_size`` sequences back-propagates ``sum(per-token loss) / N_global``
   (:func:`~switch_core.training.objective.batch_loss`), gradients are summed over processes by the run's engine
   (DDP or FSDP2, :mod:`.engine`; in the backward of the step's last micro-batch), clipped to ``optim.grad_clip``,
   and AdamW takes one step on the cosine schedule. The gradient is therefore that of the token mean over the global
   batch, identical for any micro-batch split and process count (docs/METHOD.md §A.4). With MiniLLM's pre-training
   term (``lm_coef > 0``) a batch of the pre-training corpus adds ``lm_coef · sum(pt loss) / N_pt_global``
   (:mod:`.lm_corpus`), and its last micro-batch is the one whose backward synchronises;
4. dev evaluation after every epoch, every ``optim.eval_every`` steps and at the last step (plus once before
   training, which DistiLLM's adaptive schedule needs); the best checkpoint by ``select_by`` is kept in the state
   folder (``save_pretrained``, atomically) and published to the output folder when the run ends (:mod:`.outputs`);
5. a resumable state after every epoch, every ``optim.save_every`` steps and at the end (:mod:`.state`).

The run's parts live in their own modules: :mod:`.job` (what a run is given and returns), :mod:`.step` (which
examples a step trains on), :mod:`.engine` (DDP / FSDP2 on several processes), :mod:`.step_stats` (the step's named
sums and metrics, logging windows), :mod:`.traces` (rollout traces), :mod:`.outputs` (best checkpoint, publishing),
:mod:`.state` (resumable state and its fingerprint).

Every random choice derives from ``optim.seed`` (:mod:`.seeding`) or the saved RNG state, so ``resume`` reaches the
weights of an uninterrupted run. The teacher is frozen: eval mode, ``requires_grad=False``, used under ``no_grad``.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from switch_core.config import ROLLOUT_DATA
from switch_core.evaluation.generate import eos_token_ids
from switch_core.processes import die_with_launcher, make_accelerator
from switch_core.rollout import RolloutSettings, calibrate_settings
from switch_core.rollout.schedules import gate_summary
from switch_core.tracking import NullTracker, Tracker
from switch_core.training import seeding
from switch_core.training.batches import batch_from_examples
from switch_core.training.dev import dev_losses, dev_rouge_l
from switch_core.training.engine import Engine, full_state_dict, is_sharded, plain_class
from switch_core.training.job import TrainingSetupError, TrainJob, TrainResult
from switch_core.training.lm_corpus import PT_LOSS, lm_batch
from switch_core.training.losses import LossSpec
from switch_core.training.objective import batch_loss, check_output_head
from switch_core.training.optim import build_optimizer, build_scheduler
from switch_core.training.outputs import publish, remove_output, save_best
from switch_core.training.progress import Progress
from switch_core.training.sources import BatchSource
from switch_core.training.state import (
    Resumable,
    StateMismatchError,
    clear_state,
    lenient_keys,
    load_state,
    resume_fingerprint,
    run_lock,
    save_state,
)
from switch_core.training.step import StepLayout, step_examples
from switch_core.training.step_stats import StepSums, is_better, mean_metrics, policy_metrics, rollout_metrics
from switch_core.training.traces import append_trace, sum_by_position, truncate_traces


class _Run:
    """State and steps of one :func:`train` call (kept small: each method is one job)."""

    def __init__(self, job: TrainJob, accelerator: Accelerator, tracker: Tracker) -> None:
        self.job, self.acc, self.tracker = job, accelerator, tracker
        self.optim = job.optim
        self.layout = StepLayout.of(job.optim, accelerator.num_processes, len(job.train))
        self.steps_per_epoch = self.layout.steps_per_epoch
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
        if job.optim.gradient_checkpointing:
            job.student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.engine = Engine.build(job.student, job.teacher, accelerator, job.distributed)
        self.student, self.teacher = self.engine.student, self.engine.teacher
        probe = batch_from_examples(job.dev.examples[:1], self.pad_id).to(accelerator.device)
        with self.engine.gathered():
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
        with self.engine.gathered():
            if self.acc.is_main_process:
                seed = seeding.derive_seed(self.optim.seed, seeding.Stream.CALIBRATION) % 2**31
                with self.acc.autocast():
                    result = [calibrate_settings(
                        self.student, self.teacher, [e.prompt_ids for e in self.job.train], self.settings,
                        self.job.rollout, seed=seed,
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
            if result[0].reason is not None:
                self._say(result[0].reason)

    def gate(self) -> dict[str, Any] | None:
        """Where SWITCH's gate can act with the run's τ0 (:func:`gate_summary` over ``max_new_tokens`` positions);
        None unless the rollouts use the ``switch`` strategy with τ0 set."""
        s = self.settings
        if not self.uses_rollouts or s.strategy != "switch" or s.tau0 is None:
            return None
        return gate_summary(s.schedule, tau0=s.tau0, steps=s.max_new_tokens, decay=s.decay, horizon=s.schedule_horizon)

    def say_gate(self) -> None:
        """Print where the gate can act; a τ0 above ln 2 is named a position switch (docs/METHOD.md §1.4)."""
        gate = self.gate()
        if gate is None:
            return
        if gate["position_switch"]:
            self._say(f"tau0 = {gate['tau0']:.4f} > ln 2: a position switch, not a gate; the first "
                      f"{gate['student_only_positions']} response positions are the student's by construction")
        self._say(f"the gate can choose at {100 * gate['gate_active_share']:.1f}% of the "
                  f"{self.settings.max_new_tokens} response positions (tau_t < ln 2)")

    def build_source(self) -> None:
        self.source = BatchSource(
            self.job.method, student=self.student, teacher=self.teacher,
            settings=self.settings if self.uses_rollouts else None, pad_token_id=self.pad_id,
            seed=self.optim.seed, total_steps=self.total_steps, rollout_batch_size=self.job.rollout.batch_size,
            keep_teacher_logits=self.job.method.reuse_rollout_teacher_logits and self.spec.needs_teacher,
            rank=self.acc.process_index,
            reduce_sum=(lambda t: self.acc.reduce(t, reduction="sum")) if self.acc.num_processes > 1 else None,
            autocast=self.acc.autocast,
        )

    # ------------------------------------------------------------------ state

    def objects(self) -> Resumable:
        return Resumable(self.student, self.optimizer, self.scheduler, sharded=is_sharded(self.student))

    def trainer_state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint(), "best_step": self.best_step, "best_value": self.best_value,
            "best_metrics": self.best_metrics, "last_metrics": self.last_metrics, "tau0": self.settings.tau0,
            "calibration": self.calibration, "elapsed": self.wall_seconds(),
        }

    def wall_seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def restore(self) -> bool:
        """Load the saved state (True), or report that the run starts over (False). The rollout trace is cut back
        to the saved step (the lines of later steps are written again).

        Raises:
            StateMismatchError: the state belongs to another run and ``restart_if_incompatible`` is off.
        """
        try:
            loaded = load_state(
                self.job.state_dir, self.objects(), self.acc, self.fingerprint(), lenient=lenient_keys(self.job),
                strategy=self.engine.strategy,
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
        if self.acc.is_main_process:
            truncate_traces(self.job.state_dir, self.step)
        self.build_source()
        self.source.load_state_dict(rank_state["source"])
        return True

    def save(self) -> None:
        save_state(
            self.job.state_dir, self.step, self.objects(), self.trainer_state(), {"source": self.source.state_dict()},
            self.acc, strategy=self.engine.strategy,
        )

    # ------------------------------------------------------------------ steps

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns the step's metrics (global over processes)."""
        began = time.perf_counter()
        acc = self.acc
        share = step_examples(
            self.job.train, self.step, self.layout, seed=self.optim.seed, batch_size=self.optim.batch_size,
            rank=acc.process_index,
        )
        with self.engine.gathered():
            out = self.source.next(self.step, share.examples, offset=share.offset)
        batch = out.batch.to(acc.device)
        response_tokens, tokens = acc.reduce(
            torch.tensor([batch.num_loss_tokens, int(batch.attention_mask.sum())], dtype=torch.float64, device=acc.device),
            reduction="sum",
        ).tolist()
        self.student.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        terms: dict[str, torch.Tensor] = {}
        with_lm = self.job.method.lm_coef > 0
        loss_sum += self._backward(batch, self.spec, 1.0 / response_tokens, last=not with_lm, terms=terms)
        lm_loss = self._lm_loss(share.start) if with_lm else None
        grad_norm = self.engine.clip_grad_norm(self.params, self.optim.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        sums = StepSums.collect(float(loss_sum), out.stats, terms).reduced(
            lambda t: acc.reduce(t, reduction="sum"), acc.device
        )
        seconds = time.perf_counter() - began
        loss = sums.loss_sum / response_tokens
        with_share = self.uses_rollouts and self.source.settings.strategy != "student"
        metrics = {
            "train/loss": loss if lm_loss is None else loss + self.job.method.lm_coef * lm_loss,
            "train/lr": lr, "train/grad_norm": grad_norm,
            "train/response_tokens": response_tokens, "train/tokens_per_second": tokens / seconds,
            "train/step_seconds": seconds, "train/epoch": self.step / self.steps_per_epoch,
            f"source/{out.action.value}": 1.0,
        }
        if self.uses_rollouts:
            metrics["train/phi"] = self.source.phi
        metrics |= rollout_metrics(
            sums, batch_size=self.optim.batch_size, processes=acc.num_processes, with_share=with_share
        )
        if self.spec.policy_gradient:
            metrics |= policy_metrics(sums, response_tokens, self.spec.single_step_reg)
        if lm_loss is not None:
            metrics["train/lm_loss"] = lm_loss
        by_position = out.by_position
        if with_share and acc.num_processes > 1:  # every process's rows (collective)
            by_position = sum_by_position(gather_object([out.by_position]))
        if by_position is not None and with_share and acc.is_main_process:
            append_trace(self.job.state_dir, self.step, *by_position)
        return metrics

    def _lm_loss(self, start: int) -> float:
        """Back-propagate ``lm_coef ×`` the pre-training loss token mean of the step's corpus batch (MiniLLM's
        ``pt_loss``, docs/METHOD.md §6.5; normalised by the batch's global token count); returns that mean."""
        batch = lm_batch(
            self.job.lm_corpus, seed=self.optim.seed, step=self.step, offset=start, count=self.layout.local_size,
            global_count=self.optim.batch_size, pad_token_id=self.pad_id,
        ).to(self.acc.device)
        tokens = self.acc.reduce(
            torch.tensor(float(batch.num_loss_tokens), dtype=torch.float64, device=self.acc.device), reduction="sum"
        )
        total = self._backward(batch, PT_LOSS, self.job.method.lm_coef / float(tokens), last=True)
        return float(self.acc.reduce(total, reduction="sum") / tokens)

    def _backward(
        self, batch: Any, spec: LossSpec, scale: float, *, last: bool, terms: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Back-propagate ``scale ×`` the summed loss of ``batch``, micro-batch by micro-batch; return the summed loss
        (float64, this process). With several processes the engine synchronises gradients in the backward of the last
        micro-batch when ``last`` (the step's last backward)."""
        total = torch.zeros((), dtype=torch.float64, device=self.acc.device)
        micros = list(batch.micro_batches(self.optim.micro_batch_size))
        for index, micro in enumerate(micros):
            if self.engine.wrapped:
                loss = self.engine.micro_batch_loss(
                    micro, spec, chunk_tokens=self.optim.loss_chunk_tokens, scale=scale,
                    sync=last and index == len(micros) - 1, terms=terms,
                )
            else:
                loss = batch_loss(
                    self.student, self.teacher, micro, spec, chunk_tokens=self.optim.loss_chunk_tokens, scale=scale,
                    backward=self.acc.backward, autocast=self.acc.autocast, terms=terms,
                )
            total += loss.double()
        return total

    def evaluate(self) -> dict[str, float]:
        """Dev metrics of the current student; updates the best checkpoint and DistiLLM's φ.

        Before training (step 0) only the dev losses are computed: the start checkpoint is never selected, and
        DistiLLM's φ needs only the dev CE; dev ROUGE-L generations start at the first evaluation after a step.
        """
        self.student.eval()
        job = self.job
        with self.engine.gathered():
            metrics = dev_losses(
                self.student, self.teacher, job.dev.examples, self.spec, accelerator=self.acc,
                batch_size=self.optim.micro_batch_size, chunk_tokens=self.optim.loss_chunk_tokens,
                pad_token_id=self.pad_id,
            )
            if self.step > 0:
                metrics["dev/rouge_l"] = dev_rouge_l(
                    self.student, job.tokenizer, job.dev, job.generation, accelerator=self.acc,
                    max_prompt_length=job.max_prompt_length, seed=self.rouge_seed,
                )
        self.student.train()
        self.source.after_evaluation(metrics["dev/ce"])
        value = metrics.get("dev/rouge_l" if job.select_by == "rouge_l" else "dev/loss", math.nan)
        if self.step > 0 and is_better(job.select_by, value, self.best_value):
            self.best_step, self.best_value, self.best_metrics = self.step, value, dict(metrics)
            full = full_state_dict(self.student) if is_sharded(self.student) else None  # collective
            if self.acc.is_main_process:
                with plain_class(self.student):
                    save_best(self.student, job.tokenizer, job.state_dir, state_dict=full)
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
        count = self.acc.num_processes
        self._say(f"training on {count} process{'es' if count > 1 else ''} ({self.acc.device.type}, "
                  f"{self.engine.strategy or 'no distributed engine'})")
        resumed = job.resume and self.restore()
        if not resumed:
            clear_state(job.state_dir, self.acc)
            if self.acc.is_main_process:
                remove_output(job.output_dir)
            torch.manual_seed(seeding.derive_seed(self.optim.seed, seeding.Stream.GLOBAL, self.acc.process_index))
            self.calibrate()
            self.build_source()
            self.evaluate()
        else:
            self._say(f"resuming at step {self.step}/{self.total_steps} (saved state in {job.state_dir})")
        self.say_gate()
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
                self.tracker.log_metrics(mean_metrics(window), step=self.step)
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
            self.settings.tau0, job.output_dir, self.calibration, self.gate(),
        )
        if self.acc.is_main_process:
            publish(result, job.state_dir)
            self.tracker.log_artifact(job.output_dir)
        self.acc.wait_for_everyone()
        return result


def train(job: TrainJob, *, accelerator: Accelerator | None = None, tracker: Tracker | None = None) -> TrainResult:
    """Train ``job.student`` with ``job.method`` (module docstring); write the best checkpoint and a summary.

    Args:
        job: the run.
        accelerator: device / process placement and mixed precision; default ``make_accelerator(
            job.optim.mixed_precision)``.
        tracker: where metrics go (main process only); default :class:`~switch_core.tracking.NullTracker`.

    Returns:
        The :class:`TrainResult`; ``job.output_dir`` holds the best checkpoint (loadable with
        ``AutoModelForCausalLM.from_pretrained``) and ``train_summary.json``, published when the run ends;
        ``job.state_dir`` holds ``timings.json``.

    Raises:
        TrainingSetupError: batch sizes, data size or a missing teacher.
        switch_core.training.objective.OutputHeadError: an architecture whose logits the chunked loss cannot rebuild.
        switch_core.training.state.StateError: ``resume`` with an incompatible saved state.
        switch_core.training.state.RunLockedError: another training of the same run holds its lock
            (:func:`~switch_core.training.state.run_lock`).
    """
    die_with_launcher()  # before taking the run's lock: a rank orphaned by a killed launcher would keep it
    accelerator = accelerator or make_accelerator(job.optim.mixed_precision)
    with run_lock(job.state_dir, accelerator):
        return _Run(job, accelerator, tracker or NullTracker()).run()
