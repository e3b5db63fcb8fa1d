"""Token-level divergences against independent float64 references, closed forms and gradient checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from switch_core.divergences import (
    DIVERGENCES,
    DivergenceError,
    chunked_token_divergence,
    forward_kl,
    get_divergence,
    jensen_shannon,
    masked_token_mean,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)

# ---------------------------------------------------------------- independent float64 references (numpy, loops)


def _softmax(row: np.ndarray) -> np.ndarray:
    finite = np.isfinite(row)
    out = np.zeros_like(row, dtype=np.float64)
    shifted = row[finite] - row[finite].max()
    out[finite] = np.exp(shifted) / np.exp(shifted).sum()
    return out


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for a_v, b_v in zip(a, b, strict=True):
        if a_v > 0:
            total += math.inf if b_v == 0 else a_v * math.log(a_v / b_v)
    return total


def _reference(name: str, student: np.ndarray, teacher: np.ndarray, temperature: float = 1.0, **kw: float) -> float:
    q, p = _softmax(student / temperature), _softmax(teacher / temperature)
    if name == "fkl":
        return _kl(p, q)
    if name == "rkl":
        return _kl(q, p)
    if name == "jsd":
        beta = kw.get("beta", 0.5)
        m = beta * p + (1 - beta) * q
        return (beta * _kl(p, m) if beta > 0 else 0.0) + ((1 - beta) * _kl(q, m) if beta < 1 else 0.0)
    if name == "skl":
        alpha = kw.get("alpha", 0.1)
        return _kl(p, alpha * p + (1 - alpha) * q)
    if name == "srkl":
        alpha = kw.get("alpha", 0.1)
        return _kl(q, alpha * q + (1 - alpha) * p)
    if name == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    raise AssertionError(name)


def _reference_rows(name: str, student: torch.Tensor, teacher: torch.Tensor, **kw: float) -> torch.Tensor:
    s = student.detach().double().reshape(-1, student.shape[-1]).numpy()
    t = teacher.detach().double().reshape(-1, teacher.shape[-1]).numpy()
    values = [_reference(name, s[i], t[i], **kw) for i in range(s.shape[0])]
    return torch.tensor(values, dtype=torch.float64).reshape(student.shape[:-1])


CASES = [
    ("fkl", {}),
    ("rkl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.9}),
    ("skl", {"alpha": 0.1}),
    ("skl", {"alpha": 0.6}),
    ("srkl", {"alpha": 0.1}),
    ("srkl", {"alpha": 0.6}),
    ("tvd", {}),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for name, kw in CASES]


def _logits(shape: tuple[int, ...], seed: int, scale: float = 3.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_float64_reference(name: str, kw: dict[str, float], temperature: float) -> None:
    student, teacher = _logits((3, 4, 11), seed=1), _logits((3, 4, 11), seed=2, scale=5.0)
    got = DIVERGENCES[name](student, teacher, temperature=temperature, **kw)
    assert got.shape == (3, 4) and got.dtype == torch.float64
    torch.testing.assert_close(got, _reference_rows(name, student, teacher, temperature=temperature, **kw),
                               rtol=1e-10, atol=1e-12)
    got32 = DIVERGENCES[name](student.float(), teacher.float(), temperature=temperature, **kw)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), _reference_rows(name, student.float(), teacher.float(),
                                                               temperature=temperature, **kw), rtol=1e-4, atol=1e-6)


def test_temperature_divides_the_logits() -> None:
    student, teacher = _logits((5, 9), seed=3), _logits((5, 9), seed=4)
    for name, kw in CASES:
        fn = DIVERGENCES[name]
        torch.testing.assert_close(fn(student, teacher, temperature=2.5, **kw), fn(student / 2.5, teacher / 2.5, **kw))


@pytest.mark.parametrize(("name", "kw"), CASES + [("jsd", {"beta": 0.0}), ("jsd", {"beta": 1.0}),
                                                  ("skl", {"alpha": 0.0}), ("srkl", {"alpha": 1.0})])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_identical_inputs_give_exactly_zero(name: str, kw: dict[str, float], dtype: torch.dtype) -> None:
    logits = _logits((4, 7, 50), seed=5, scale=6.0, dtype=dtype)
    logits[0, 0, 3:] = -math.inf
    got = DIVERGENCES[name](logits, logits.clone(), **kw)
    assert torch.equal(got, torch.zeros_like(got))


def test_one_hot_teacher_against_uniform_student_closed_forms() -> None:
    vocab = 8
    teacher = torch.full((1, vocab), -math.inf, dtype=torch.float64)
    teacher[0, 0] = 0.0  # p = one-hot on token 0
    student = torch.zeros((1, vocab), dtype=torch.float64)  # q = uniform
    v = float(vocab)
    assert forward_kl(student, teacher).item() == pytest.approx(math.log(v), rel=1e-12)
    assert reverse_kl(student, teacher).item() == math.inf  # q puts mass where p is 0
    m0 = 0.5 + 0.5 / v
    jsd = 0.5 * math.log(1 / m0) + 0.5 * ((1 / v) * math.log((1 / v) / m0) + (v - 1) / v * math.log(2.0))
    assert jensen_shannon(student, teacher).item() == pytest.approx(jsd, rel=1e-12)
    assert total_variation(student, teacher).item() == pytest.approx((v - 1) / v, rel=1e-12)
    assert skew_forward_kl(student, teacher, alpha=0.1).item() == pytest.approx(-math.log(0.1 + 0.9 / v), rel=1e-12)
    # SRKL: KL(q || 0.1 q + 0.9 p): token 0 has mixture 0.1/v + 0.9, the others 0.1/v
    srkl = (1 / v) * math.log((1 / v) / (0.1 / v + 0.9)) + (v - 1) / v * math.log(1 / 0.1)
    assert skew_reverse_kl(student, teacher, alpha=0.1).item() == pytest.approx(srkl, rel=1e-12)


def test_disjoint_one_hots_reach_the_jsd_maximum_and_edges_stay_exact() -> None:
    teacher = torch.tensor([[0.0, -math.inf, -math.inf]], dtype=torch.float64)
    student = torch.tensor([[-math.inf, 0.0, -math.inf]], dtype=torch.float64)
    assert jensen_shannon(student, teacher).item() == pytest.approx(math.log(2.0), rel=1e-15)
    assert forward_kl(student, teacher).item() == math.inf
    assert total_variation(student, teacher).item() == 1.0
    # β at 0 or 1: the mixture equals one side, the divergence is exactly 0 (never 0·inf = NaN)
    assert jensen_shannon(student, teacher, beta=0.0).item() == 0.0
    assert jensen_shannon(student, teacher, beta=1.0).item() == 0.0
    assert skew_forward_kl(student, teacher, alpha=1.0).item() == 0.0
    assert skew_reverse_kl(student, teacher, alpha=1.0).item() == 0.0
    # skew KL is bounded by log(1/α) even for disjoint supports
    assert skew_forward_kl(student, teacher, alpha=0.1).item() == pytest.approx(math.log(10.0), rel=1e-12)


def test_skew_endpoints_equal_plain_kl() -> None:
    student, teacher = _logits((6, 13), seed=6), _logits((6, 13), seed=7)
    assert torch.equal(skew_forward_kl(student, teacher, alpha=0.0), forward_kl(student, teacher))
    assert torch.equal(skew_reverse_kl(student, teacher, alpha=0.0), reverse_kl(student, teacher))


def test_small_beta_is_not_collapsed_by_rounding() -> None:
    # β·(1−β)-scaled JSD near the edges must still match the float64 reference in relative terms (docs/METHOD.md §A.6)
    student, teacher = _logits((4, 30), seed=8), _logits((4, 30), seed=9)
    for beta in (1e-4, 1 - 1e-4):
        got = jensen_shannon(student.float(), teacher.float(), beta=beta).double()
        ref = _reference_rows("jsd", student.float(), teacher.float(), beta=beta)
        assert (ref > 0).all()
        torch.testing.assert_close(got, ref, rtol=2e-3, atol=0.0)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_masked_vocabulary_is_finite_and_matches_the_reduced_vocabulary(name: str, kw: dict[str, float]) -> None:
    student, teacher = _logits((3, 12), seed=10), _logits((3, 12), seed=11)
    masked = [2, 5, 11]
    student[:, masked] = -math.inf
    teacher[:, masked] = -math.inf
    student.requires_grad_(True)
    got = DIVERGENCES[name](student, teacher, **kw)
    keep = [i for i in range(12) if i not in masked]
    reduced = DIVERGENCES[name](student.detach()[:, keep], teacher[:, keep], **kw)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.detach(), reduced, rtol=1e-12, atol=1e-14)
    got.sum().backward()
    assert torch.isfinite(student.grad).all()
    assert torch.equal(student.grad[:, masked], torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_bfloat16_inputs_are_computed_in_float32(name: str, kw: dict[str, float]) -> None:
    student = _logits((8, 64), seed=12, dtype=torch.bfloat16)
    teacher = _logits((8, 64), seed=13, dtype=torch.bfloat16)
    teacher[1] = student[1]  # a nearly-zero row
    teacher[2] = student[2] + 0.01
    got = DIVERGENCES[name](student, teacher, **kw)
    assert got.dtype == torch.float32
    assert (got >= 0).all()
    torch.testing.assert_close(got.double(), _reference_rows(name, student, teacher, **kw), rtol=1e-4, atol=1e-6)
    mixed = DIVERGENCES[name](student.float(), teacher, **kw)  # bf16 teacher, fp32 student
    torch.testing.assert_close(mixed, got)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_gradient_matches_finite_differences(name: str, kw: dict[str, float]) -> None:
    student = _logits((2, 3, 6), seed=14).requires_grad_(True)
    teacher = _logits((2, 3, 6), seed=15)
    weights = torch.rand((2, 3), generator=torch.Generator().manual_seed(16), dtype=torch.float64)

    def loss(s: torch.Tensor) -> torch.Tensor:
        return (DIVERGENCES[name](s, teacher, **kw) * weights).sum()

    assert torch.autograd.gradcheck(loss, (student,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_with_masked_vocabulary_matches_finite_differences() -> None:
    student = _logits((2, 7), seed=17)
    teacher = _logits((2, 7), seed=18)
    student[:, 4] = -math.inf
    teacher[:, 4] = -math.inf
    student.requires_grad_(True)
    for name, kw in CASES:
        fn = get_divergence(name, **kw)
        assert torch.autograd.gradcheck(lambda s, fn=fn: fn(s, teacher).sum(), (student,), eps=1e-6, atol=1e-7,
                                        rtol=1e-5)


# ---------------------------------------------------------------------------------------------- registry, errors


def test_registry_and_get_divergence() -> None:
    assert set(DIVERGENCES) == {"fkl", "rkl", "jsd", "skl", "srkl", "tvd"}
    student, teacher = _logits((4, 9), seed=19), _logits((4, 9), seed=20)
    torch.testing.assert_close(get_divergence("jsd", beta=0.1)(student, teacher),
                               _reference_rows("jsd", student, teacher, beta=0.1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(get_divergence("srkl", alpha=0.3, temperature=2.0)(student, teacher),
                               _reference_rows("srkl", student, teacher, alpha=0.3, temperature=2.0),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(DivergenceError, match="fkl, rkl, jsd, skl, srkl, tvd"):
        get_divergence("kl")
    with pytest.raises(DivergenceError, match="alpha.*valid are \\['temperature', 'beta'\\]"):
        get_divergence("jsd", alpha=0.1)
    with pytest.raises(DivergenceError, match="beta=1.5"):
        get_divergence("jsd", beta=1.5)


def test_mismatched_vocabularies_are_a_clear_error() -> None:
    with pytest.raises(DivergenceError, match="vocab_size"):
        forward_kl(torch.zeros(2, 10), torch.zeros(2, 12))
    with pytest.raises(DivergenceError, match="temperature"):
        forward_kl(torch.zeros(2, 10), torch.zeros(2, 10), temperature=0.0)
    with pytest.raises(DivergenceError, match="alpha"):
        skew_forward_kl(torch.zeros(2, 10), torch.zeros(2, 10), alpha=-0.1)


# ---------------------------------------------------------------------------------------------- reductions


def test_masked_token_mean_is_invariant_to_micro_batching() -> None:
    values = _logits((6, 5), seed=21).abs().requires_grad_(True)
    mask = torch.rand((6, 5), generator=torch.Generator().manual_seed(22)) < 0.6
    mask[0] = False
    mask[0, 0] = True  # one row with a single token: per-micro-batch means would over-weight it
    full = masked_token_mean(values, mask)
    expected = values.detach()[mask].sum() / mask.sum()
    torch.testing.assert_close(full.detach(), expected)
    (grad_full,) = torch.autograd.grad(full, values)

    total = int(mask.sum())
    for splits in ([1, 5], [2, 2, 2], [1, 1, 1, 1, 1, 1]):
        parts = zip(torch.split(values, splits), torch.split(mask, splits), strict=True)
        summed = sum(masked_token_mean(v, m, num_items_in_batch=total) for v, m in parts)
        torch.testing.assert_close(summed, full)
        (grad,) = torch.autograd.grad(summed, values)
        torch.testing.assert_close(grad, grad_full)
        parts = zip(torch.split(values, splits), torch.split(mask, splits), strict=True)
        naive = sum(masked_token_mean(v, m) for v, m in parts) / len(splits)
        assert not torch.allclose(naive, full)  # the per-micro-batch mean is the bug this guards against

    as_tensor = masked_token_mean(values, mask, num_items_in_batch=torch.tensor(total))
    torch.testing.assert_close(as_tensor, full)


def test_masked_token_mean_ignores_unmasked_nan_and_handles_empty_masks() -> None:
    values = torch.tensor([[1.0, math.nan], [3.0, math.inf]])
    mask = torch.tensor([[True, False], [True, False]])
    assert masked_token_mean(values, mask).item() == 2.0
    assert masked_token_mean(values, mask, num_items_in_batch=4).item() == 1.0
    assert masked_token_mean(values, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(DivergenceError, match="num_items_in_batch"):
        masked_token_mean(values, mask, num_items_in_batch=0)
    with pytest.raises(DivergenceError, match="shape"):
        masked_token_mean(values, mask[:, :1])


@pytest.mark.parametrize(("name", "kw"), [("jsd", {"beta": 0.1}), ("srkl", {"alpha": 0.1}), ("fkl", {})])
def test_chunked_divergence_equals_the_plain_one_and_keeps_less_for_backward(name: str, kw: dict[str, float]) -> None:
    fn = get_divergence(name, **kw)
    student = _logits((3, 10, 40), seed=23, dtype=torch.float32).requires_grad_(True)
    teacher = _logits((3, 10, 40), seed=24, dtype=torch.bfloat16)

    def saved_bytes(compute: callable) -> tuple[torch.Tensor, int]:
        inputs = {student.untyped_storage().data_ptr(), teacher.untyped_storage().data_ptr()}
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in inputs:
                storages[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = compute()
        return out, sum(storages.values())

    plain, plain_bytes = saved_bytes(lambda: fn(student, teacher))
    chunked, chunked_bytes = saved_bytes(lambda: chunked_token_divergence(fn, student, teacher, chunk_size=7))
    torch.testing.assert_close(chunked, plain)
    full_size = student.numel() * 4
    assert plain_bytes >= 2 * full_size  # the plain path keeps several vocabulary-sized float32 tensors
    assert chunked_bytes < full_size / 4  # the chunked path keeps (almost) nothing beyond its inputs
    weights = torch.rand(3, 10, generator=torch.Generator().manual_seed(25))
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), student)
    (grad_chunked,) = torch.autograd.grad((chunked * weights).sum(), student)
    torch.testing.assert_close(grad_chunked, grad_plain)
    with torch.no_grad():
        torch.testing.assert_close(chunked_token_divergence(fn, student, teacher, chunk_size=4), plain.detach())
    with pytest.raises(DivergenceError, match="chunk_size"):
        chunked_token_divergence(fn, student, teacher, chunk_size=0)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_nearly_identical_inputs_are_accurate(name: str, kw: dict[str, float]) -> None:
    # Divergences of ~1e-7: float64 keeps relative accuracy; float32 is limited by the rounding of the two
    # log-softmax normalisers (absolute error ~1e-7, documented), never worse.
    teacher = _logits((4, 200), seed=26, dtype=torch.float32).double()
    student = teacher + 1e-3 * _logits((4, 200), seed=27, scale=1.0)
    ref = _reference_rows(name, student, teacher, **kw)
    assert (ref > 0).all()
    torch.testing.assert_close(DIVERGENCES[name](student, teacher, **kw), ref, rtol=1e-6, atol=0.0)
    got32 = DIVERGENCES[name](student.float(), teacher.float(), **kw).double()
    torch.testing.assert_close(got32, _reference_rows(name, student.float(), teacher.float(), **kw),
                               rtol=0.0, atol=3e-7)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_a_logits_row_without_a_distribution_is_an_error_naming_the_position(name: str) -> None:
    """All -inf (every token masked), NaN or +inf logits have no softmax: NaN before, a clear error now."""
    fn = DIVERGENCES[name]
    student, teacher = _logits((2, 3, 8), seed=5), _logits((2, 3, 8), seed=6)
    masked = student.clone()
    masked[1, 2] = -math.inf
    with pytest.raises(DivergenceError, match=r"undefined \(NaN\) at position \[1, 2\]: the student logits there are "
                                              r"all -inf\. .*loss mask"):
        fn(masked, teacher)
    broken = teacher.clone()
    broken[0, 1, 3] = math.nan
    with pytest.raises(DivergenceError, match=r"position \[0, 1\]: the teacher logits there hold NaN"):
        fn(student, broken)
    hot = teacher.clone()
    hot[0, 0, 0] = math.inf
    with pytest.raises(DivergenceError, match=r"position \[0, 0\]: the teacher logits there hold \+inf"):
        fn(student, hot)
    partly = student.clone()
    partly[1, 2, :7] = -math.inf  # one finite logit is a (one-hot) distribution: fine
    assert not fn(partly, teacher).isnan().any()
