"""The switch-kd command line: stage commands on the tiny preset, and clear errors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from switch_core.cli import help_text, main
from switch_core.models.loading import load_causal_lm, load_tokenizer
from switch_core.models.tiny import build_tokenizer, write_tiny_checkpoint


def _stage(tmp_path, *argv: str) -> int:
    return main([*argv, "--preset", "tiny", "--set", f"run_dir={tmp_path}"])


def test_show_config_prints_one_key(capsys):
    assert main(["show-config", "--params", "params.yaml", "--key", "rollout.decay"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"rollout.decay": 0.1}


def test_config_typo_is_one_message_and_exit_2(capsys):
    assert main(["show-config", "--set", "rollout.tua0=0.2"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "rollout.tua0" in err and "did you mean 'tau0'" in err
    assert "Traceback" not in err and "--debug" not in err  # the message is the whole story


def test_other_errors_say_where_the_traceback_is(tmp_path, capsys):
    assert main(["results-doc", "--set", f"run_dir={tmp_path / 'none'}", "--out", str(tmp_path / "R.md")]) == 2
    err = capsys.readouterr().err
    assert "error: no run outputs in" in err and "(switch-kd --debug results-doc ... or SWITCHKD_DEBUG=1" in err


def test_data_teacher_student_stages_on_tiny_preset(tmp_path):
    assert _stage(tmp_path, "prepare-data") == 0
    report = json.loads((tmp_path / "data" / "data_report.json").read_text())
    assert report["splits"] == {"train": 80, "dev": 8, "test": 8}
    assert _stage(tmp_path, "setup-teacher") == 0
    assert _stage(tmp_path, "build-student") == 0
    teacher = load_causal_lm(tmp_path / "models" / "teacher-base")
    student = load_causal_lm(tmp_path / "models" / "student-init")
    assert student.config.vocab_size == teacher.config.vocab_size
    assert student.config.num_hidden_layers == 1 and teacher.config.num_hidden_layers == 2
    assert load_tokenizer(tmp_path / "models" / "student-init").get_vocab() == load_tokenizer(
        tmp_path / "models" / "teacher-base"
    ).get_vocab()


def test_build_student_keeps_the_teacher_layers_of_highest_block_influence(tmp_path, capsys):
    import torch

    from switch_core.config import load_config
    from switch_core.data.splits import read_records
    from switch_core.data.tokenize import collate_train, tokenize_records
    from switch_core.models.student import block_influence, prune_layers, top_influence_layers

    assert _stage(tmp_path, "prepare-data") == 0
    assert _stage(tmp_path, "setup-teacher", "--set", "teacher.tiny.layers=5") == 0
    choice = ["--set", "student.init=prune", "--set", "student.keep_layers=3", "--set",
              "student.layer_selection=block_influence", "--set", "student.selection_examples=6"]
    assert _stage(tmp_path, "build-student", *choice) == 0
    record = json.loads((tmp_path / "models" / "student-init" / "layer_selection.json").read_text())
    teacher = load_causal_lm(tmp_path / "models" / "teacher-base")
    tokenizer = load_tokenizer(tmp_path / "models" / "teacher-base")
    data = load_config(None, preset="tiny").data
    batch = collate_train(tokenize_records(read_records(tmp_path / "data" / "train.jsonl")[:6], tokenizer, data),
                          tokenizer.pad_token_id)
    influence = block_influence(teacher, batch["input_ids"], batch["attention_mask"])
    assert record["examples"] == 6 and record["tokens"] == int(batch["attention_mask"].sum())
    assert record["block_influence"] == pytest.approx(influence.tolist(), abs=1e-9)
    assert record["kept_layers"] == top_influence_layers(influence, 3) and len(record["kept_layers"]) == 3
    assert f"kept layers (highest block influence, 6 train examples, {record['tokens']} tokens): " \
        f"{record['kept_layers']}" in capsys.readouterr().out
    student = load_causal_lm(tmp_path / "models" / "student-init")
    expected = prune_layers(teacher, record["kept_layers"]).state_dict()
    assert student.config.num_hidden_layers == 3 and student.state_dict().keys() == expected.keys()
    assert all(torch.equal(student.state_dict()[k], v) for k, v in expected.items())


def test_student_with_another_vocabulary_is_refused(tmp_path, capsys):
    assert _stage(tmp_path, "prepare-data") == 0
    assert _stage(tmp_path, "setup-teacher") == 0
    other = build_tokenizer(["a completely different corpus for another tokenizer"] * 4, vocab_size=300)
    write_tiny_checkpoint(tmp_path / "other", "gpt2", other, hidden=32, layers=1, heads=2)
    code = _stage(tmp_path, "build-student", "--set", "student.init=hf", "--set", f"student.name_or_path={tmp_path / 'other'}")
    assert code == 2
    err = capsys.readouterr().err
    assert "config.vocab_size differs" in err and "384" in err
    assert not (tmp_path / "models" / "student-init").exists()


def test_malformed_training_file_names_file_line_and_field(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    code = main(["prepare-data", "--set", f"run_dir={tmp_path}", "--set", "data.source=minillm",
                 "--set", f"data.path={data}", "--set", "data.dev_size=1", "--set", "data.test_size=0"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(data) in err and "2" in err and "output" in err


@pytest.mark.parametrize("argv", [["--help"], ["distill", "--help"]])
def test_help_works(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["distill", "sft"])
def test_training_help_names_the_multi_process_relaunch(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert f'SWITCHKD_ACCELERATE_ARGS="--multi_gpu --num_processes 2" switch-kd {command}' in " ".join(out.split())


def test_help_text_turns_sphinx_markup_into_plain_text(capsys):
    assert help_text("see :mod:`switch_core.reporting.results_md` and :class:`~switch_core.config.Config`") == (
        "see switch_core.reporting.results_md and Config")
    assert help_text("  ``--resume`` continues\n") == "`--resume` continues"
    with pytest.raises(SystemExit):
        main(["results-doc", "--help"])
    out = capsys.readouterr().out
    assert "see switch_core.reporting.results_md)" in out and "``" not in out and ":mod:" not in out


def test_commands_do_not_import_each_other():
    """A command module imports shared helpers from modules that are not commands (issue 13), never another
    command's module: commands stay independent front ends."""
    import ast

    from switch_core.cli import COMMANDS

    commands = {f"switch_core.commands.{module}" for _, module, _ in COMMANDS}
    found = []
    for _, module, _ in COMMANDS:
        path = Path(__file__).resolve().parents[1] / "switch_core" / "commands" / f"{module}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in commands:
                found.append(f"{module} imports {node.module}")
            if isinstance(node, ast.ImportFrom) and node.module == "switch_core.commands":
                found += [f"{module} imports {alias.name}" for alias in node.names]
    assert found == []


def test_an_interrupted_command_says_what_a_rerun_does() -> None:
    """Commands that write only at the end do not promise to continue (issue 17: Ctrl-C advice must be true)."""
    import argparse

    from switch_core.cli import interrupt_note
    from switch_core.commands import evaluate, rollout

    note = interrupt_note(argparse.Namespace(_module=rollout), "switch-kd rollout --out o.jsonl")
    assert note == "nothing is written before the end: `switch-kd rollout --out o.jsonl` starts over"
    assert "continues after it" in interrupt_note(argparse.Namespace(_module=evaluate), "switch-kd evaluate")


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(monkeypatch, capsys) -> None:
    """Ctrl-C while a command's module (torch, transformers) is being imported: no traceback."""
    from switch_core import cli

    def interrupted(name: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert main(["evaluate", "--model", "m", "--out", "o"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "switch-kd: interrupted during start-up; nothing was done\n" and captured.out == ""


def test_importing_the_cli_loads_no_heavy_library() -> None:
    """What the console script imports before main() runs is the standard library only, so Ctrl-C there cannot land
    in torch's or transformers' imports (where main() could not catch it)."""
    import subprocess
    import sys

    code = "import sys, switch_core.cli; print([m for m in ('torch', 'transformers', 'pydantic') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
