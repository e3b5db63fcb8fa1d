"""AdamW and the cosine learning-rate schedule with linear warm-up (docs/METHOD.md §6.8 "Settings shared by all runs").

DistiLLM: AdamW, weight decay 0.01 on weight matrices only (biases and norm weights are not decayed), cosine decay
to ``lr_min`` (1e-7), no warm-up by default.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from switch_core.config import OptimConfig


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on tensors with >= 2 dims only.

    Tied parameters (e.g. embeddings shared with the output head) appear once.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter (all requires_grad=False)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr)


def cosine_lr(step: int, *, lr: float, lr_min: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based: the rate used by the ``step``-th update).

    ``lr · (step + 1) / warmup_steps`` during warm-up, then ``lr_min + (lr − lr_min) · ½ (1 + cos(π · p))`` with
    ``p = (step − warmup_steps) / (total_steps − warmup_steps)`` in [0, 1] (Loshchilov & Hutter 2017, SGDR; the
    shape of ``torch.optim.lr_scheduler.CosineAnnealingLR`` that DistiLLM uses, with ``T_max = total_steps``).

    Raises:
        ValueError: ``total_steps < 1`` or ``step`` outside ``[0, total_steps]``.
    """
    if total_steps < 1 or not 0 <= step <= total_steps:
        raise ValueError(f"step {step} is outside [0, total_steps={total_steps}]")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` following :func:`cosine_lr`; call ``scheduler.step()`` once per optimizer step."""

    def factor(step: int) -> float:
        step = min(step, total_steps)
        return cosine_lr(
            step, lr=optim.lr, lr_min=optim.lr_min, warmup_steps=optim.warmup_steps, total_steps=total_steps
        ) / optim.lr

    return LambdaLR(optimizer, factor)
