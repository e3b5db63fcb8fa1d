"""The SWITCH gate and the strategies' source decisions on hand-made distributions; the keyed draws they use."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from switch_core.rollout import (
    GATE_BETA,
    RolloutSettings,
    adaswitch_decide,
    decide,
    gate_divergence,
    skd_rejects,
    switch_gate,
    teacher_intervenes,
)
from switch_core.rollout.sampling import (
    PURPOSES,
    TEACHER_DRAW,
    TOKEN_DRAW,
    draw_from,
    keyed_uniforms,
    sample_inverse_cdf,
    select_from_draws,
    select_tokens,
    warp_is_identity,
    warped_log_probs,
    warper,
)

P = [0.7, 0.2, 0.1]  # teacher
Q = [0.1, 0.3, 0.6]  # student


def _jsd_by_hand(p: list[float], q: list[float]) -> float:
    """½ KL(p ‖ m) + ½ KL(q ‖ m), m = ½ (p + q), in float64; 0·log 0 = 0."""
    total = 0.0
    for pv, qv in zip(p, q, strict=True):
        m = 0.5 * (pv + qv)
        if pv > 0:
            total += 0.5 * pv * math.log(pv / m)
        if qv > 0:
            total += 0.5 * qv * math.log(qv / m)
    return total


def _logits(probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_gate_jsd_is_the_symmetric_jensen_shannon_divergence() -> None:
    expected = _jsd_by_hand(P, Q)
    # by hand: m = (0.4, 0.25, 0.35)
    m = [0.4, 0.25, 0.35]
    by_terms = 0.5 * sum(a * math.log(a / c) for a, c in zip(P, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(Q, m))
    assert expected == pytest.approx(by_terms, rel=1e-15)
    assert GATE_BETA == 0.5
    use_teacher, jsd = switch_gate(_logits(P), _logits(Q), 0.0)
    assert jsd.dtype == torch.float64 and jsd.item() == pytest.approx(expected, rel=1e-12)
    assert use_teacher.item() is True
    # shifting logits by a constant changes nothing; swapping the models leaves the symmetric JSD unchanged
    assert switch_gate(_logits(P) + 3.0, _logits(Q) - 1.0, 0.0)[1].item() == pytest.approx(expected, rel=1e-12)
    assert switch_gate(_logits(Q), _logits(P), 0.0)[1].item() == pytest.approx(expected, rel=1e-12)
    # the engines call the two halves of the gate: gate_divergence, then teacher_intervenes (through decide)
    assert torch.equal(gate_divergence(_logits(P), _logits(Q)), jsd)
    taus = torch.tensor([expected - 1e-9, expected + 1e-9], dtype=torch.float64)
    assert teacher_intervenes(torch.full((2,), expected, dtype=torch.float64), taus).tolist() == [True, False]


def test_gate_is_strict_at_the_threshold() -> None:
    d = _jsd_by_hand(P, Q)
    p, q = _logits(P), _logits(Q)
    jsd = switch_gate(p, q, 0.0)[1]
    assert switch_gate(p, q, d * (1 - 1e-9))[0].item() is True
    assert switch_gate(p, q, d * (1 + 1e-9))[0].item() is False
    assert switch_gate(p, q, jsd)[0].item() is False  # JSD = τ keeps the student
    same = switch_gate(p, p.clone(), 0.0)
    assert same[1].item() == 0.0 and same[0].item() is False  # identical models never call the teacher at τ = 0


def test_gate_bounds_disjoint_supports_and_temperature() -> None:
    disjoint = switch_gate(torch.tensor([0.0, -math.inf]), torch.tensor([-math.inf, 0.0]), 0.6)
    assert disjoint[1].item() == pytest.approx(math.log(2), rel=1e-6)
    assert disjoint[0].item() is True
    assert switch_gate(torch.tensor([0.0, -math.inf]), torch.tensor([-math.inf, 0.0]), math.log(2))[0].item() is False
    # temperature T: the JSD of softmax(logits / T), computed by hand
    p, q, temperature = _logits(P), _logits(Q), 2.0
    tempered = [torch.softmax(x / temperature, -1).tolist() for x in (p, q)]
    jsd = switch_gate(p, q, 0.0, temperature=temperature)[1].item()
    assert jsd == pytest.approx(_jsd_by_hand(*tempered), rel=1e-12)
    assert jsd < _jsd_by_hand(P, Q)  # flattening both distributions brings them closer


def test_gate_decides_every_position_against_its_own_threshold() -> None:
    """A batch of positions [2, 3] with τ_t = τ0·exp(−λ t) per column (Koo et al. 2025's exponential schedule)."""
    p = torch.stack([_logits(P), _logits(P), _logits(Q)])
    q = torch.stack([_logits(Q), _logits(P), _logits(P)])
    p, q = torch.stack([p, p]), torch.stack([q, q])  # [2, 3, V]
    d = _jsd_by_hand(P, Q)
    tau0, decay = d * math.exp(0.1 * 1.5), 0.1  # τ_t > d for t <= 1, < d for t >= 2
    tau = tau0 * torch.exp(-decay * torch.arange(3, dtype=torch.float64))
    use_teacher, jsd = switch_gate(p, q, tau)
    np.testing.assert_allclose(jsd.numpy(), [[d, 0.0, d]] * 2, rtol=1e-12, atol=1e-15)
    assert use_teacher.tolist() == [[False, False, True]] * 2


def test_decide_for_every_strategy() -> None:
    divergence = torch.tensor([0.1, 0.3, 0.5])
    u = torch.tensor([0.1, 0.25, 0.6], dtype=torch.float64)

    def run(strategy: str, greedy: bool = False) -> list[bool]:
        return decide(strategy, divergence=divergence, tau=torch.tensor(0.3), component_draw=u, random_rate=0.25,
                      mixture_alpha=0.65, greedy=greedy).tolist()

    assert run("switch") == [False, False, True]  # JSD > τ, strictly
    assert run("student") == [False, False, False]
    assert run("teacher") == [True, True, True]
    assert run("random") == [True, False, False]  # u < rate
    assert run("mixture") == [True, True, True]  # u < α: the teacher component
    assert run("random", greedy=True) == [True, False, False]  # random draws its source even when greedy
    assert run("mixture", greedy=True) == [False, False, False]  # decided with the token from the mixture's argmax
    assert run("skd") == [False, False, False]  # decided with the student's token (select_tokens)
    with pytest.raises(ValueError, match="adaswitch_decide"):
        run("adaswitch")
    with pytest.raises(ValueError, match="beam"):
        run("beam")
    with pytest.raises(ValueError, match="divergence"):
        decide("switch", divergence=None, tau=0.3, component_draw=u, random_rate=0.5, mixture_alpha=0.2, greedy=False)


# ---------------------------------------------------------------------------------------- keyed draws


def test_keyed_uniforms_are_fixed_by_the_seed_and_shaped_by_position() -> None:
    first = keyed_uniforms(torch.Generator().manual_seed(4), 3, 5, torch.device("cpu"))
    again = keyed_uniforms(torch.Generator().manual_seed(4), 3, 5, torch.device("cpu"))
    assert first.shape == (3, 5, PURPOSES) and first.dtype == torch.float64
    assert torch.equal(first, again) and ((first >= 0) & (first < 1)).all()
    generator = torch.Generator().manual_seed(4)
    state = generator.get_state()
    assert torch.equal(keyed_uniforms(generator, 3, 5, torch.device("cpu"), needed=False),
                       torch.zeros(3, 5, PURPOSES))
    assert torch.equal(generator.get_state(), state)  # nothing drawn
    assert (first[..., TEACHER_DRAW] == 0).all()  # only skd draws the teacher's replacement uniform
    skd = keyed_uniforms(torch.Generator().manual_seed(4), 3, 5, torch.device("cpu"), teacher_draw=True)
    assert torch.equal(skd[..., :TEACHER_DRAW], first[..., :TEACHER_DRAW])  # the other purposes are unchanged
    assert ((skd[..., TEACHER_DRAW] > 0) & (skd[..., TEACHER_DRAW] < 1)).all()


def test_a_token_depends_only_on_its_distribution_and_its_uniform() -> None:
    """The same position decided alone or among others gives the same token; each source model's draw equals the
    token selected when that model is the source (what makes speculative drafts exact)."""
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=torch.float64)
    u = torch.tensor([0.65, 0.65], dtype=torch.float64)
    assert sample_inverse_cdf(probs.log(), u).tolist() == [1, 1]  # cdf [0.2, 0.7, 1.0] / [0.6, 0.7, 1.0]
    assert sample_inverse_cdf(probs[1:].log(), u[1:]).tolist() == [1]
    settings = RolloutSettings(pad_token_id=0, strategy="switch", top_k=2)
    warp = warper(settings.temperature, settings.top_k, settings.top_p)
    q = probs.log()
    p = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.3, 0.4]], dtype=torch.float64).log()
    use_teacher = torch.tensor([True, False])
    uniforms = torch.zeros(2, PURPOSES, dtype=torch.float64)
    uniforms[:, TOKEN_DRAW] = u
    tokens, lp, _ = select_tokens(q, p, use_teacher, uniforms, settings, warp)
    chosen = torch.where(use_teacher[:, None], p, q)
    assert tokens.tolist() == draw_from(chosen, u, settings, warp).tolist()
    # top-k 2 renormalises row 0 of p to (0, 1/3, 2/3) and row 1 of q to (2/3, 0, 1/3): u = 0.65 -> tokens 2 and 0
    assert tokens.tolist() == [2, 0]
    np.testing.assert_allclose(lp.numpy(), np.log([2 / 3, 2 / 3]), rtol=1e-6)


