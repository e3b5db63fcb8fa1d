"""Tiny random GPT-2 / OPT / Llama causal LMs and a self-built byte-level BPE tokenizer.

Used by the tests and the ``tiny`` smoke preset: everything is built offline in a second, deterministically for a
given corpus and seed. The tokenizer follows GPT-2's conventions: byte-level BPE, one special token
``<|endoftext|>`` (id 0) serving as eos, pad and bos, and no special tokens added when encoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from switch_core.models.checkpoint import save_pretrained_atomic

Arch = Literal["gpt2", "opt", "llama"]
ARCHS: tuple[str, ...] = ("gpt2", "opt", "llama")
EOS_TOKEN = "<|endoftext|>"
EOS_TOKEN_ID = 0
MIN_VOCAB = 257  # 256 byte symbols + the eos token


class TinyModelError(ValueError):
    """Bad arguments for a tiny model or tokenizer."""


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` (``tokenizers`` library) and wrap it for transformers.

    Every byte has a token, so any text encodes without unknown tokens and decodes back exactly.

    Args:
        corpus: training texts.
        vocab_size: final vocabulary size including the 256 byte symbols and ``<|endoftext|>``; at least 257.
            Fewer tokens result when the corpus has too few distinct pairs to merge.

    Returns:
        A fast tokenizer with eos = pad = bos = ``<|endoftext|>`` (id 0); ``save_pretrained`` / ``AutoTokenizer``
        round-trip it.

    Raises:
        TinyModelError: ``vocab_size`` below 257.
    """
    if vocab_size < MIN_VOCAB:
        raise TinyModelError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, bos_token=EOS_TOKEN
    )


def tiny_config(
    arch: Arch,
    vocab_size: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 512,
    eos_token_id: int = EOS_TOKEN_ID,
) -> PretrainedConfig:
    """Config of a tiny model: feed-forward width 4*hidden, tied embeddings, dropout 0, eos = pad = bos.

    Dropout is 0 so that a training step is deterministic (tests compare against references).

    Args:
        arch, vocab_size, hidden, layers, heads, max_positions, eos_token_id: as for `tiny_causal_lm`.

    Returns:
        A ``GPT2Config``, ``OPTConfig`` or ``LlamaConfig``.

    Raises:
        TinyModelError: unknown ``arch`` or ``hidden`` not divisible by ``heads``.
    """
    if hidden % heads:
        raise TinyModelError(f"hidden={hidden} must be divisible by heads={heads}")
    special = {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": eos_token_id}
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_positions,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=4 * hidden,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
    if arch == "opt":
        return OPTConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            ffn_dim=4 * hidden,
            max_position_embeddings=max_positions,
            word_embed_proj_dim=hidden,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            layerdrop=0.0,
            **special,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            **special,
        )
    raise TinyModelError(f"arch={arch!r} is not one of {', '.join(ARCHS)}")


def tiny_causal_lm(
    arch: Arch,
    vocab_size: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_positions: int = 512,
    eos_token_id: int = EOS_TOKEN_ID,
) -> PreTrainedModel:
    """A randomly initialised tiny causal LM (float32, eval mode), identical for identical arguments.

    The global torch RNG is left as it was (initialisation runs under ``torch.random.fork_rng``).

    Args:
        arch: ``"gpt2"``, ``"opt"`` or ``"llama"``.
        vocab_size: number of token ids (use ``len(tokenizer)``).
        hidden: model width; layers: decoder layers; heads: attention heads (divides ``hidden``).
        seed: initialisation seed.
        max_positions: longest sequence (learned position tables for GPT-2 / OPT).
        eos_token_id: eos, pad and bos id written into the config (`build_tokenizer` uses 0).

    Returns:
        The model; ``model.generation_config`` carries the same eos / pad / bos ids.

    Raises:
        TinyModelError: see `tiny_config`.
    """
    config = tiny_config(
        arch,
        vocab_size,
        hidden=hidden,
        layers=layers,
        heads=heads,
        max_positions=max_positions,
        eos_token_id=eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def write_tiny_checkpoint(folder: str | Path, arch: Arch, tokenizer: PreTrainedTokenizerFast, **kwargs: int) -> Path:
    """Save a `tiny_causal_lm` sized to ``tokenizer`` plus the tokenizer, atomically, as a loadable checkpoint.

    Args:
        folder: destination; an existing folder is replaced.
        arch: ``"gpt2"``, ``"opt"`` or ``"llama"``.
        tokenizer: its ``len`` sets the vocabulary size and its eos id the special ids.
        **kwargs: ``hidden``, ``layers``, ``heads``, ``seed``, ``max_positions`` for `tiny_causal_lm`.

    Returns:
        The folder, loadable with ``from_pretrained`` or `switch_core.models.loading.load_causal_lm`.
    """
    model = tiny_causal_lm(arch, len(tokenizer), eos_token_id=tokenizer.eos_token_id, **kwargs)
    return save_pretrained_atomic(model, tokenizer, folder)
