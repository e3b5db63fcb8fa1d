"""Per-method losses on a hand-computed 2-token case, and the chunked batch loss against a naive float64 reference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_training_support import examples, student, teacher, tokenizer

from switch_core.config import _default_methods
from switch_core.training import LossSpec, TrainBatch, batch_from_examples, batch_loss, token_loss_terms
from switch_core.training.objective import OutputHeadError, check_output_head

# Student logits [0, ln 3] -> q = (1/4, 3/4); teacher logits [0, 0] -> p = (1/2, 1/2); the target token is 1.
STUDENT = torch.tensor([[0.0, math.log(3.0)]])
TEACHER = torch.tensor([[0.0, 0.0]])
TARGET = torch.tensor([1])


def token_losses(spec: LossSpec, *args: torch.Tensor) -> torch.Tensor:
    """The per-token loss the training objective uses (``token_loss_terms(...)["loss"]``)."""
    return token_loss_terms(spec, *args)["loss"]


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b))


P, Q = [0.5, 0.5], [0.25, 0.75]
CE = -math.log(0.75)
FKL = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)  # = 0.5 ln(4/3)
RKL = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
M_SKL = [0.1 * 0.5 + 0.9 * 0.25, 0.1 * 0.5 + 0.9 * 0.75]  # α·p + (1−α)·q = (0.275, 0.725)
SKL = kl(P, M_SKL)
M_SRKL = [0.1 * 0.25 + 0.9 * 0.5, 0.1 * 0.75 + 0.9 * 0.5]  # α·q + (1−α)·p = (0.475, 0.525)
SRKL = kl(Q, M_SRKL)
JSD = 0.1 * kl(P, M_SKL) + 0.9 * kl(Q, M_SKL)  # β = 0.1: m = 0.1·p + 0.9·q


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("sft", CE),  # docs/METHOD.md §6.1
        ("kd", FKL),  # §6.2
        ("seqkd", FKL),  # §6.3 (on teacher samples)
        ("imitkd", FKL),  # §6.4 (on student samples)
        ("gkd", JSD),  # §6.6, β = 0.1
        ("distillm", SKL),  # §6.7, α = 0.1
        ("switch", SKL),  # default: DistiLLM's loss
    ],
)
def test_default_method_losses_on_hand_computed_case(method: str, expected: float) -> None:
    spec = LossSpec.from_method(_default_methods()[method])
    value = token_losses(spec, STUDENT, TARGET, TEACHER)
    assert value.shape == (1,)
    assert float(value[0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("name", "expected"), [("fkl", FKL), ("rkl", RKL), ("skl", SKL), ("srkl", SRKL), ("jsd", JSD), ("tvd", 0.25)]
)
def test_every_divergence_choice(name: str, expected: float) -> None:
    spec = LossSpec(name=name, kd_ratio=1.0, alpha=0.1, beta=0.1)
    assert float(token_losses(spec, STUDENT, TARGET, TEACHER)[0]) == pytest.approx(expected, rel=1e-6)


def test_kd_ratio_mixes_ce_and_divergence() -> None:
    spec = LossSpec(name="fkl", kd_ratio=0.5)  # MiniLLM's KD scripts: 0.5·CE + 0.5·FKL
    assert float(token_losses(spec, STUDENT, TARGET, TEACHER)[0]) == pytest.approx(0.5 * CE + 0.5 * FKL, rel=1e-6)
    assert not LossSpec(name="fkl", kd_ratio=0.0).needs_teacher
    assert float(token_losses(LossSpec("fkl", kd_ratio=0.0), STUDENT, TARGET)[0]) == pytest.approx(CE, rel=1e-6)


def test_ce_loss_ignores_kd_ratio_and_teacher() -> None:
    spec = LossSpec(name="ce", kd_ratio=1.0)  # seqkd with loss: ce
    assert not spec.needs_teacher
    assert float(token_losses(spec, STUDENT, TARGET)[0]) == pytest.approx(CE, rel=1e-6)


def test_missing_teacher_logits_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs teacher logits"):
        token_losses(LossSpec("fkl"), STUDENT, TARGET)


def test_loss_mask_is_shifted_and_keeps_eos() -> None:
    # input: p p r1 r2 EOS pad ; labels -100 on prompt and padding
    batch = TrainBatch(
        input_ids=torch.tensor([[5, 6, 7, 8, 0, 0]]),
        attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]),
        labels=torch.tensor([[-100, -100, 7, 8, 0, -100]]),
    )
    # logits at positions 1, 2, 3 predict r1, r2, EOS (never DistiLLM's unshifted SGO mask, docs/METHOD.md §6.9 item 2)
    assert batch.loss_mask.tolist() == [[False, True, True, True, False]]
    assert batch.num_loss_tokens == 3


def _naive_sum(model: torch.nn.Module, teach: torch.nn.Module | None, batch: TrainBatch, spec: LossSpec) -> torch.Tensor:
    """Reference: full float64 logits from model(...), standard shift, explicit per-token formula."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits.double()[:, :-1]
    mask = batch.labels[:, 1:] != -100
    targets = batch.labels[:, 1:][mask]
    log_q = torch.log_softmax(logits[mask], -1)
    ce = F.nll_loss(log_q, targets, reduction="none")
    if spec.name == "ce":
        return ce.sum()
    with torch.no_grad():
        t_logits = teach(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids).logits.double()[:, :-1]
    log_p = torch.log_softmax(t_logits[mask], -1)
    p, q = log_p.exp(), log_q.exp()
    m = spec.alpha * p + (1 - spec.alpha) * q
    skl = (p * (log_p - m.log())).sum(-1)
    return ((1 - spec.kd_ratio) * ce + spec.kd_ratio * skl).sum()


