"""The training engine of a run on several processes (``distributed`` section): DDP or FSDP2 for the student, a
replicated or sharded teacher, the loss of a micro-batch with one backward call, gathered weights for rollouts and
evaluation, and the full weights of a sharded student for its Hugging Face checkpoint.

A one-process run uses none of this (:attr:`Engine.wrapped` is False and the loop runs exactly as before).

Engines (``distributed.strategy``):

* ``ddp``: ``accelerator.prepare_model`` wraps the student in torch DDP (weights broadcast from rank 0, gradients
  all-reduced by DDP's buckets during the backward of the step's last micro-batch; the others run under
  ``accelerator.no_sync``).
* ``fsdp2``: torch ``fully_shard`` in the unit layout of accelerate's FSDP2 plugin (``fsdp_version: 2``): one unit per
  decoder layer (``_no_split_modules``), the root unit holding embeddings, final norm and output head (resharded only
  after backward). Parameters, gradients and AdamW moments are sharded; gradients are reduce-scattered in the backward
  of the step's last micro-batch (``set_requires_gradient_sync``). accelerate 1.15 turns its FSDP plugin on only for
  accelerator devices (``AcceleratorState``: not for CPU/gloo ranks), so switch-kd applies ``fully_shard`` itself, on
  every device, with that layout.

One backward per micro-batch: DDP marks each parameter ready once per synchronised backward, and the chunked loss
(:mod:`.objective`) back-propagates every chunk into the (tied) output head separately. Here (``batch_loss`` with
``collective``) each chunk is back-propagated into detached copies of its hidden states and of the head's weight and
bias, where the chunks' gradients add up, then one ``torch.autograd.backward`` carries the sums into the model: the
gradient is the same sum, only its accumulation order differs (float rounding). The student's forward runs through its
root module (the DDP wrapper or the root FSDP unit, so their hooks run) with ``logits_to_keep`` empty; its final
hidden states are taken from the base model's output by a forward hook. Both engines average gradients over processes,
so the loss scale is multiplied by the process count to keep the gradient of the global token mean (docs/METHOD.md
§A.4).

Rollouts and evaluation with sharded models (:meth:`Engine.gathered`): FSDP requires every rank to call a sharded
model's forward the same number of times, but a rollout's number of forward calls depends on its rows (rows stop, the
speculative planner picks chunk lengths) and calibration runs on rank 0 only. Instead of keeping the ranks in lockstep
(which would reach into the rollout engine), every FSDP unit is all-gathered once before these phases and kept
unsharded until they end (``set_reshard_after_forward(False)``), so their forward calls need no collective and each
rank runs its rollouts independently, as with replicated models. The cost: the full student and teacher weights must
fit on each device during rollouts and evaluation (the optimizer state and gradients stay sharded). On exit every rank
clears the forward order FSDP2 recorded for its next backward's prefetch (:func:`_forget_forward_order`), which those
rank-dependent forwards would otherwise leave different on each rank (a deadlock in the next backward).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn

from switch_core.config import DistributedConfig
from switch_core.processes import foreign_engine_message
from switch_core.training.batches import TrainBatch
from switch_core.training.job import TrainingSetupError
from switch_core.training.losses import LossSpec
from switch_core.training.objective import batch_loss


def _fsdp() -> Any:
    from torch.distributed import fsdp

    return fsdp


def is_sharded(model: nn.Module | None) -> bool:
    """Whether ``model`` was sharded with ``fully_shard``."""
    return model is not None and isinstance(model, _fsdp().FSDPModule)


def shard(model: nn.Module, *, layer_reshard: bool = True) -> nn.Module:
    """Shard a Hugging Face causal LM over all processes with ``fully_shard`` (in place; module docstring layout).

    Args:
        model: the model, on this process's device; its decoder layer classes are ``model._no_split_modules``.
        layer_reshard: free each layer's gathered weights after its forward (``reshard_after_forward``).

    Returns:
        ``model`` (now an ``FSDPModule``; its parameters are ``DTensor`` shards).

    Raises:
        TrainingSetupError: the model names no decoder layer classes.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise TrainingSetupError(
            f"{type(model).__name__} names no decoder layer classes (_no_split_modules); fsdp2 cannot shard it"
        )
    fully_shard = _fsdp().fully_shard
    for layer in layers:
        fully_shard(layer, reshard_after_forward=layer_reshard)
    fully_shard(model, reshard_after_forward=False)
    return model