@pytest.mark.parametrize("strategy", ["switch", "student", "teacher", "random", "adaswitch"])
@pytest.mark.parametrize("decoding", [{}, {"greedy": True}, {"temperature": 0.7, "top_k": 5, "top_p": 0.9}],
                         ids=["sampled", "greedy", "warped"])
def test_selecting_from_both_models_draws_equals_select_tokens(strategy: str, decoding: dict) -> None:
    """What the speculative engine does: each model draws its own token once; the token of a position is its
    source's draw, the sampling log-probability the source's warped log-probability of it."""
    generator = torch.Generator().manual_seed(5)
    q, p = (torch.randn(64, 12, generator=generator, dtype=torch.float64) * 2 for _ in range(2))
    use_teacher = torch.rand(64, generator=generator) < 0.5
    uniforms = torch.rand(64, PURPOSES, generator=generator, dtype=torch.float64)
    settings = RolloutSettings(pad_token_id=0, strategy=strategy, **decoding)
    warp = warper(settings.temperature, settings.top_k, settings.top_p)
    log_probs = None
    if not settings.greedy:
        log_probs = {"student": warped_log_probs(q, warp), "teacher": warped_log_probs(p, warp)}
    draws = {name: draw_from(logits, uniforms[:, TOKEN_DRAW], settings, warp,
                             log_probs[name] if log_probs is not None else None)
             for name, logits in (("student", q), ("teacher", p))}
    expected = select_tokens(q, p, use_teacher, uniforms, settings, warp)
    got = select_from_draws(draws, log_probs, use_teacher, settings)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])
    assert torch.equal(got[1], expected[1])  # bit for bit: the same log-softmax of the same row
    assert 0 < int((got[0] != draws["student"]).sum()) < 64  # the sources really differ
    assert warp_is_identity(settings) == (decoding == {} or decoding == {"greedy": True})


