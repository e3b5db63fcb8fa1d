"""The ``rollout`` and ``calibrate`` command modules, driven through a tiny argparse harness on tiny checkpoints."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from switch_core.commands import calibrate as calibrate_command
from switch_core.commands import rollout as rollout_command
from switch_core.commands.rollout_inputs import (
    OptionError,
    PromptFileError,
    ignored_options,
    precision,
    read_prompts,
    rollout_config,
)
from switch_core.data.prompts import PromptFormatError
from switch_core.data.records import InstructionRecord
from switch_core.data.splits import write_records
from switch_core.data.tokenize import EmptyExampleError, tokenize_prompt
from switch_core.models.checkpoint import save_pretrained_atomic
from switch_core.models.loading import load_tokenizer
from switch_core.models.tiny import build_tokenizer

CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nName three colours.\n\n### Response:\nRed, green and blue.",
    "The quick brown fox jumps over the lazy dog. Lorem ipsum dolor sit amet.",
]
PROMPTS = [
    "### Instruction:\nName three colours.\n\n### Response:\n",
    "Hi",
    "Below is an instruction that describes a task. Write a response.\n\n### Response:\n",
    "The quick brown fox",
    "A",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    tokenizer = build_tokenizer(CORPUS, vocab_size=300)
    folders = []
    for name, hidden, layers, seed in (("teacher", 48, 2, 1), ("student", 32, 1, 2)):
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=2, n_positions=512,
                            initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        torch.manual_seed(seed)  # a wide initialisation gives peaked, varied next-token distributions
        model = AutoModelForCausalLM.from_config(config).eval()
        folders.append(save_pretrained_atomic(model, tokenizer, root / name))
    return folders[0], folders[1]


def _prompts_file(folder: Path, prompts: list[str]) -> Path:
    path = folder / "prompts.jsonl"
    lines = [json.dumps({"id": i, "prompt": text, "output": "ignored"}) for i, text in enumerate(prompts)]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")
    return path


def _run(module: ModuleType, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_rollout_writes_one_row_per_prompt_in_input_order(
    checkpoints: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, student = checkpoints
    prompts = _prompts_file(tmp_path, PROMPTS)
    common = ["--teacher", str(teacher), "--student", str(student), "--prompts", str(prompts), "--tau0", "0.6",
              "--decay", "0.2", "--max-new-tokens", "9", "--greedy"]
    assert _run(rollout_command, [*common, "--batch-size", "2", "--out", str(tmp_path / "a.jsonl")]) == 0
    assert "5 rollouts" in capsys.readouterr().out
    assert _run(rollout_command, [*common, "--batch-size", "1", "--out", str(tmp_path / "b.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    for row, alone in zip(rows, single, strict=True):  # batch composition and order do not change the result
        exact = [k for k in row if k != "divergence"]
        assert [row[k] for k in exact] == [alone[k] for k in exact]
        assert row["divergence"] == pytest.approx(alone["divergence"], abs=1e-5)
    sources = [s for row in rows for s in row["sources"]]
    assert "teacher" in sources and "student" in sources
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "prompts.jsonl"]  # no temp files

    tokenizer = load_tokenizer(teacher)
    assert [r["prompt"] for r in rows] == PROMPTS
    for row, text in zip(rows, PROMPTS, strict=True):
        assert set(row) == {"prompt", "prompt_token_ids", "token_ids", "sources", "divergence", "threshold", "text"}
        assert row["prompt_token_ids"] == tokenize_prompt(text, tokenizer, max_prompt_length=256)
        n = len(row["token_ids"])
        assert 1 <= n <= 9 and len(row["sources"]) == len(row["divergence"]) == len(row["threshold"]) == n
        assert n == 9 or row["token_ids"][-1] == tokenizer.eos_token_id
        assert set(row["sources"]) <= {"student", "teacher"}
        assert all(0 <= d <= math.log(2) + 1e-6 for d in row["divergence"])
        assert row["threshold"] == pytest.approx([0.6 * math.exp(-0.2 * t) for t in range(n)], rel=1e-6)
        assert row["text"] == tokenizer.decode(row["token_ids"], skip_special_tokens=True)
        for d, tau, source in zip(row["divergence"], row["threshold"], row["sources"], strict=True):
            assert (source == "teacher") == (d > tau) or abs(d - tau) < 1e-6


def test_rollout_sampling_is_seeded_and_truncates_prompts(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, student = checkpoints
    prompts = _prompts_file(tmp_path, PROMPTS)
    args = ["--teacher", str(teacher), "--student", str(student), "--prompts", str(prompts), "--strategy", "random",
            "--random-rate", "0.5", "--max-new-tokens", "6", "--max-prompt-length", "10", "--top-p", "0.9"]
    outputs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        _run(rollout_command, [*args, "--seed", seed, "--out", str(tmp_path / f"{name}.jsonl")])
        outputs.append([json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()])
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]
    assert all(len(r["prompt_token_ids"]) <= 10 for r in outputs[0])  # the response marker kept within the 10


@pytest.mark.parametrize("options", [["--strategy", "adaswitch", "--adaswitch-window", "3", "--adaswitch-k", "1.1"],
                                     ["--strategy", "skd", "--skd-top-k", "5"]], ids=["adaswitch", "skd"])
def test_rollout_peer_strategies(checkpoints: tuple[Path, Path], tmp_path: Path, options: list[str]) -> None:
    teacher, student = checkpoints
    prompts = _prompts_file(tmp_path, PROMPTS)
    out = tmp_path / "peer.jsonl"
    _run(rollout_command, ["--teacher", str(teacher), "--student", str(student), "--prompts", str(prompts),
                           "--max-new-tokens", "8", "--seed", "3", *options, "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(PROMPTS) and all(len(r["sources"]) == len(r["token_ids"]) > 0 for r in rows)
    if options[1] == "adaswitch":  # one switch per row: student tokens, then teacher tokens to the end
        for row in rows:
            sources = row["sources"]
            assert sources == sorted(sources, key=lambda s: s == "teacher")


def test_rollout_names_the_bad_line(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, student = checkpoints
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"text": "neither prompt nor instruction"}\n', encoding="utf-8")
    argv = ["--teacher", str(teacher), "--student", str(student), "--prompts", str(path), "--out", str(tmp_path / "o")]
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:3: .*'prompt'.*'instruction'.*\['text'\]"):
        _run(rollout_command, argv)
    path.write_text('{"prompt": null, "instruction": "  "}\n', encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:1: .*non-empty string 'instruction'"):
        _run(rollout_command, argv)
    path.write_text('{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:1: field 'prompt' must be a string .* got int"):
        _run(rollout_command, argv)
    path.write_text('{"prompt": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:2: not valid JSON"):
        _run(rollout_command, argv)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match="holds no prompts"):
        _run(rollout_command, argv)
    path.write_text('{"prompt": "ok"}\n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(EmptyExampleError, match=r"prompts.jsonl:2.*empty"):
        _run(rollout_command, argv)
    path.write_text('{"prompt": "ok"}\n', encoding="utf-8")
    with pytest.raises(OptionError, match="--batch-size 0"):
        _run(rollout_command, [*argv, "--batch-size", "0"])
    with pytest.raises(OptionError, match="--max-prompts 0"):
        _run(calibrate_command, [*argv[:-2], "--max-prompts", "0"])
    assert not (tmp_path / "o").exists()


def test_calibrate_prints_and_writes_the_result(
    checkpoints: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, student = checkpoints
    prompts = _prompts_file(tmp_path, PROMPTS)
    out = tmp_path / "calibration.json"
    argv = ["--teacher", str(teacher), "--student", str(student), "--prompts", str(prompts), "--target-share", "0.6",
            "--max-new-tokens", "8", "--max-evaluations", "3", "--max-prompts", "4", "--out", str(out)]
    assert _run(calibrate_command, argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert len(result["history"]) <= 3 and result["prompts"] == 4 and result["target_share"] == 0.6
    best = min(result["history"], key=lambda h: abs(h["share"] - 0.6))
    assert (result["tau0"], result["achieved_share"]) == (best["tau0"], best["share"])
    assert printed.count(": teacher share") == len(result["history"])  # one line per try
    assert f"tau0 = {result['tau0']:.6g}" in printed
    missed = abs(result["achieved_share"] - 0.6) > 0.02  # the default tolerance: a miss is said, with its reason
    assert ("without reaching teacher share" in printed or "out of reach" in printed) == missed
    assert result["reason"] is None or result["reason"] in printed


def test_rollout_without_tau0_calibrates_it_as_the_calibrate_command_does(
    checkpoints: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, student = checkpoints
    prompts = _prompts_file(tmp_path, PROMPTS)
    common = ["--teacher", str(teacher), "--student", str(student), "--prompts", str(prompts), "--target-share", "0.6",
              "--max-new-tokens", "8", "--max-evaluations", "3", "--max-prompts", "4", "--decay", "0.2"]
    assert _run(calibrate_command, [*common, "--out", str(tmp_path / "calibration.json")]) == 0
    tau0 = json.loads((tmp_path / "calibration.json").read_text())["tau0"]
    capsys.readouterr()
    assert _run(rollout_command, [*common, "--out", str(tmp_path / "rollouts.jsonl")]) == 0
    assert f"calibrated tau0 = {tau0:.6g}" in capsys.readouterr().out
    for line in (tmp_path / "rollouts.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["threshold"] == pytest.approx([tau0 * math.exp(-0.2 * t) for t in range(len(row["token_ids"]))],
                                                 rel=1e-6)


def test_rollout_and_calibrate_read_the_runs_own_data_files(
    checkpoints: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``data/{train,dev}.jsonl`` rows (``prompt`` null, or absent) are formatted with the MiniLLM template; a row's
    own ``prompt`` is kept verbatim."""
    teacher, student = checkpoints
    records = [InstructionRecord(id="a", instruction="Name three colours.", references=("Red, green, blue.",)),
               InstructionRecord(id="b", instruction="Add them.", input="2 and 3", references=("5",)),
               InstructionRecord(id="c", instruction="x", references=("y",), prompt="A given prompt\n")]
    data = write_records(records, tmp_path / "dev.jsonl")
    assert json.loads(data.read_text().splitlines()[0])["prompt"] is None
    with data.open("a", encoding="utf-8") as handle:  # a hand-written row: no prompt field at all
        handle.write(json.dumps({"instruction": "Say hi."}) + "\n")
    no_input = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n{}\n\n### Response:\n")
    with_input = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                  "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd them.\n\n"
                  "### Input:\n2 and 3\n\n### Response:\n")
    expected = [no_input.format("Name three colours."), with_input, "A given prompt\n", no_input.format("Say hi.")]
    assert read_prompts(data) == expected
    common = ["--teacher", str(teacher), "--student", str(student), "--prompts", str(data), "--max-new-tokens", "4"]
    out = tmp_path / "rollouts.jsonl"
    assert _run(rollout_command, [*common, "--tau0", "0.3", "--out", str(out)]) == 0
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == expected
    assert _run(calibrate_command, [*common, "--max-evaluations", "1", "--max-prompts", "2"]) == 0
    assert "on 2 prompts" in capsys.readouterr().out
    with pytest.raises(PromptFormatError, match="has no chat template"):  # the tiny tokenizer has none
        _run(rollout_command, [*common, "--prompt-format", "chat_template", "--out", str(out)])


