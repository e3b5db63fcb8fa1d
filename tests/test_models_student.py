"""Student construction: evenly spaced layers, Block Influence layer selection, layer pruning, fresh models from
configs, parameter counts."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache

from switch_core.data.tokenize import TrainExample, collate_train
from switch_core.models.student import (
    StudentConfigError,
    block_influence,
    count_parameters,
    evenly_spaced_layers,
    model_from_config,
    prune_layers,
    top_influence_layers,
)
from switch_core.models.tiny import tiny_causal_lm

VOCAB = 120
HIDDEN = 32
# Decoder-layer list and the per-layer attention module of each family.
LAYERS = {
    "gpt2": ("transformer.h", "attn"),
    "opt": ("model.decoder.layers", "self_attn"),
    "llama": ("model.layers", "self_attn"),
}


def _layers(model, arch):
    module = model
    for name in LAYERS[arch][0].split("."):
        module = getattr(module, name)
    return module


def _teacher(arch, layers=5, seed=0):
    return tiny_causal_lm(arch, VOCAB, hidden=HIDDEN, layers=layers, heads=4, seed=seed)


@pytest.mark.parametrize(
    ("num_layers", "keep", "expected"),
    [
        (30, 6, [0, 6, 12, 17, 23, 29]),  # 29/5 = 5.8: 0, 5.8, 11.6, 17.4, 23.2, 29
        (12, 4, [0, 4, 7, 11]),  # 11/3: 0, 3.67, 7.33, 11
        (5, 3, [0, 2, 4]),
        (4, 3, [0, 2, 3]),  # 1.5 rounds up to 2
        (10, 2, [0, 9]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        (1, 1, [0]),
    ],
)
def test_evenly_spaced_layers(num_layers, keep, expected):
    assert evenly_spaced_layers(num_layers, keep) == expected


@pytest.mark.parametrize(("num_layers", "keep"), [(30, 1), (30, 31), (4, 0), (0, 0)])
def test_evenly_spaced_layers_rejects_impossible_counts(num_layers, keep):
    with pytest.raises(StudentConfigError, match=f"num_layers={num_layers}|keep={keep}"):
        evenly_spaced_layers(num_layers, keep)


# The final norm of each family, applied after the last decoder layer (output_hidden_states[-1] is after it).
FINAL_NORM = {"gpt2": ("transformer", "ln_f"), "opt": ("model.decoder", "final_layer_norm"), "llama": ("model", "norm")}


def _hand_block_influence(model, arch, input_ids):
    """1 - mean token cosine (float64) between consecutive ``output_hidden_states``, on a copy whose final norm is
    the identity, so the last state is the last layer's raw output."""
    bare = copy.deepcopy(model)
    parent = bare
    for name in FINAL_NORM[arch][0].split("."):
        parent = getattr(parent, name)
    setattr(parent, FINAL_NORM[arch][1], nn.Identity())
    with torch.no_grad():
        states = bare(input_ids, output_hidden_states=True).hidden_states
    return torch.tensor([
        1 - nn.functional.cosine_similarity(states[i].double(), states[i + 1].double(), dim=-1).mean().item()
        for i in range(len(states) - 1)
    ], dtype=torch.float64)


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_block_influence_equals_hand_computation_from_hidden_states(arch):
    teacher = _teacher(arch, layers=4)
    ids = torch.randint(1, VOCAB, (3, 9), generator=torch.Generator().manual_seed(0))
    influence = block_influence(teacher, ids, torch.ones_like(ids))
    assert influence.dtype == torch.float64 and influence.shape == (4,)
    torch.testing.assert_close(influence, _hand_block_influence(teacher, arch, ids), rtol=0, atol=1e-6)
    assert influence.min() > 0  # random layers turn their input a little


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_block_influence_of_a_padded_batch_is_the_token_weighted_mean_of_its_rows(arch):
    teacher = _teacher(arch, layers=3)
    teacher.train()
    rows = [[5, 9, 3, 17, 2, 8, 11], [4, 6], [30, 31, 32, 33]]
    singles = [block_influence(teacher, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows]
    expected = 1 - sum(len(r) * (1 - bi) for r, bi in zip(rows, singles, strict=True)) / sum(map(len, rows))
    batch = collate_train([TrainExample(str(i), r, r, 0) for i, r in enumerate(rows)], pad_token_id=0)
    for batch_size in (1, 2, 8):
        torch.testing.assert_close(
            block_influence(teacher, batch["input_ids"], batch["attention_mask"], batch_size=batch_size), expected,
            rtol=0, atol=1e-6,
        )
    one = batch["input_ids"][1:2], batch["attention_mask"][1:2]  # one padded row = the same row unpadded
    torch.testing.assert_close(block_influence(teacher, *one), singles[1], rtol=0, atol=1e-6)
    assert teacher.training  # mode restored


def test_block_influence_rejects_bad_inputs():
    teacher = _teacher("llama", layers=2)
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(StudentConfigError, match="all 0"):
        block_influence(teacher, ids, torch.zeros_like(ids))
    with pytest.raises(StudentConfigError, match=r"\[batch, length\]"):
        block_influence(teacher, ids, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(StudentConfigError, match="batch_size=0"):
        block_influence(teacher, ids, torch.ones_like(ids), batch_size=0)


@pytest.mark.parametrize(
    ("keep", "expected"),
    [(1, [3]), (2, [0, 3]), (3, [0, 2, 3]), (4, [0, 2, 3, 4]), (5, [0, 1, 2, 3, 4])],
)
def test_top_influence_layers_keeps_the_highest_in_index_order_ties_to_the_lower_index(keep, expected):
    influence = torch.tensor([0.5, 0.1, 0.5, 0.9, 0.2], dtype=torch.float64)
    assert top_influence_layers(influence, keep) == expected


@pytest.mark.parametrize("keep", [0, 6])
def test_top_influence_layers_rejects_impossible_counts(keep):
    with pytest.raises(StudentConfigError, match=f"keep={keep} layers by block influence out of 5"):
        top_influence_layers([0.5, 0.1, 0.5, 0.9, 0.2], keep)


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_prune_keeps_the_chosen_layers_weights(arch):
    teacher = _teacher(arch)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    keep = [0, 3, 4]
    student = prune_layers(teacher, keep)

    assert student is not teacher and type(student) is type(teacher)
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 5
    assert len(_layers(student, arch)) == 3 and len(_layers(teacher, arch)) == 5
    for new, old in enumerate(keep):
        s_layer, t_layer = _layers(student, arch)[new].state_dict(), _layers(teacher, arch)[old].state_dict()
        assert s_layer.keys() == t_layer.keys()
        assert all(torch.equal(s_layer[k], t_layer[k]) for k in s_layer)
        assert getattr(_layers(student, arch)[new], LAYERS[arch][1]).layer_idx == new
    layer_prefix = LAYERS[arch][0] + "."
    outside = [k for k in student.state_dict() if not k.startswith(layer_prefix)]
    assert outside, "embeddings / final norm / head must be kept"
    assert all(torch.equal(student.state_dict()[k], before[k]) for k in outside)
    # The input is untouched.
    assert teacher.state_dict().keys() == before.keys()
    assert all(torch.equal(teacher.state_dict()[k], before[k]) for k in before)
    assert count_parameters(student) < count_parameters(teacher)


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_pruned_model_kv_cache_matches_full_forward(arch):
    student = prune_layers(_teacher(arch), 3).double()  # evenly spaced: layers 0, 2, 4
    ids = torch.tensor([[5, 17, 3, 99, 42, 8, 64, 23]])
    with torch.no_grad():
        full = student(ids).logits
        cache = DynamicCache(config=student.config)
        steps = []
        for t in range(ids.shape[1]):
            out = student(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_pruned_model_generate_with_cache_equals_naive_greedy(arch):
    student = prune_layers(_teacher(arch, seed=2), [1, 4]).double()
    prompt = torch.tensor([[7, 11, 13, 17, 19]])
    max_new = 8
    with torch.no_grad():
        generated = student.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new, do_sample=False, use_cache=True
        )
        # Reference: re-run the whole sequence at every step (no cache), take the argmax, stop at eos.
        seq = prompt
        for _ in range(max_new):
            next_id = student(seq).logits[0, -1].argmax()
            seq = torch.cat([seq, next_id.view(1, 1)], dim=1)
            if next_id.item() == student.config.eos_token_id:
                break
    assert generated.tolist() == seq.tolist()


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_pruned_model_save_load_round_trip(arch, tmp_path):
    student = prune_layers(_teacher(arch), 2)
    student.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 2
    ids = torch.tensor([[1, 2, 3, 50, 70, 90]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, student(ids).logits)


def test_prune_preserves_dtype_and_mode():
    teacher = _teacher("llama").to(torch.bfloat16).train()
    student = prune_layers(teacher, [0, 1])
    assert student.dtype == torch.bfloat16 and student.training
    assert student.generation_config.eos_token_id == teacher.generation_config.eos_token_id


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ([], "non-empty"),
        ([0, 5], r"out of range.*0\.\.4"),
        ([2, 1], "strictly increasing"),
        ([1, 1], "strictly"),
        (7, "keep=7"),
    ],
)
def test_prune_rejects_bad_selections(keep, message):
    with pytest.raises(StudentConfigError, match=message):
        prune_layers(_teacher("gpt2"), keep)


def test_prune_rejects_unsupported_architecture():
    with pytest.raises(StudentConfigError, match="cannot prune a Linear"):
        prune_layers(torch.nn.Linear(2, 2), 1)


def test_count_parameters_gpt2_by_hand():
    h, v, p, n = HIDDEN, VOCAB, 64, 3
    model = tiny_causal_lm("gpt2", v, hidden=h, layers=n, heads=4, max_positions=p)
    per_layer = 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + (h * 4 * h + 4 * h) + (4 * h * h + h)
    # Token and position embeddings, n blocks, final layer norm; the output head is tied to the token embedding.
    assert count_parameters(model) == v * h + p * h + n * per_layer + 2 * h


def _small_llama_config():
    return {
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "eos_token_id": 0,
    }


def test_model_from_config_dict_json_and_folder(tmp_path):
    config = _small_llama_config()
    model = model_from_config(config, seed=5)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == VOCAB
    h, i, kv = HIDDEN, 64, 2 * (HIDDEN // 4)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h  # q, o, k, v, gate/up/down, two RMS norms
    assert count_parameters(model) == VOCAB * h * 2 + 2 * per_layer + h  # untied embed + head, final norm

    (tmp_path / "config.json").write_text(json.dumps(config))
    from_file = model_from_config(tmp_path / "config.json", seed=5)
    from_folder = model_from_config(tmp_path, seed=5)
    other_seed = model_from_config(config, seed=6)
    ref = model.state_dict()
    assert all(torch.equal(from_file.state_dict()[k], ref[k]) for k in ref)
    assert all(torch.equal(from_folder.state_dict()[k], ref[k]) for k in ref)
    assert not torch.equal(other_seed.state_dict()["model.embed_tokens.weight"], ref["model.embed_tokens.weight"])


def test_model_from_config_errors(tmp_path):
    with pytest.raises(StudentConfigError, match="no 'model_type'"):
        model_from_config({"hidden_size": 8})
    with pytest.raises(StudentConfigError, match="not-a-model"):
        model_from_config({"model_type": "not-a-model"})
    with pytest.raises(StudentConfigError, match="does not exist"):
        model_from_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(StudentConfigError, match="line 2"):
        model_from_config(bad)