def test_selecting_from_draws_refuses_mixture_and_skd() -> None:
    draws = {"student": torch.zeros(1, dtype=torch.long), "teacher": torch.ones(1, dtype=torch.long)}
    for strategy in ("mixture", "skd"):
        with pytest.raises(ValueError, match="select_tokens"):
            select_from_draws(draws, None, torch.ones(1, dtype=torch.bool),
                              RolloutSettings(pad_token_id=0, strategy=strategy))
    with pytest.raises(ValueError, match="log_probs"):
        select_from_draws(draws, None, torch.ones(1, dtype=torch.bool), RolloutSettings(pad_token_id=0))


# ---------------------------------------------------------------------------------------- peer strategies


def test_skd_rejects_tokens_outside_the_teachers_top_k() -> None:
    # teacher logits ranked 3 > 2 = 2 > 1 > 0: token 0 has rank 0, tokens 1 and 2 share rank 1, token 3 rank 3
    p = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0]] * 5, dtype=torch.float64)
    tokens = torch.tensor([0, 1, 2, 3, 4])
    assert skd_rejects(p, tokens, 1).tolist() == [False, True, True, True, True]
    assert skd_rejects(p, tokens, 2).tolist() == [False, False, False, True, True]  # a tie at the K-th is inside
    assert skd_rejects(p, tokens, 4).tolist() == [False, False, False, False, True]
    assert skd_rejects(p, tokens, 5).tolist() == [False] * 5


