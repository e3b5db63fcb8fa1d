"""Tokenisation and collation with a real (offline, self-trained) byte-level BPE tokenizer where pad == eos."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from switch_core.data.prompts import format_prompt, prompt_ends
from switch_core.data.records import InstructionRecord
from switch_core.data.tokenize import (
    EmptyExampleError,
    TrainExample,
    collate_train,
    count_truncated,
    encode_prompt,
    left_pad,
    shift_labels,
    tokenize_example,
    tokenize_prompt,
)

CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nName three colours.\n\n### Response:\nRed, green and blue.",
    "The quick brown fox jumps over the lazy dog.",
    "Count from 1 to 10: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
]
PROMPT = "### Instruction:\nName three colours.\n\n### Response:\n"
RESPONSE = "Red, green and blue."


def _build(add_bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<eos>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>", bos_token="<bos>")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style: no BOS added, pad == eos."""
    tok = _build(add_bos=False)
    assert tok.pad_token_id == tok.eos_token_id
    return tok


@pytest.fixture(scope="module")
def bos_tokenizer() -> PreTrainedTokenizerFast:
    """Llama style: BOS added by the post-processor, pad == eos."""
    return _build(add_bos=True)


def _encode(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_example_layout_keeps_eos_label_when_pad_is_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    example = tokenize_example("r1", PROMPT, RESPONSE, tokenizer, max_length=512, max_prompt_length=256)
    prompt_ids, response_ids, eos = _encode(tokenizer, PROMPT), _encode(tokenizer, RESPONSE), tokenizer.eos_token_id
    assert example.input_ids == prompt_ids + response_ids + [eos]
    assert example.labels == [-100] * len(prompt_ids) + response_ids + [eos]
    assert example.prompt_length == len(prompt_ids) and example.response_truncated is False
    assert example.prompt_ids == prompt_ids and example.response_ids == response_ids + [eos]
    assert all(type(i) is int for i in example.input_ids + example.labels)
    assert tokenizer.decode(example.input_ids) == PROMPT + RESPONSE + "<eos>"

    short = tokenize_example("r2", "### Instruction:\n", "Red.", tokenizer, max_length=512, max_prompt_length=256)
    batch = collate_train([example, short], pad_token_id=tokenizer.pad_token_id)
    n_long, n_short = len(example.input_ids), len(short.input_ids)
    assert batch["labels"].shape == (2, n_long) and batch["labels"].dtype == torch.long
    # the EOS label (id == pad id) survives collation; only positions after it are -100
    assert batch["labels"][1, n_short - 1].item() == eos == tokenizer.pad_token_id
    assert batch["labels"][1, n_short:].tolist() == [-100] * (n_long - n_short)
    assert batch["input_ids"][1, n_short:].tolist() == [eos] * (n_long - n_short)
    assert batch["attention_mask"].tolist() == [[1] * n_long, [1] * n_short + [0] * (n_long - n_short)]
    assert (batch["labels"] == eos).sum().item() == 2


def test_bos_added_to_prompt_only(bos_tokenizer: PreTrainedTokenizerFast) -> None:
    bos = bos_tokenizer.bos_token_id
    example = tokenize_example("r1", PROMPT, RESPONSE, bos_tokenizer, max_length=512, max_prompt_length=256)
    assert example.input_ids[0] == bos
    assert example.input_ids.count(bos) == 1
    assert example.input_ids[1 : example.prompt_length] == _encode(bos_tokenizer, PROMPT)
    # a chat-template prompt that already renders BOS does not get a second one
    chat_prompt = "<bos>" + PROMPT
    ids = tokenize_prompt(chat_prompt, bos_tokenizer, max_prompt_length=256)
    assert ids == [bos] + _encode(bos_tokenizer, PROMPT)


def test_prompt_truncation_keeps_the_response_marker(bos_tokenizer: PreTrainedTokenizerFast) -> None:
    """A long prompt is cut inside the instruction; its closing "### Response:" line survives (issue: the head was
    kept, so the model was asked to continue the instruction instead of answering)."""
    marker = "\n\n### Response:\n"
    tail = _encode(bos_tokenizer, marker)
    body = [bos_tokenizer.bos_token_id] + _encode(bos_tokenizer, PROMPT[: -len(marker)])
    limit = len(tail) + 3
    assert len(body) + len(tail) > limit
    example = tokenize_example("r1", PROMPT, RESPONSE, bos_tokenizer, max_length=40, max_prompt_length=limit)
    assert example.prompt_ids == body[:3] + tail
    assert example.labels[:limit] == [-100] * limit and example.prompt_truncated is True
    assert bos_tokenizer.decode(example.prompt_ids, skip_special_tokens=True).endswith("### Response:\n")
    fits = tokenize_example("r2", PROMPT, RESPONSE, bos_tokenizer, max_length=80, max_prompt_length=64)
    assert fits.prompt_ids == [bos_tokenizer.bos_token_id] + _encode(bos_tokenizer, PROMPT)
    assert fits.prompt_truncated is False
    assert count_truncated([example, fits]) == {"examples": 2, "prompts_truncated": 1, "responses_truncated": 0}


def test_prompt_truncation_cuts_instruction_and_input_and_keeps_the_template(tokenizer: PreTrainedTokenizerFast) -> None:
    """MiniLLM template with input: the template's text stays whole; instruction and input each keep their head,
    neither pushes the other out."""
    record = InstructionRecord(id="r", instruction="Count from 1 to 10: 1, 2, 3, 4, 5. " * 10, references=("x",),
                               input="The quick brown fox jumps over the lazy dog. " * 20)
    prompt = format_prompt(record)
    preamble = prompt[: prompt.index("### Instruction:\n") + len("### Instruction:\n")]
    fixed = [_encode(tokenizer, t) for t in (preamble, "\n\n### Input:\n", "\n\n### Response:\n")]
    instruction, given = _encode(tokenizer, record.instruction), _encode(tokenizer, record.input)
    limit = sum(map(len, fixed)) + 41
    assert len(instruction) > 21 and len(given) > 21
    encoded = encode_prompt(prompt, tokenizer, max_prompt_length=limit)
    assert encoded.truncated and encoded.ids == (
        fixed[0] + instruction[:20] + fixed[1] + given[:21] + fixed[2]  # 41 = 20 + 21: the longer part gets the odd token
    )
    short = InstructionRecord(id="s", instruction="Name three colours.", references=("x",), input=record.input)
    kept = encode_prompt(format_prompt(short), tokenizer, max_prompt_length=limit)
    short_instruction = _encode(tokenizer, short.instruction)
    assert kept.ids == fixed[0] + short_instruction + fixed[1] + given[: 41 - len(short_instruction)] + fixed[2]


def test_prompt_truncation_keeps_the_chat_template_end(tokenizer: PreTrainedTokenizerFast) -> None:
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    record = InstructionRecord(id="r", instruction="Count from 1 to 10. " * 30, references=("x",))
    prompt = format_prompt(record, style="chat_template", tokenizer=chat)
    end = "<eos>\n<|assistant|>\n"
    assert prompt_ends(chat)[0] == end and prompt.endswith(end)
    tail = _encode(chat, end)
    assert tail[0] == chat.eos_token_id  # the end of the user turn is a special token, kept as one
    encoded = encode_prompt(prompt, chat, max_prompt_length=40)
    assert encoded.ids == _encode(chat, prompt[: -len(end)])[: 40 - len(tail)] + tail and encoded.truncated


def test_prompt_end_longer_than_the_limit_is_an_error(tokenizer: PreTrainedTokenizerFast) -> None:
    n_tail = len(_encode(tokenizer, "\n\n### Response:\n"))
    with pytest.raises(EmptyExampleError, match=r"example 'r': the prompt is empty .*fixed text \(\d+ tokens.*"
                                                r"raise data.max_prompt_length"):
        encode_prompt(PROMPT, tokenizer, max_prompt_length=n_tail, record_id="r")


def test_response_truncated_to_max_length_with_eos_last(tokenizer: PreTrainedTokenizerFast) -> None:
    prompt_ids, response_ids = _encode(tokenizer, PROMPT), _encode(tokenizer, RESPONSE)
    max_length = len(prompt_ids) + 3 + 1  # room for 3 response tokens + EOS
    assert len(response_ids) > 3
    example = tokenize_example("r1", PROMPT, RESPONSE, tokenizer, max_length=max_length, max_prompt_length=256)
    assert len(example.input_ids) == max_length
    assert example.input_ids == prompt_ids + response_ids[:3] + [tokenizer.eos_token_id]
    assert example.labels[-1] == tokenizer.eos_token_id
    assert example.response_truncated is True


def test_empty_prompt_and_response_are_errors_naming_the_id(
    tokenizer: PreTrainedTokenizerFast, bos_tokenizer: PreTrainedTokenizerFast
) -> None:
    with pytest.raises(EmptyExampleError, match="example 'id-7': the prompt is empty") as info:
        tokenize_example("id-7", "", RESPONSE, tokenizer, max_length=64, max_prompt_length=32)
    assert info.value.record_id == "id-7"
    # truncation to one token keeps only BOS: no prompt content left
    with pytest.raises(EmptyExampleError, match="example 'id-8': the prompt is empty"):
        tokenize_example("id-8", PROMPT, RESPONSE, bos_tokenizer, max_length=64, max_prompt_length=1)
    with pytest.raises(EmptyExampleError, match="example 'id-9': the response is empty"):
        tokenize_example("id-9", PROMPT, "", tokenizer, max_length=64, max_prompt_length=32)
    n_prompt = len(_encode(tokenizer, PROMPT))
    with pytest.raises(EmptyExampleError, match="example 'id-10': no room for a response token"):
        tokenize_example("id-10", PROMPT, RESPONSE, tokenizer, max_length=n_prompt + 1, max_prompt_length=256)
    # one token of room is enough
    ok = tokenize_example("id-11", PROMPT, RESPONSE, tokenizer, max_length=n_prompt + 2, max_prompt_length=256)
    assert ok.labels[-2:] == [_encode(tokenizer, RESPONSE)[0], tokenizer.eos_token_id]


def test_argument_errors(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="max_prompt_length must be >= 1"):
        tokenize_prompt(PROMPT, tokenizer, max_prompt_length=0)
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        tokenize_example("a", PROMPT, RESPONSE, tokenizer, max_length=1, max_prompt_length=1)
    with pytest.raises(ValueError, match="at least one example"):
        collate_train([], pad_token_id=0)
    with pytest.raises(ValueError, match="at least one sequence"):
        left_pad([], pad_token_id=0)
    with pytest.raises(EmptyExampleError, match="sequence 1 is empty"):
        left_pad([[1], []], pad_token_id=0)


def test_left_pad_and_large_ids_keep_long_dtype() -> None:
    input_ids, attention_mask = left_pad([[5, 6, 7], [70000], [151_000, 65535]], pad_token_id=2)
    assert input_ids.dtype == torch.long and attention_mask.dtype == torch.long
    assert input_ids.tolist() == [[5, 6, 7], [2, 2, 70000], [2, 151_000, 65535]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    example = TrainExample(id="big", input_ids=[1, 151_000, 70000], labels=[-100, 151_000, 70000], prompt_length=1)
    batch = collate_train([example], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 151_000, 70000]]
    assert batch["labels"].tolist() == [[-100, 151_000, 70000]]


def test_shift_labels_matches_naive_next_token_loss() -> None:
    labels = torch.tensor([[-100, -100, 4, 5, 2], [-100, 3, 2, -100, -100]])
    assert shift_labels(labels).tolist() == [[-100, 4, 5, 2, -100], [3, 2, -100, -100, -100]]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), shift_labels(labels).flatten(), ignore_index=-100)
    # naive: position t predicts token t + 1, summed over labelled targets
    log_probs = torch.log_softmax(logits, dim=-1)
    terms = [-log_probs[b, t, labels[b, t + 1]].item() for b in range(2) for t in range(4) if labels[b, t + 1] != -100]
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    with pytest.raises(ValueError, match="must be \\[batch, length\\]"):
        shift_labels(labels[0])