def _units(model: nn.Module | None) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, _fsdp().FSDPModule)] if is_sharded(model) else []


def _forget_forward_order(units: list[Any]) -> None:
    """Clear the forward order that FSDP2 records for the backward prefetch of ``units``.

    Every forward of a unit appends it to its root's ``post_forward_order`` (and the index to the unit's
    ``_post_forward_indices``), with or without grad; torch clears these only at the end of a backward. The next
    backward prefetches (all-gathers) the unit recorded before each one, so forwards without backward that differ
    between ranks (dev ROUGE-L generation on rank 0, rollouts with rows that stop early, more dev examples on one
    rank) make the ranks all-gather different units in the next training backward: rank 0 reduce-scatters while
    rank 1 all-gathers, and both wait for ever. Cleared on every rank after such forwards, the next backward sees
    only the training forward's order, the same on every rank. (torch 2.x private attributes: FSDP2 has no public
    call for it.)
    """
    for unit in units:
        state = unit._get_fsdp_state()
        state._comm_ctx.post_forward_order.clear()
        for group in state._fsdp_param_groups:
            group._post_forward_indices.clear()


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The full (unsharded) CPU state dict of a sharded model on the main process, ``{}`` on the others
    (collective: every process calls it). A tied parameter appears once, under its first name (as
    ``save_pretrained`` writes an unsharded model: the tied output head is not stored)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in full.items() if k not in tied}


