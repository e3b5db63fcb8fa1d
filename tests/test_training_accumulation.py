"""Gradient-accumulation invariance (docs/METHOD.md §A.4): the loss is normalised by the response tokens
of the whole global batch, so one batch of 8 and 4 micro-batches of 2 give the same gradients."""
from __future__ import annotations

import pytest
import torch
from test_training_support import examples, student, teacher, tokenizer

from switch_core.training import LossSpec, batch_from_examples, batch_loss


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("spec", [LossSpec("ce", kd_ratio=0.0), LossSpec("jsd", kd_ratio=1.0, beta=0.1)])
def test_one_batch_of_8_equals_4_micro_batches_of_2(spec: LossSpec) -> None:
    exs = examples()[:8]
    teach = teacher() if spec.needs_teacher else None
    full = batch_from_examples(exs, tokenizer().pad_token_id)
    n_global = full.num_loss_tokens
    micro_counts = [m.num_loss_tokens for m in full.micro_batches(2)]
    assert len(set(micro_counts)) > 1  # unequal token counts: a per-micro-batch mean would differ

    model = student()
    batch_loss(model, teach, full, spec, chunk_tokens=64, scale=1.0 / n_global, backward=torch.Tensor.backward)
    one_batch = _grads(model)

    model = student()
    for micro in full.micro_batches(2):
        batch_loss(model, teach, micro, spec, chunk_tokens=64, scale=1.0 / n_global, backward=torch.Tensor.backward)
    accumulated = _grads(model)

    # micro-batches collated separately (own padding) must give the same result too
    model = student()
    for i in range(0, 8, 2):
        part = batch_from_examples(exs[i : i + 2], tokenizer().pad_token_id)
        batch_loss(model, teach, part, spec, chunk_tokens=5, scale=1.0 / n_global, backward=torch.Tensor.backward)
    recollated = _grads(model)

    for a, b, c in zip(one_batch, accumulated, recollated):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-7)


def test_global_normalisation_equals_token_mean_gradient() -> None:
    """Reference: the gradient of the plain token-mean CE over all 8 sequences, in float64."""
    exs = examples()[:8]
    full = batch_from_examples(exs, tokenizer().pad_token_id)
    model = student().double()
    logits = model(input_ids=full.input_ids, attention_mask=full.attention_mask, position_ids=full.position_ids).logits
    mask = full.loss_mask
    reference = torch.nn.functional.cross_entropy(logits[:, :-1][mask], full.labels[:, 1:][mask])
    reference.backward()
    expected = _grads(model)

    model = student().double()
    for micro in full.micro_batches(3):  # 3 + 3 + 2 sequences
        batch_loss(model, None, micro, LossSpec("ce", kd_ratio=0.0), chunk_tokens=16,
                   scale=1.0 / full.num_loss_tokens, backward=torch.Tensor.backward)
    for got, want in zip(_grads(model), expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
