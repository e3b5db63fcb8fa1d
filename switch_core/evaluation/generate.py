"""Batched response generation with left padding, under the evaluation protocol's decoding settings.

Decoding follows MiniLLM / DistiLLM ``evaluate_main.py`` (docs/METHOD.md §5.3–5.4): prompts truncated to
``max_prompt_length`` tokens (cut inside their text, the format's end kept:
:func:`~switch_core.data.tokenize.encode_prompt`) and left-padded, ``do_sample=True`` at the given temperature, top-k (0 = off), top-p,
``no_repeat_ngram_size``, one beam, pad = the tokenizer's pad (eos when it has none). The response is the generated
tokens up to the first EOS, decoded with ``skip_special_tokens=True``, ``<n>`` replaced by a newline, then stripped.

Only the settings passed here apply: during the call the model's own ``generation_config`` is replaced by one built
from these arguments and transformers' neutral defaults, so neither a checkpoint's sampling defaults nor
transformers' implicit ``top_k=50`` (docs/METHOD.md §B.1) can leak in.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from switch_core.data.tokenize import encode_prompt, left_pad
from switch_core.models.device import model_device


class GenerationSettingsError(ValueError):
    """Decoding settings out of range (e.g. ``batch_size < 1``, ``top_p`` outside (0, 1]) or a tokenizer without EOS."""


@dataclass(frozen=True)
class GenerationResult:
    """Responses to a list of prompts, in prompt order, with the token counts needed for metrics and throughput.

    Attributes:
        texts: decoded responses (cut at the first EOS, ``<n>`` -> newline, stripped).
        token_ids: response token ids before the first EOS.
        response_lengths: response tokens before the first EOS (all generated tokens when there is none).
        prompt_lengths: prompt tokens after truncation to ``max_prompt_length``.
        stopped: whether the model produced an EOS token within ``max_new_tokens``.
        seconds: wall-clock seconds spent in ``model.generate`` (prefill included).
        prompt_truncated: whether each prompt was cut to ``max_prompt_length`` (its end kept, see
            :func:`switch_core.data.tokenize.encode_prompt`).
    """

    texts: list[str]
    token_ids: list[list[int]]
    response_lengths: list[int]
    prompt_lengths: list[int]
    stopped: list[bool]
    seconds: float
    prompt_truncated: list[bool]

    @property
    def generated_tokens(self) -> int:
        """Tokens the model produced for the responses: response tokens plus one for each EOS (padding excluded)."""
        return sum(self.response_lengths) + sum(self.stopped)

    @property
    def tokens_per_second(self) -> float:
        """``generated_tokens / seconds`` (0.0 when no time was measured)."""
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def eos_token_ids(model: PreTrainedModel, tokenizer: Any) -> list[int]:
    """The ids that end a response: the tokenizer's EOS plus any EOS ids of the model's generation config.

    Raises:
        GenerationSettingsError: neither defines an EOS token.
    """
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if not ids:
        raise GenerationSettingsError("neither the tokenizer nor the model defines an EOS token: responses never end")
    return ids


def decode_response(token_ids: Sequence[int], tokenizer: Any, eos_ids: Sequence[int]) -> tuple[str, list[int], bool]:
    """Post-process one generated sequence (docs/METHOD.md §5.4).

    Args:
        token_ids: the generated token ids only (no prompt), possibly followed by padding after EOS.
        tokenizer: the model's tokenizer.
        eos_ids: ids that end the response.

    Returns:
        ``(text, kept, stopped)``: the text of the tokens before the first EOS decoded with
        ``skip_special_tokens=True``, ``"<n>"`` replaced by ``"\\n"`` and stripped; those token ids; whether an EOS
        was found.
    """
    ids = [int(t) for t in token_ids]
    eos = {int(e) for e in eos_ids}
    cut = next((i for i, t in enumerate(ids) if t in eos), None)
    kept = ids if cut is None else ids[:cut]
    text = tokenizer.decode(kept, skip_special_tokens=True).replace("<n>", "\n").strip()
    return text, kept, cut is not None


def protocol_generation_config(
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    no_repeat_ngram_size: int,
    greedy: bool,
    pad_token_id: int,
    eos_ids: Sequence[int],
    bos_token_id: int | None,
) -> GenerationConfig:
    """A complete ``GenerationConfig`` for the protocol: transformers' neutral defaults plus the given settings.

    Every processor the arguments do not ask for is off (repetition penalty 1, typical-p 1, no min-p, no forced or
    suppressed tokens); ``top_k=0`` is passed explicitly so no top-k filter is added (METHOD.md §B.1). ``greedy=True``
    gives argmax decoding and ignores temperature / top-k / top-p.

    Raises:
        GenerationSettingsError: ``max_new_tokens < 1``, ``temperature <= 0``, ``top_k < 0``, ``top_p`` not in
            (0, 1] or ``no_repeat_ngram_size < 0``.
    """
    if max_new_tokens < 1:
        raise GenerationSettingsError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature <= 0:
        raise GenerationSettingsError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if top_k < 0:
        raise GenerationSettingsError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise GenerationSettingsError(f"top_p must be in (0, 1], got {top_p}")
    if no_repeat_ngram_size < 0:
        raise GenerationSettingsError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {no_repeat_ngram_size}")
    settings: dict[str, Any] = GenerationConfig._get_default_generation_params()
    settings.pop("max_length", None)
    settings.update(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        num_beams=1,
        no_repeat_ngram_size=no_repeat_ngram_size,
        pad_token_id=pad_token_id,
        eos_token_id=list(eos_ids),
        bos_token_id=bos_token_id,
        use_cache=True,
    )
    if not greedy:
        settings.update(temperature=temperature, top_k=top_k, top_p=top_p)
    return GenerationConfig(**settings)


@contextlib.contextmanager
def _generation_mode(model: PreTrainedModel, config: GenerationConfig) -> Iterator[None]:
    """For the duration: eval mode (no dropout; the KV cache stays on under gradient checkpointing) and ``config`` as
    the model's generation config (transformers fills unset fields from it). Both are restored afterwards."""
    saved, was_training = model.generation_config, model.training
    model.generation_config = config
    model.eval()
    try:
        yield
    finally:
        model.generation_config = saved
        model.train(was_training)


