"""The stop token in rollout training: per-step diagnostics and the ``supervise_stop`` option (docs/METHOD.md §6.10).

On-policy distillation can teach the student to stop ending its answers: where the student stops, the teacher may give
the stop token a tiny probability, and a divergence to the teacher then pushes the student's stop probability down
(the "length collapse" of on-policy distillation, arXiv 2604.08527). This module measures that per rollout batch and
implements one mitigation, after SKD's practice of cutting generations at the stop string so that the end-of-turn
token is always supervised (Xu et al., *Speculative Knowledge Distillation*, ICLR 2025):

- :func:`stop_statistics`: which rows end with a stop token, their lengths, and the teacher's and the student's
  probability of the emitted stop token at those stopping points (temperature 1), as additive sums;
- :func:`append_stop`: rows cut at ``max_new_tokens`` without a stop token get the stop token appended, so every
  rollout response ends with one (the loss then adds the stop token's cross-entropy there,
  :attr:`~switch_core.training.batches.TrainBatch.stop_labels`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from switch_core.data.tokenize import left_pad
from switch_core.models.device import model_device
from switch_core.rollout import RolloutBatch
from switch_core.training.batches import Sequence1D, TrainBatch
from switch_core.training.objective import final_hidden_states

STOP_STAT_NAMES = ("stopped_sequences", "stopped_tokens", "teacher_stop_prob_sum", "student_stop_prob_sum")
"""The additive sums of :func:`stop_statistics` (summed over a step's rollout chunks and processes)."""


def ends_with_stop(rb: RolloutBatch, stop_token_ids: Sequence[int]) -> Tensor:
    """``[B]`` bool: whether row b's response ends with a stop token (the engine stops at the first one, so a row
    that reached ``max_new_tokens`` without one is False). Works when the pad id equals a stop id: the last
    response token is found by ``response_mask``, never by comparing ids."""
    lengths = rb.response_mask.sum(dim=1)
    last = rb.tokens.gather(1, (lengths - 1).clamp_min(0)[:, None]).squeeze(1)
    stops = torch.tensor(list(stop_token_ids), dtype=last.dtype, device=last.device)
    return (lengths > 0) & torch.isin(last, stops)


@torch.no_grad()
def end_logprobs(model: nn.Module, rb: RolloutBatch, rows: Tensor) -> Tensor:
    """``[len(rows)]`` float32 log-probability, under ``model`` at temperature 1, of the last response token of each
    selected row given the prompt and the response before it (one forward over those rows; eval mode, restored).

    Used where the rollout did not run ``model`` (pure student sampling never runs the teacher).
    """
    sequences = []
    for b in rows.tolist():
        prompt = rb.prompt_ids[b][rb.prompt_mask[b].bool()]
        sequences.append(torch.cat([prompt, rb.tokens[b][rb.response_mask[b]]]).tolist())
    input_ids, attention_mask = left_pad(sequences, 0)  # the last token of every row is at the end (loss's logits path)
    device = model_device(model)
    batch = TrainBatch(input_ids, attention_mask, torch.full_like(input_ids, -100)).to(device)
    was_training = model.training
    model.eval()
    try:
        hidden = final_hidden_states(model, batch)[:, -2]  # predicts the last token
        logits = model.get_output_embeddings()(hidden).float()
    finally:
        model.train(was_training)
    return torch.log_softmax(logits, dim=-1).gather(1, batch.input_ids[:, -1:]).squeeze(1).cpu()


def stop_statistics(
    rb: RolloutBatch, stop_token_ids: Sequence[int], *, student: nn.Module, teacher: nn.Module
) -> dict[str, float]:
    """Additive stop-token sums of one rollout batch (keys :data:`STOP_STAT_NAMES`).

    Args:
        rb: the rollout batch.
        stop_token_ids: the ids that end a response.
        student, teacher: the models; one is run over the stopping rows only when the rollout did not compute its
            log-probabilities (``student_logprobs`` / ``teacher_logprobs`` NaN there).

    Returns:
        ``stopped_sequences``: rows ending with a stop token; ``stopped_tokens``: their response tokens (stop
        included); ``teacher_stop_prob_sum`` / ``student_stop_prob_sum``: Σ over those rows of p(stop) / q(stop),
        the teacher's and the student's probability (temperature 1) of the stop token where the row stopped.
    """
    stopped = ends_with_stop(rb, stop_token_ids)
    rows = stopped.nonzero().squeeze(1)
    out = {name: 0.0 for name in STOP_STAT_NAMES}
    if rows.numel() == 0:
        return out
    last = (rb.response_mask.sum(dim=1) - 1)[rows]
    out["stopped_sequences"] = float(rows.numel())
    out["stopped_tokens"] = float((last + 1).sum())
    for name, model, logprobs in (("teacher", teacher, rb.teacher_logprobs), ("student", student, rb.student_logprobs)):
        values = logprobs[rows, last].float().cpu()
        if torch.isnan(values).any():
            values = end_logprobs(model, rb, rows.cpu())
        out[f"{name}_stop_prob_sum"] = float(values.double().exp().sum())
    return out


def append_stop(sequences: Sequence[Sequence1D], stop_token_ids: Sequence[int]) -> list[Sequence1D]:
    """The sequences with ``stop_token_ids[0]`` appended to every response that does not end with a stop token
    (a rollout cut at ``max_new_tokens``); responses that stopped are returned unchanged.

    Raises:
        ValueError: no stop token ids.
    """
    if not stop_token_ids:
        raise ValueError("append_stop needs at least one stop token id")
    stops = {int(i) for i in stop_token_ids}
    out = []
    for seq in sequences:
        response = seq.response_ids
        if response.numel() == 0 or int(response[-1]) not in stops:
            response = torch.cat([response, response.new_tensor([int(stop_token_ids[0])])])
        out.append(Sequence1D(seq.prompt_ids, response))
    return out
