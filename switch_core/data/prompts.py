"""Prompt formatting: the MiniLLM template (docs/METHOD.md §5.2) by default, the tokenizer's chat template as an option.

The response is appended to the prompt directly, with no separator (docs/METHOD.md §5.2); tokenisation and the EOS token
are handled by :mod:`switch_core.data.tokenize`, whose truncation keeps the format's end (:func:`prompt_ends`).
"""

from __future__ import annotations

from typing import Any, Literal

from switch_core.data.records import InstructionRecord

PromptStyle = Literal["minillm", "chat_template"]

MINILLM_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
"""MiniLLM ``tools/process_data_dolly.py`` template for records without input (docs/METHOD.md §5.2)."""

MINILLM_TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
"""MiniLLM ``tools/process_data_dolly.py`` template for records with a non-empty input (docs/METHOD.md §5.2)."""


MINILLM_RESPONSE_MARKER = "\n\n### Response:\n"
"""The end of both MiniLLM templates: the line after which the model writes its answer."""

MINILLM_INSTRUCTION_MARKER = "### Instruction:\n"
"""The header before the instruction in both MiniLLM templates."""

MINILLM_INPUT_MARKER = "\n\n### Input:\n"
"""The header between the instruction and the input in the MiniLLM template with input."""

_PROBE = "\u2063switch-kd-probe\u2063"
"""A user message no chat template alters, to find what a template renders after the user's text."""


class PromptFormatError(ValueError):
    """A prompt cannot be built: unknown style, or the chat-template style without a usable tokenizer."""


def minillm_prompt(instruction: str, input_text: str = "") -> str:
    """Fill the MiniLLM template: the with-input variant when ``input_text`` is non-empty (``len > 0``, as MiniLLM)."""
    if len(input_text) == 0:
        return MINILLM_TEMPLATE_NO_INPUT.format(instruction=instruction)
    return MINILLM_TEMPLATE_WITH_INPUT.format(instruction=instruction, input=input_text)


def chat_user_message(record: InstructionRecord) -> str:
    """The user turn for the chat-template style: the instruction, then a blank line and the input if there is one."""
    return _user_message(record.instruction, record.input)


def _user_message(instruction: str, input_text: str) -> str:
    return instruction if len(input_text) == 0 else f"{instruction}\n\n{input_text}"


def format_prompt(record: InstructionRecord, *, style: PromptStyle = "minillm", tokenizer: Any = None) -> str:
    """The prompt text for one record.

    Args:
        record: the example.
        style: ``"minillm"``: ``record.prompt`` when the benchmark file carries one (so evaluation uses exactly the
            benchmark's prompt), else the MiniLLM template (docs/METHOD.md §5.2). ``"chat_template"``: one user message
            (:func:`chat_user_message`) rendered with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``;
            ``record.prompt`` is not used.
        tokenizer: a Hugging Face tokenizer with a ``chat_template``; required for ``style="chat_template"``.

    Returns:
        The prompt string; the response is to be appended directly.

    Raises:
        PromptFormatError: unknown ``style``; ``style="chat_template"`` without a tokenizer, or with a tokenizer
            that has no chat template (use ``style="minillm"`` or a tokenizer that ships one).
    """
    if style == "minillm" and record.prompt is not None:
        return record.prompt
    return instruction_prompt(record.instruction, record.input, style=style, tokenizer=tokenizer)


def instruction_prompt(
    instruction: str, input_text: str = "", *, style: PromptStyle = "minillm", tokenizer: Any = None
) -> str:
    """The prompt text of an instruction and its optional input, built in ``style`` (:func:`format_prompt` without a
    pre-formatted prompt: the MiniLLM template, or the chat-template user turn of :func:`chat_user_message`).

    Raises:
        PromptFormatError: as :func:`format_prompt`.
    """
    if style == "minillm":
        return minillm_prompt(instruction, input_text)
    if style != "chat_template":
        raise PromptFormatError(f"unknown prompt style {style!r}; use 'minillm' or 'chat_template'")
    if tokenizer is None:
        raise PromptFormatError("prompt style 'chat_template' needs a tokenizer; pass tokenizer=...")
    if not getattr(tokenizer, "chat_template", None):
        raise PromptFormatError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat template; "
            "use prompt style 'minillm' or an instruct tokenizer that ships a chat template"
        )
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _user_message(instruction, input_text)}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str):
        raise PromptFormatError(f"apply_chat_template returned {type(rendered).__name__}, expected str")
    return rendered


def prompt_ends(tokenizer: Any = None) -> tuple[str, ...]:
    """The closing parts of the prompt formats, longest first: what follows the instruction/input text in a prompt
    and must survive truncation (the model answers after it).

    They are the MiniLLM response marker (:data:`MINILLM_RESPONSE_MARKER`) and, when ``tokenizer`` has a chat
    template, what its template renders after the user's message (the end of the user turn and the assistant header,
    e.g. ``"<|im_end|>\\n<|im_start|>assistant\\n"``).
    """
    ends = {MINILLM_RESPONSE_MARKER}
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _PROBE}], tokenize=False, add_generation_prompt=True
        )
        if isinstance(rendered, str) and _PROBE in rendered:
            ends.add(rendered.rsplit(_PROBE, 1)[1])
    return tuple(sorted((e for e in ends if e), key=len, reverse=True))