def generate_batch(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_prompt_length: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    no_repeat_ngram_size: int,
    batch_size: int,
    seed: int,
    greedy: bool = False,
    on_batch: Callable[[int], object] | None = None,
) -> GenerationResult:
    """Generate one response per prompt in left-padded batches; the caller's RNG state and the model's mode are left
    untouched (a model in training mode generates in eval mode and is switched back).

    Prompts are processed longest first (less padding); results come back in prompt order. Sampling draws come from
    ``torch.manual_seed(seed)`` set inside ``torch.random.fork_rng``, so the same prompts, settings, ``batch_size`` and
    ``seed`` give the same responses, and generating does not disturb a training loop's random stream.

    Args:
        model: a causal LM (run in eval mode without gradients here).
        tokenizer: its tokenizer (needs an EOS token; pad defaults to EOS).
        prompts: prompt strings (formatted, e.g. by :func:`switch_core.data.prompts.format_prompt`).
        max_prompt_length: prompt tokens kept (:func:`~switch_core.data.tokenize.encode_prompt`, docs/METHOD.md §5.3).
        max_new_tokens: maximum response tokens, EOS included.
        temperature: sampling temperature (> 0).
        top_k: keep the k most likely tokens; 0 = off.
        top_p: nucleus mass in (0, 1]; 1 = off.
        no_repeat_ngram_size: forbid repeating any n-gram of this size (over prompt + response, as transformers
            does); 0 = off.
        batch_size: prompts per ``generate`` call.
        seed: sampling seed.
        greedy: argmax decoding instead of sampling (then temperature, top-k and top-p are unused).
        on_batch: called after each batch with the number of prompts it held (e.g. ``tqdm.update``).

    Returns:
        A :class:`GenerationResult` with one entry per prompt.

    Raises:
        GenerationSettingsError: a setting out of range or no EOS token.
        switch_core.data.tokenize.EmptyExampleError: a prompt with no tokens.
    """
    if batch_size < 1:
        raise GenerationSettingsError(f"batch_size must be >= 1, got {batch_size}")
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    config = protocol_generation_config(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        no_repeat_ngram_size=no_repeat_ngram_size, greedy=greedy, pad_token_id=pad_id, eos_ids=eos_ids,
        bos_token_id=tokenizer.bos_token_id,
    )
    prompts_in = [encode_prompt(p, tokenizer, max_prompt_length=max_prompt_length) for p in prompts]
    encoded = [p.ids for p in prompts_in]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    device = model_device(model)
    texts: list[str] = [""] * len(prompts)
    kept: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    seconds = 0.0
    rng_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.no_grad(), _generation_mode(model, config):
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = left_pad([encoded[i] for i in rows], pad_id)
            began = time.perf_counter()
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - began
            generated = output[:, input_ids.shape[1] :].tolist()
            for row, ids in zip(rows, generated):
                texts[row], kept[row], stopped[row] = decode_response(ids, tokenizer, eos_ids)
            if on_batch is not None:
                on_batch(len(rows))
    return GenerationResult(
        texts, kept, [len(k) for k in kept], [len(e) for e in encoded], stopped, seconds,
        [p.truncated for p in prompts_in],
    )


def generate_responses(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_prompt_length: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    no_repeat_ngram_size: int,
    batch_size: int,
    seed: int,
    greedy: bool = False,
) -> list[str]:
    """The responses only; see :func:`generate_batch` for arguments, determinism and errors.

    Used by the evaluation and by the training loop's dev ROUGE-L (docs/METHOD.md §5.6).

    Returns:
        One post-processed response string per prompt, in prompt order.
    """
    return generate_batch(
        model, tokenizer, prompts, max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, no_repeat_ngram_size=no_repeat_ngram_size,
        batch_size=batch_size, seed=seed, greedy=greedy,
    ).texts
