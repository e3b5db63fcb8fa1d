"""Prompt formatting: MiniLLM template strings (docs/METHOD.md §5.2), benchmark prompt reuse, chat-template option."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from switch_core.data.prompts import PromptFormatError, chat_user_message, format_prompt
from switch_core.data.records import InstructionRecord

# Written out by hand from docs/METHOD.md §5.2, independently of the module's constants.
EXPECTED_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nName a colour.\n\n### Response:\n"
)
EXPECTED_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\nSummarise.\n\n### Input:\n"
    "The sky is blue.\n\n### Response:\n"
)


def _word_tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


def test_minillm_templates_match_method_spec() -> None:
    no_input = InstructionRecord(id="a", instruction="Name a colour.", references=("red",))
    with_input = InstructionRecord(id="b", instruction="Summarise.", references=("blue",), input="The sky is blue.")
    assert format_prompt(no_input) == EXPECTED_NO_INPUT
    assert format_prompt(with_input, style="minillm") == EXPECTED_WITH_INPUT


def test_benchmark_prompt_is_used_verbatim() -> None:
    record = InstructionRecord(id="a", instruction="Name a colour.", references=("red",), prompt="exact\nprompt\n")
    assert format_prompt(record) == "exact\nprompt\n"


def test_chat_template_style_renders_user_turn() -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer = _word_tokenizer(template)
    record = InstructionRecord(
        id="b", instruction="Summarise.", references=("blue",), input="The sky is blue.", prompt="ignored"
    )
    assert chat_user_message(record) == "Summarise.\n\nThe sky is blue."
    assert format_prompt(record, style="chat_template", tokenizer=tokenizer) == (
        "<s><|user|>Summarise.\n\nThe sky is blue.\n<|assistant|>"
    )


def test_chat_template_errors() -> None:
    record = InstructionRecord(id="a", instruction="Name a colour.", references=("red",))
    with pytest.raises(PromptFormatError, match="needs a tokenizer"):
        format_prompt(record, style="chat_template")
    with pytest.raises(PromptFormatError, match="has no chat template"):
        format_prompt(record, style="chat_template", tokenizer=_word_tokenizer(None))
    with pytest.raises(PromptFormatError, match="unknown prompt style 'alpaca'"):
        format_prompt(record, style="alpaca")  # type: ignore[arg-type]