def test_skd_keeps_the_students_draw_or_takes_the_teachers_own_draw() -> None:
    """The student proposes with the token uniform; outside the teacher's top 2 the teacher draws with its own
    uniform; the sampling log-probability is the drawing model's."""
    q = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]], dtype=torch.float64).log()
    p = torch.tensor([[0.6, 0.1, 0.3], [0.6, 0.1, 0.3]], dtype=torch.float64).log()  # top 2 = {0, 2}
    uniforms = torch.zeros(2, PURPOSES, dtype=torch.float64)
    uniforms[:, TOKEN_DRAW] = torch.tensor([0.1, 0.7])  # student cdf [0.5, 0.8, 1.0]: proposals 0 and 1
    uniforms[:, TEACHER_DRAW] = torch.tensor([0.99, 0.65])  # teacher cdf [0.6, 0.7, 1.0]: token 1 at 0.65
    settings = RolloutSettings(pad_token_id=0, strategy="skd", skd_top_k=2)
    warp = warper(settings.temperature, settings.top_k, settings.top_p)
    tokens, lp, teacher = select_tokens(q, p, torch.zeros(2, dtype=torch.bool), uniforms, settings, warp)
    assert tokens.tolist() == [0, 1] and teacher.tolist() == [False, True]  # row 1: proposal 1 replaced by 1
    np.testing.assert_allclose(lp.numpy(), np.log([0.5, 0.1]), rtol=1e-6)
    uniforms[1, TEACHER_DRAW] = 0.2
    tokens, lp, teacher = select_tokens(q, p, torch.zeros(2, dtype=torch.bool), uniforms, settings, warp)
    assert tokens.tolist() == [0, 0] and teacher.tolist() == [False, True]
    np.testing.assert_allclose(lp.numpy(), np.log([0.5, 0.6]), rtol=1e-6)
    greedy = RolloutSettings(pad_token_id=0, strategy="skd", skd_top_k=1, greedy=True)
    q_greedy = torch.tensor([[0.1, 0.7, 0.2]], dtype=torch.float64).log()
    tokens, lp, teacher = select_tokens(q_greedy, p[:1], torch.zeros(1, dtype=torch.bool), uniforms[:1], greedy, warp)
    assert tokens.tolist() == [0] and teacher.tolist() == [True] and lp.tolist() == [0.0]  # the teacher's argmax


def test_adaswitch_switches_once_when_the_jsd_exceeds_k_times_its_window_mean() -> None:
    d = torch.tensor([[0.10, 0.10, 0.30, 0.05, 0.50, 0.01]], dtype=torch.float64)

    def run(window: int, k: float) -> list[bool]:
        history, valid = torch.zeros(1, window, dtype=torch.float64), torch.zeros(1, window, dtype=torch.bool)
        return adaswitch_decide(history, valid, d, torch.tensor([False]), window, k)[0].tolist()

    # window 2, K 2: t=1 0.10 > 2·0.10? no; t=2 0.30 > 2·0.10 = 0.2: switch, the teacher writes t >= 2
    assert run(2, 2.0) == [False, False, True, True, True, True]
    # K 3.5: t=2 0.30 > 0.35? no; t=3 0.05 > 3.5·0.2? no; t=4 0.50 > 3.5·(0.30+0.05)/2 = 0.6125? no; t=5 no
    assert run(2, 3.5) == [False] * 6
    # window 1, K 3.5: t=4 0.50 > 3.5·0.05 = 0.175: switch at 4 (t=2: 0.30 > 0.35? no)
    assert run(1, 3.5) == [False, False, False, False, True, True]
    # window 10 averages all earlier positions: t=2 0.30 > 1.4·0.10; never at t=0 (no earlier position)
    assert run(10, 1.4) == [False, False, True, True, True, True]
    big = torch.tensor([[5.0]], dtype=torch.float64)
    assert adaswitch_decide(torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.bool), big,
                            torch.tensor([False]), 3, 1.0).tolist() == [[False]]  # position 0 never triggers


def test_adaswitch_blocks_give_the_decisions_of_single_positions() -> None:
    """Deciding a row's positions one at a time (lockstep) or in blocks with the kept history (speculative) gives
    the same sources; a row that switched before the block stays with the teacher."""
    d = torch.tensor([[0.2, 0.1, 0.15, 0.4, 0.1, 0.6, 0.3]], dtype=torch.float64)
    window, k = 3, 1.8
    whole = adaswitch_decide(torch.zeros(1, window, dtype=torch.float64), torch.zeros(1, window, dtype=torch.bool),
                             d, torch.tensor([False]), window, k)[0]
    assert whole.tolist() == [False, False, False, True, True, True, True]  # 0.4 > 1.8·0.15 = 0.27
    for start in range(d.shape[1]):
        slots = torch.arange(start - window, start)
        history = torch.where(slots >= 0, d[0, slots.clamp_min(0)], 0.0)[None]
        switched = torch.tensor([bool(whole[start - 1]) if start > 0 else False])
        block = adaswitch_decide(history, (slots >= 0)[None], d[:, start:], switched, window, k)[0]
        assert block.tolist() == whole[start:].tolist()
    assert adaswitch_decide(torch.zeros(1, window, dtype=torch.float64), torch.ones(1, window, dtype=torch.bool),
                            torch.zeros(1, 2, dtype=torch.float64), torch.tensor([True]), window, k).tolist() == [
        [True, True]]
