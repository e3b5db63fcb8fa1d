"""Dev evaluation during training: dev loss on the dev split and dev ROUGE-L on a sampled subset (docs/METHOD.md §5.6).

- ``dev/ce``: cross-entropy of the student on the ground-truth dev responses (DistiLLM's validation LM loss; its
  adaptive schedule reacts to it, docs/METHOD.md §6.7);
- ``dev/loss``: the method's own per-token loss on the same ground-truth dev batches (equal to ``dev/ce`` for SFT;
  for MiniLLM, whose policy-gradient loss needs rollouts, its divergence: the token-mean KL(q ‖ p));
- ``dev/rouge_l``: 100 × mean ROUGE-L F-measure (max over references) of responses sampled with the evaluation
  protocol's decoding settings (docs/METHOD.md §5.4–5.5) on a fixed, seeded subset of the dev prompts.

Dev losses are sharded over processes and summed; the ROUGE-L generations run on the main process only and the
result is broadcast, so the score does not depend on the number of processes. Both run under the accelerator's
autocast (``optim.mixed_precision``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

from switch_core.config import EvalConfig
from switch_core.data.tokenize import TrainExample
from switch_core.evaluation.generate import generate_responses
from switch_core.evaluation.metrics import rouge_l
from switch_core.training.batches import batch_from_examples
from switch_core.training.losses import LossSpec
from switch_core.training.objective import batch_loss

CE = LossSpec(name="ce", kd_ratio=0.0)


@dataclass(frozen=True)
class DevData:
    """The dev split as the loop needs it.

    Attributes:
        examples: tokenised ground-truth dev examples (dev losses).
        prompts: formatted prompts of the ROUGE-L subset.
        references: reference outputs of those prompts (ROUGE-L takes the max over them).
    """

    examples: list[TrainExample]
    prompts: list[str]
    references: list[tuple[str, ...]]

    def __post_init__(self) -> None:
        if not self.examples:
            raise ValueError("the dev split is empty: dev loss needs at least one example")
        if len(self.prompts) != len(self.references):
            raise ValueError(f"{len(self.prompts)} dev prompts but {len(self.references)} reference lists")


def dev_losses(
    student: nn.Module,
    teacher: nn.Module | None,
    examples: Sequence[TrainExample],
    spec: LossSpec,
    *,
    accelerator: Accelerator,
    batch_size: int,
    chunk_tokens: int,
    pad_token_id: int,
) -> dict[str, float]:
    """``{"dev/ce", "dev/loss"}``: token means over the whole dev split (all processes).

    Process ``r`` of ``n`` scores examples ``r, r + n, ...``; sums and token counts are reduced over processes.
    The student should be in eval mode (no dropout).
    """
    specs = {"dev/ce": CE} if spec.name == "ce" else {"dev/ce": CE, "dev/loss": spec}
    sums = torch.zeros(len(specs) + 1, dtype=torch.float64, device=accelerator.device)
    mine = list(examples[accelerator.process_index :: accelerator.num_processes])
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = batch_from_examples(mine[start : start + batch_size], pad_token_id).to(accelerator.device)
            for i, current in enumerate(specs.values()):
                sums[i] += batch_loss(
                    student, teacher, batch, current, chunk_tokens=chunk_tokens, autocast=accelerator.autocast
                ).double()
            sums[-1] += batch.num_loss_tokens
    sums = accelerator.reduce(sums, reduction="sum")
    means = {name: float(sums[i] / sums[-1]) for i, name in enumerate(specs)}
    means.setdefault("dev/loss", means["dev/ce"])
    return means


def dev_rouge_l(
    student: nn.Module,
    tokenizer: object,
    dev: DevData,
    generation: EvalConfig,
    *,
    accelerator: Accelerator,
    max_prompt_length: int,
    seed: int,
) -> float:
    """100 × mean ROUGE-L of the student's sampled responses on ``dev.prompts`` (main process; broadcast).

    The generations run under ``accelerator.autocast()`` (the run's ``optim.mixed_precision``), as its losses and
    rollouts do; ``generation.dtype`` (the evaluate stage's weight dtype) does not apply here.

    Returns NaN when there are no prompts.
    """
    result = [float("nan")]
    if accelerator.is_main_process and dev.prompts:
        with accelerator.autocast():
            responses = generate_responses(
                student, tokenizer, dev.prompts, max_prompt_length=max_prompt_length,
                max_new_tokens=generation.max_new_tokens, temperature=generation.temperature, top_k=generation.top_k,
                top_p=generation.top_p, no_repeat_ngram_size=generation.no_repeat_ngram_size,
                batch_size=generation.batch_size, seed=seed,
            )
        scores = [rouge_l(pred, refs) for pred, refs in zip(responses, dev.references, strict=True)]
        result = [100.0 * sum(scores) / len(scores)]
    if accelerator.num_processes > 1:
        broadcast_object_list(result, from_process=0)
    return float(result[0])