def test_labels_follow_hf_convention(tokenizer: PreTrainedTokenizerFast) -> None:
    """Labels aligned with input_ids give the same loss as the HF model's internal shift."""
    examples = [
        tokenize_example("a", PROMPT, RESPONSE, tokenizer, max_length=64, max_prompt_length=32),
        tokenize_example("b", "### Instruction:\n", "Red.", tokenizer, max_length=64, max_prompt_length=32),
    ]
    batch = collate_train(examples, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        ours = torch.nn.functional.cross_entropy(
            out.logits.float().flatten(0, 1), shift_labels(batch["labels"]).flatten(), ignore_index=-100
        )
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)


@pytest.mark.parametrize(("rank", "said"), [("0", True), ("1", False)])
def test_cut_prompts_are_reported_once_over_ranks(tokenizer, tmp_path, monkeypatch, capsys, rank, said) -> None:
    """``load_examples`` says how many prompts were cut, on the main rank only (each rank loads the same split)."""
    from switch_core.config import DataConfig
    from switch_core.data.splits import write_records
    from switch_core.training.examples import load_examples

    long_input = " ".join(["colour"] * 400)
    path = write_records([InstructionRecord(id="r1", instruction="Name three colours.", input=long_input,
                                            references=["Red."])], tmp_path / "train.jsonl")
    monkeypatch.setenv("RANK", rank)
    examples = load_examples(path, tokenizer, DataConfig(max_length=512, max_prompt_length=256))
    assert examples[0].prompt_truncated
    assert ("data: 1 of 1 prompts in train.jsonl are longer than" in capsys.readouterr().err) is said
