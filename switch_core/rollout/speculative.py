"""Exact speculative SWITCH rollouts: one model drafts a chunk, the other scores it in one forward pass.

The gate needs both models' next-token distributions at every response position, but not from one-token forwards.
Each chunk of the decoding loop:

1. **Draft.** The *drafter* (the model expected to write the next stretch) decodes k tokens with its own KV cache,
   one forward per token, drawing each token exactly as it would be drawn if the drafter were the source at that
   position (:func:`switch_core.rollout.sampling.draw_from`: argmax, or inverse-CDF sampling with the position's keyed
   uniform of the model's purpose, :func:`switch_core.rollout.sampling.draw_purpose`). The drafter now has its
   logits at the k positions.
2. **Verify.** The other model (the *verifier*) reads the same k tokens in one forward pass and so has its logits at
   the same k positions.
3. **Check in order.** At each position the strategy's rule (:mod:`switch_core.rollout.gate`, the same as the
   lockstep engine's) picks the source and the token is drawn from it with the position's uniform
   (:func:`switch_core.rollout.sampling.select_tokens`). All k positions are decided at once, each as if its prefix
   matched the draft, and the verifier's own draws are made in one batched call, so a position's token is simply
   its source's draw (:func:`switch_core.rollout.sampling.select_from_draws`; ``mixture`` and ``skd`` select with
   :func:`~switch_core.rollout.sampling.select_tokens`): each model's warped log-probabilities are computed once
   per position and also give the sampling and token log-probabilities. While the token equals the draft the
   draft is accepted; at the first position where it differs, the drawn token is kept and the rest of the chunk is
   discarded (a stop token or ``max_new_tokens`` also ends a row's chunk). Every kept position was decided from the
   logits of the very prefix lockstep decoding would have fed, with the same uniforms: the rollout is the lockstep
   one. ``adaswitch``'s per-row state (its earlier divergences and whether it switched) is read from the kept
   positions before the chunk and, within the chunk, from the chunk's own earlier positions, which are kept only if
   the draft matched.

Discarded positions stay in both KV caches as masked holes: their attention-mask column is set to 0, so no later
token attends to them, and position ids (``cumsum(mask) − 1``) skip them. Rows therefore accept different lengths in
one batch without cropping the caches row by row (``DynamicCache.crop`` crops every row alike). The last kept token
of a chunk is fed to both models at the start of the next chunk (the verifier reads it with the drafts). The first
chunk starts from the prompt prefill, whose logits are at hand.

Which model drafts, and how many tokens, is planned before each chunk by :mod:`switch_core.rollout.planner`: the
lowest expected cost per kept token under a fixed cost model of the two models and of the selection work
(deterministic, so the same inputs give the same chunking and hence bit-identical floats) and running per-row rates
of how often each model's own draw was the chosen token (early in a SWITCH response, where τ_t is large, mostly the
student's; late, where τ_t is small, mostly the teacher's; rows reach the teacher's stretch at different steps).
The plan changes the speed, never the tokens.

Results equal the lockstep engine's up to floating-point rounding: the verifier's chunk forward and a run of
one-token forwards compute the same logits with differently shaped matrix products, and the holes change the
lengths of the attention reductions. In float64 no decision changed in the tests; in float32 a position whose
JSD lies within rounding of τ_t, or whose uniform lies within rounding of a CDF step, can flip: none on the tiny test
models, about 0.2-0.4% of positions on SmolLM2-135M with its 49,152-token vocabulary (tests/test_rollout_speculative.py
holds both levels). Lockstep rollouts already depend on the batch composition at that level.

The holes cost memory and attention length: each chunk appends its k fed tokens to both caches whatever survives,
so a cache holds the prompt plus the drafted (not the kept) tokens. At 128 new tokens with about 12% of drafts
discarded that is about 15 extra cache positions per row, on the order of 1% of the rollout's time (attention and
cache appends are about 13% of it on CPU), less than a row-wise re-pack of both caches would cost.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from switch_core.rollout.engine import (
    COMPACT_FRACTION,
    Decoder,
    Responses,
    RolloutBatch,
    RolloutSettings,
    RolloutTimer,
    choose_sources,
    draws_needed,
    model_device,
)
from switch_core.rollout.gate import gate_divergence
from switch_core.rollout.planner import ChunkPlanner
from switch_core.rollout.sampling import (
    COMPONENT_DRAW,
    draw_from,
    draw_purpose,
    keyed_uniforms,
    select_from_draws,
    select_tokens,
    warp_is_identity,
    warped_log_probs,
    warper,
)


def _prior_teacher_share(settings: RolloutSettings) -> float:
    """The teacher share expected before any decision: it picks the first drafter."""
    return {"switch": 0.0, "student": 0.0, "teacher": 1.0, "random": settings.random_rate,
            "mixture": settings.mixture_alpha, "skd": 0.0, "adaswitch": 0.0}[settings.strategy]


def decode_speculative(
    student: nn.Module,
    teacher: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    settings: RolloutSettings,
    generator: torch.Generator | None,
    timer: RolloutTimer | None,
) -> RolloutBatch:
    """The speculative engine (module docstring) for :func:`switch_core.rollout.engine.rollout`, which validates the
    inputs and sets eval mode and ``no_grad``. Both models are run. Returns the rollout on the student's device."""
    device = model_device(student)

    def section(name: str) -> Any:
        return timer.section(name) if timer is not None else nullcontext()

    prompt_ids, prompt_mask = prompt_ids.to(device).long(), prompt_mask.to(device).long()
    decoders = {"student": Decoder(student, device), "teacher": Decoder(teacher, device)}
    gate = settings.needs_divergence or settings.compute_divergence
    warp = warper(settings.temperature, settings.top_k, settings.top_p)
    purpose = {name: draw_purpose(settings.strategy, name) for name in decoders}
    log_probs_needed = not settings.greedy  # warped log-probabilities, computed once per model and position
    raw_log_probs = warp_is_identity(settings)  # they are then also the token log-probabilities
    taus = settings.thresholds(device)
    stop_ids = torch.tensor(settings.stop_token_ids, dtype=torch.long, device=device)
    batch, steps = prompt_ids.shape[0], settings.max_new_tokens
    uniforms = keyed_uniforms(generator, batch, steps, device, needed=draws_needed(settings),
                              teacher_draw=settings.strategy == "skd")

    mask = prompt_mask
    at_hand: dict[str, Tensor] | None = {}
    for name, decoder in decoders.items():
        with section(name):
            at_hand[name] = decoder(prompt_ids, mask)
    vocab_size = at_hand["student"].shape[-1]
    out = Responses(settings, batch, vocab_size, device)
    parameters = {name: sum(p.numel() for p in d.model.parameters()) for name, d in decoders.items()}
    planner = ChunkPlanner.for_models(_prior_teacher_share(settings), settings.max_draft_tokens, parameters,
                                      vocab_size, batch, decoders["teacher"].device.type)

    rows = torch.arange(batch, device=device)  # original row of each compute row
    lengths = torch.zeros(batch, dtype=torch.long, device=device)  # response tokens kept per compute row
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    pending: Tensor | None = None  # last kept token of each row, not yet fed to either model
    while True:
        drafter, k = planner.next((~finished).tolist())
        k = min(k, int((steps - lengths[~finished]).max()))
        verifier = "student" if drafter == "teacher" else "teacher"
        positions = lengths[:, None] + torch.arange(k, device=device)  # [n, k] response positions
        clamped = positions.clamp(max=steps - 1)
        u = uniforms[rows[:, None], clamped]  # [n, k, PURPOSES]

        # 1. draft k tokens with the drafter's cache
        offset = 0 if pending is None else 1  # the pending token is fed first
        fed = [] if pending is None else [pending]
        drafts, draft_logits, draft_lps = [], [], []
        chunk_mask = torch.cat([mask, mask.new_ones((mask.shape[0], offset + k - 1))], dim=1)
        base = mask.shape[1]
        for j in range(k):
            if j == 0 and pending is None:
                logits = at_hand[drafter]
            else:
                with section(drafter):
                    logits = decoders[drafter](fed[-1][:, None], chunk_mask[:, : base + len(fed)])
            with section("select"):
                draft_logits.append(logits)
                if log_probs_needed:
                    draft_lps.append(warped_log_probs(logits, warp))
                drafts.append(draw_from(logits, u[:, j, purpose[drafter]], settings, warp,
                                        draft_lps[-1] if draft_lps else None))
                if j < k - 1:
                    fed.append(drafts[-1])
        # 2. the verifier reads the same tokens in one forward
        verify_logits = [] if pending is not None else [at_hand[verifier][:, None]]
        if fed:
            with section(verifier):
                verify_logits.append(decoders[verifier].forward(torch.stack(fed, dim=1), chunk_mask, keep=len(fed)))
        at_hand = None

        # 3. decide every position as if its prefix matched the draft; keep up to the first difference
        with section("select"):
            by_model = {drafter: torch.stack(draft_logits, dim=1), verifier: torch.cat(verify_logits, dim=1)}
            n, vocab = rows.shape[0], by_model["student"].shape[-1]
            by_model = {name: logits.reshape(n * k, vocab) for name, logits in by_model.items()}
            q, p = by_model["student"], by_model["teacher"]
            tau, u_flat = taus[clamped].reshape(-1), u.reshape(n * k, -1)
            # each model's warped log-probabilities and own draw at every position (the drafter's from step 1)
            log_probs = None
            if log_probs_needed:
                log_probs = {drafter: torch.stack(draft_lps, dim=1).reshape(n * k, vocab),
                             verifier: warped_log_probs(by_model[verifier], warp)}
            draws = {drafter: torch.stack(drafts, dim=1).reshape(-1),
                     verifier: draw_from(by_model[verifier], u_flat[:, purpose[verifier]], settings, warp,
                                         log_probs[verifier] if log_probs is not None else None)}
            jsd = gate_divergence(p, q, settings.temperature) if gate else None
            use_teacher = choose_sources(
                settings, out, rows, lengths, jsd.reshape(n, k) if jsd is not None else None, tau.reshape(n, k),
                u[:, :, COMPONENT_DRAW],
            ).reshape(-1)
            if settings.strategy in ("mixture", "skd"):
                tokens, sampling_lp, use_teacher = select_tokens(q, p, use_teacher, u_flat, settings, warp)
            else:
                tokens, sampling_lp, use_teacher = select_from_draws(draws, log_probs, use_teacher, settings)
            tokens = tokens.reshape(n, k)
            drafted = draws[drafter].reshape(n, k)
            mismatch = tokens != drafted
            done = torch.isin(tokens, stop_ids) | (positions >= steps - 1)
            ends = mismatch | done
            ends[:, -1] = True
            end = ends.int().argmax(dim=1)  # first position that ends the row's chunk
            running = ~finished
            kept = (torch.arange(k, device=device)[None, :] <= end[:, None]) & running[:, None]
            flat = kept.flatten()
            token_lps = None
            if log_probs is not None and raw_log_probs:
                token_lps = tuple(log_probs[name].gather(-1, tokens.reshape(-1, 1)).squeeze(-1)[flat].float()
                                  for name in ("student", "teacher"))
            out.write(
                rows[:, None].expand(n, k).reshape(-1)[flat], positions.reshape(-1)[flat],
                active=torch.ones(int(flat.sum()), dtype=torch.bool, device=device), tokens=tokens.reshape(-1)[flat],
                use_teacher=use_teacher[flat], jsd=jsd[flat] if jsd is not None else None,
                sampling_lp=sampling_lp[flat], q=q[flat] if token_lps is None else None,
                p=p[flat] if token_lps is None or settings.keep_teacher_logits else None, token_logprobs=token_lps,
            )
            # the caches keep the fed drafts before the row's end; later ones become masked holes
            valid = torch.arange(len(fed), device=device)[None, :] - offset < end[:, None]
            mask = torch.cat([mask, valid.long()], dim=1)
            pending = tokens.gather(1, end[:, None]).squeeze(1)
            lengths = torch.where(running, lengths + end + 1, lengths)
            finished = finished | (running & done.gather(1, end[:, None]).squeeze(1))

            # how often each model's own draw was the chosen token: the acceptance of either model as drafter
            accepted_by_row = ((~mismatch) & kept).sum(dim=1)
            accepted = int(accepted_by_row.sum())
            positions_kept = kept.sum(dim=1).tolist()
            planner.observe_acceptance(drafter, accepted_by_row.tolist(), positions_kept)
            planner.observe_acceptance(verifier, ((tokens == draws[verifier].reshape(n, k)) & kept).sum(dim=1).tolist(),
                                       positions_kept)
            if timer is not None:
                active = int(running.sum())
                timer.count(chunks=active, drafted=k * active, accepted=accepted,
                            teacher_drafts=active if drafter == "teacher" else 0)
            still = int((~finished).sum())
            if still == 0:
                break
            if still <= COMPACT_FRACTION * n:
                keep = (~finished).nonzero().flatten()
                rows, mask, lengths, finished, pending = (x[keep] for x in (rows, mask, lengths, finished, pending))
                for decoder in decoders.values():
                    decoder.keep_rows(keep)
                planner.keep_rows(keep.tolist())
    if timer is not None:
        timer.count(forwards=sum(d.calls for d in decoders.values()))
    used = int(out.response_mask.sum(dim=1).max())
    return out.batch(prompt_ids, prompt_mask, taus, used)