@contextmanager
def plain_class(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with its original class while the block runs (``fully_shard`` makes it ``FSDP<Class>``), so that
    ``save_pretrained`` writes the original architecture name into ``config.json``."""
    sharded_class = type(model)
    if is_sharded(model):
        model.__class__ = sharded_class.__bases__[1]
    try:
        yield model
    finally:
        model.__class__ = sharded_class


@dataclass
class Engine:
    """The models of one run and how they are spread over processes.

    Attributes:
        accelerator: processes and devices.
        strategy: ``ddp`` or ``fsdp2``; None for one process.
        student: the trained model (sharded in place for ``fsdp2``); the loop evaluates, rolls out and saves it.
        forward_model: what the training forward calls: the DDP wrapper for ``ddp``, else ``student``.
        teacher: the frozen teacher (sharded for ``teacher: shard``), or None.
    """

    accelerator: Accelerator
    strategy: str | None
    student: nn.Module
    forward_model: nn.Module
    teacher: nn.Module | None

    @classmethod
    def build(
        cls, student: nn.Module, teacher: nn.Module | None, accelerator: Accelerator, config: DistributedConfig
    ) -> Engine:
        """Place the models: on this process's device, then wrapped or sharded when there are several processes.

        Raises:
            TrainingSetupError: ``fsdp2`` with a LoRA student (adapters are merged on save; use ``ddp``), or an
                accelerate launch that turned on its own FSDP / DeepSpeed plugin (the engine is
                ``distributed.strategy``).
        """
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise TrainingSetupError(foreign_engine_message(accelerator.distributed_type.value))
        sharding = accelerator.num_processes > 1 and config.strategy == "fsdp2"
        if sharding and getattr(student, "peft_config", None):
            raise TrainingSetupError(
                "distributed.strategy=fsdp2 does not support a LoRA student (student.lora); use strategy: ddp"
            )
        if teacher is not None:
            teacher = teacher.eval().requires_grad_(False)
            # fully_shard moves each process's shards to its device: the whole model never sits on one device
            teacher = shard(teacher) if sharding and config.teacher == "shard" else teacher.to(accelerator.device)
        if accelerator.num_processes == 1:
            student = student.to(accelerator.device)
            return cls(accelerator, None, student, student, teacher)
        if config.strategy == "ddp":
            student = student.to(accelerator.device)
            return cls(accelerator, "ddp", student, accelerator.prepare_model(student), teacher)
        shard(student)
        engine = cls(accelerator, "fsdp2", student, student, teacher)
        engine._first_forward()
        return engine

    @property
    def wrapped(self) -> bool:
        """True when the student trains under DDP or FSDP2 (several processes)."""
        return self.strategy is not None

    def _first_forward(self) -> None:
        """One root forward of each sharded model on every process, so FSDP sets up its root before any direct call
        of a submodule (the chunked loss and evaluation call ``base_model`` and the output head directly)."""
        probe = torch.zeros((1, 1), dtype=torch.long, device=self.accelerator.device)
        with torch.no_grad():
            for model in (self.student, self.teacher):
                if is_sharded(model):
                    model(input_ids=probe, use_cache=False)
                    model.reshard()

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """While the block runs, every sharded model holds its full weights and keeps them after each forward, so
        processes may call forward different numbers of times (rollouts, calibration on rank 0, evaluation,
        generation). Collective on entry and exit; a no-op without sharded models. Nothing may back-propagate
        inside the block."""
        units = _units(self.student) + _units(self.teacher)
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
            # transformers' generate keeps FSDP-managed ranks in lockstep (synced_gpus), which would need the same
            # number of generate calls on every rank; gathered weights need no lockstep
            unit._is_fsdp_managed_module = False
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                unit._is_fsdp_managed_module = True
            for model in (self.student, self.teacher):
                for unit in _units(model):
                    unit.set_reshard_after_forward(unit is not model, recurse=False)
            _forget_forward_order(units)

    @contextmanager
    def gradient_sync(self, sync: bool) -> Iterator[None]:
        """Synchronise gradients in the backward calls of the block only when ``sync`` (the step's last backward)."""
        if self.strategy == "ddp" and not sync:
            with self.accelerator.no_sync(self.forward_model):
                yield
            return
        if self.strategy == "fsdp2":
            self.student.set_requires_gradient_sync(sync)
        yield

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip the (synchronised) gradients to ``max_norm`` in total L2 norm; return the norm before clipping."""
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def micro_batch_loss(
        self,
        batch: TrainBatch,
        spec: LossSpec,
        *,
        chunk_tokens: int,
        scale: float,
        sync: bool,
        terms: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """:func:`~switch_core.training.objective.batch_loss` with backward, for a wrapped student: the same summed
        loss and gradient (of ``scale ×`` the loss, summed over processes), with one backward call (module
        docstring). Every process runs one student forward and one backward (and one teacher forward when the loss
        needs it) even for a micro-batch without response tokens, as DDP and FSDP require.

        Args:
            batch: the micro-batch on the student's device.
            spec: the per-token loss.
            chunk_tokens: response tokens per chunk of logits, >= 1.
            scale: ``1 / N_global`` (global response tokens of the step).
            sync: whether this is the step's last backward (gradients are synchronised in it).
            terms: named term sums added into it, as in ``batch_loss``.

        Returns:
            0-dim float32 tensor (detached): the summed (unscaled) loss of the batch's response tokens.

        Raises:
            ValueError: ``chunk_tokens < 1``, or a teacher needed but not given.
        """
        acc = self.accelerator
        with self.gradient_sync(sync):
            return batch_loss(
                self.student, self.teacher, batch, spec, chunk_tokens=chunk_tokens,
                # the process count undoes the engines' gradient averaging (module docstring)
                scale=scale * acc.num_processes, backward=acc.backward, autocast=acc.autocast, terms=terms,
                hidden_states=self._root_hidden_states, collective=True,
            )

    def _root_hidden_states(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        """``[B, L, H]`` final hidden states of ``model`` (the student or the teacher) computed by a forward of its root
        module (the DDP wrapper for the student under ``ddp``), so the engine's hooks run; the output head projects no
        position (``logits_to_keep`` empty)."""
        root = self.forward_model if model is self.student else model
        captured: list[Tensor] = []
        hook = model.base_model.register_forward_hook(lambda _m, _a, out: captured.append(out.last_hidden_state))
        try:
            root(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                use_cache=False, logits_to_keep=torch.empty(0, dtype=torch.long, device=batch.input_ids.device),
            )
        finally:
            hook.remove()
        return captured[0]