def _count_accumulations(model: torch.nn.Module) -> dict[str, int]:
    """Per parameter, how many backward calls have accumulated a gradient into it (filled in as they happen)."""
    counts = dict.fromkeys((name for name, _ in model.named_parameters()), 0)
    for name, parameter in model.named_parameters():
        parameter.register_post_accumulate_grad_hook(lambda _p, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


@pytest.mark.parametrize("collective", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_batch_loss_and_gradient_match_naive_reference(chunk: int, collective: bool) -> None:
    """Also with ``collective`` (the engine's DDP/FSDP2 path): the same loss and gradients from one backward call."""
    model, teach = student(), teacher()
    batch = batch_from_examples(examples()[:3], tokenizer().pad_token_id)
    spec = LossSpec("skl", kd_ratio=0.7, alpha=0.1)

    reference = _naive_sum(model, teach, batch, spec)
    reference.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    counts = _count_accumulations(model)
    total = batch_loss(model, teach, batch, spec, chunk_tokens=chunk, scale=1.0, backward=torch.Tensor.backward,
                       collective=collective)
    assert float(total) == pytest.approx(float(reference.detach()), rel=1e-5)
    for got, want in zip((p.grad for p in model.parameters()), expected_grads):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)
    head = next(n for n, p in model.named_parameters() if p is model.get_output_embeddings().weight)
    chunks = math.ceil(batch.num_loss_tokens / chunk)
    assert counts[head] == (1 if collective else chunks + 1)  # per chunk into the head, then the final call


def test_collective_batch_loss_back_propagates_a_batch_without_response_tokens() -> None:
    """DDP and FSDP need one backward call on every process, also for a micro-batch without response tokens."""
    full = batch_from_examples(examples()[:2], tokenizer().pad_token_id)
    empty = TrainBatch(full.input_ids, full.attention_mask, torch.full_like(full.labels, -100))
    spec = LossSpec("fkl", kd_ratio=1.0)
    for collective in (False, True):
        model = student()
        counts = _count_accumulations(model)
        total = batch_loss(model, teacher(), empty, spec, chunk_tokens=4, scale=1.0, backward=torch.Tensor.backward,
                           collective=collective)
        assert float(total) == 0.0
        assert set(counts.values()) == {1 if collective else 0}
        if collective:
            assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_sft_batch_loss_equals_cross_entropy_of_hf_model() -> None:
    model = student()
    batch = batch_from_examples(examples()[:4], tokenizer().pad_token_id)
    with torch.no_grad():
        total = batch_loss(model, None, batch, LossSpec("ce", kd_ratio=0.0), chunk_tokens=5)
    assert float(total) == pytest.approx(float(_naive_sum(model, None, batch, LossSpec("ce")).detach()), rel=1e-5)


def test_output_head_check_rejects_post_processed_logits() -> None:
    model = student()
    batch = batch_from_examples(examples()[:1], tokenizer().pad_token_id)
    check_output_head(model, batch)
    original = model.forward

    def softcapped(*args: object, **kwargs: object) -> object:
        out = original(*args, **kwargs)
        out.logits = 0.5 * torch.tanh(out.logits)
        return out

    model.forward = softcapped
    with pytest.raises(OutputHeadError, match="post-processes"):
        check_output_head(model, batch)