def _parsed(module: ModuleType, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(["--teacher", "t", "--student", "s", "--prompts", "p", "--out", "o", *argv])


@pytest.mark.parametrize(("argv", "expected"), [
    (["--engine", "lockstep", "--max-draft-tokens", "4"],
     ["--max-draft-tokens applies to --engine speculative only; ignored with --engine lockstep"]),
    (["--skd-top-k", "5", "--adaswitch-k", "3", "--random-rate", "0.1"],
     ["--skd-top-k applies to --strategy skd only; ignored with --strategy switch",
      "--adaswitch-k applies to --strategy adaswitch only; ignored with --strategy switch",
      "--random-rate applies to --strategy random only; ignored with --strategy switch"]),
    (["--strategy", "random", "--mixture-alpha", "0.5", "--adaswitch-window", "3"],
     ["--mixture-alpha applies to --strategy mixture only; ignored with --strategy random",
      "--adaswitch-window applies to --strategy adaswitch only; ignored with --strategy random"]),
    (["--strategy", "skd", "--skd-top-k", "5", "--max-draft-tokens", "8", "--tau0", "0.2"], []),
    (["--engine", "lockstep", "--strategy", "mixture", "--skd-top-k", "25"],  # the default value, but given
     ["--skd-top-k applies to --strategy skd only; ignored with --strategy mixture"]),
    (["--engine", "lockstep", "--strategy", "mixture"], []),  # defaults of other strategies are never named
], ids=["draft-lockstep", "three-peers", "mixture-under-random", "all-apply", "given-default", "defaults"])
def test_options_of_another_strategy_or_engine_are_named(argv: list[str], expected: list[str]) -> None:
    args = _parsed(rollout_command, argv)
    assert ignored_options(args, rollout_config(args)) == expected


def test_rollout_warns_about_an_ignored_option_and_still_runs(
    checkpoints: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, student = checkpoints
    prompts = _prompts_file(tmp_path, PROMPTS[:2])
    argv = ["--teacher", str(teacher), "--student", str(student), "--prompts", str(prompts), "--tau0", "0.3",
            "--max-new-tokens", "3", "--engine", "lockstep", "--max-draft-tokens", "4", "--out", str(tmp_path / "o")]
    assert _run(rollout_command, argv) == 0
    err = capsys.readouterr().err
    assert "switch-kd rollout: warning: --max-draft-tokens applies to --engine speculative only; ignored with " \
           "--engine lockstep\n" in err
    assert len((tmp_path / "o").read_text().splitlines()) == 2


def test_mixed_precision_decodes_under_the_autocast_of_a_run(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    """``--mixed-precision`` is declared by ``optim.mixed_precision`` (default ``no``): bf16 decodes under the
    bfloat16 autocast a run with that setting uses; the JSDs then differ from float32 at bfloat16 rounding level, and
    the calibration record names the precision."""
    assert _parsed(rollout_command, []).mixed_precision == "no"
    with precision(_parsed(calibrate_command, ["--mixed-precision", "bf16"])):
        assert (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")) == (True, torch.bfloat16)
    with pytest.raises(SystemExit):
        _parsed(rollout_command, ["--mixed-precision", "bfloat16"])
    teacher, student = checkpoints
    prompts = _prompts_file(tmp_path, PROMPTS)
    common = ["--teacher", str(teacher), "--student", str(student), "--prompts", str(prompts), "--tau0", "0.6",
              "--decay", "0.2", "--max-new-tokens", "6", "--greedy"]
    rows = {}
    for name in ("no", "bf16"):
        assert _run(rollout_command, [*common, "--mixed-precision", name, "--out", str(tmp_path / name)]) == 0
        rows[name] = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    assert [r["divergence"] for r in rows["no"]] != [r["divergence"] for r in rows["bf16"]]
    for float32, bf16 in zip(rows["no"], rows["bf16"], strict=True):
        same = [a == b for a, b in zip(float32["token_ids"], bf16["token_ids"])] + [False]
        agree = same.index(False)
        assert agree > 0 and bf16["divergence"][:agree] == pytest.approx(float32["divergence"][:agree], abs=5e-3)
    out = tmp_path / "calibration.json"
    argv = [*common[:6], "--max-new-tokens", "6", "--max-evaluations", "1", "--max-prompts", "2", "--out", str(out)]
    assert _run(calibrate_command, [*argv, "--mixed-precision", "bf16"]) == 0
    assert {k: json.loads(out.read_text())[k] for k in ("dtype", "mixed_precision")} == {
        "dtype": "float32", "mixed_precision": "bf16"}
