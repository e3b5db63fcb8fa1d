"""End-to-end evaluation with a tiny checkpoint: files, recomputation of the aggregates, resume, the CLI."""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from switch_core.config import Config
from switch_core.data.records import InstructionRecord
from switch_core.data.splits import write_records
from switch_core.evaluation.benchmarks import read_benchmark
from switch_core.evaluation.evaluate import EvalProtocol, EvaluationError, evaluate_model, median_length_window
from switch_core.evaluation.metrics import MetricInputError
from switch_core.models.tiny import build_tokenizer, write_tiny_checkpoint

REFERENCES = [
    "yes",
    "the answer is four",
    "a cat is a small animal that likes to sleep in the sun all day long",
    "one two three",
    "paris is the capital of france and its largest city with many museums and old bridges over the seine",
    "blue",
]
PROTOCOL = EvalProtocol(seeds=(1, 2), max_new_tokens=8, batch_size=4, length_bucket_edges=(3, 10))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    tokenizer = build_tokenizer(REFERENCES * 5 + ["### Instruction:\n### Response:\n question"] * 5, vocab_size=300)
    model = write_tiny_checkpoint(root / "models" / "tiny", "llama", tokenizer, hidden=32, layers=2, heads=2, seed=0)
    data = root / "data"
    rows = [
        {"instruction": f"question {i}", "input": "" if i % 2 else "some context", "output": ref}
        for i, ref in enumerate(REFERENCES)
    ]
    (data / "dolly").mkdir(parents=True)
    (data / "dolly" / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "sinst").mkdir()
    sinst = [{"instruction": f"task {i}", "output": [REFERENCES[i], REFERENCES[-1 - i]]} for i in range(4)]
    (data / "sinst" / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sinst))
    return {"root": root, "model": model, "data": data}


@pytest.fixture(scope="module")
def evaluated(workspace) -> dict:
    benches = [read_benchmark(n, data_dir=workspace["data"]) for n in ("dolly", "sinst")]
    out = workspace["root"] / "eval" / "tiny"
    summary = evaluate_model(workspace["model"], benches, PROTOCOL, out, throughput_prompts=4, show_progress=False)
    return {"summary": summary, "out": out, "benches": benches}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_hold_one_line_per_example_and_seed(evaluated, workspace):
    out = evaluated["out"]
    rows = _read_jsonl(out / "dolly" / "generations.jsonl")
    assert len(rows) == len(REFERENCES) * 2
    assert {(r["id"], r["seed"]) for r in rows} == {(f"dolly-{i:05d}", s) for i in range(6) for s in (1, 2)}
    keys = {"id", "seed", "prompt", "prediction", "references", "reference_length", "prediction_length"}
    assert keys <= set(rows[0])
    assert all(0 <= r["prediction_length"] <= 8 for r in rows)
    metrics = json.loads((out / "dolly" / "metrics.json").read_text())
    assert metrics["model"] == str(workspace["model"])
    assert metrics["protocol"]["seeds"] == [1, 2] and metrics["protocol"]["top_k"] == 0
    assert metrics["num_examples"] == 6 and metrics["limit"] is None
    assert metrics["model_fingerprint"].startswith("sha256:")
    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["batched"]["batch_size"] == 4 and throughput["one_at_a_time"]["batch_size"] == 1
    assert [o.skipped for o in evaluated["summary"].outcomes] == [False, False]


def test_reference_lengths_use_the_first_reference_and_the_model_tokenizer(evaluated, workspace):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    for row in _read_jsonl(evaluated["out"] / "sinst" / "generations.jsonl"):
        assert len(row["references"]) == 2
        assert row["reference_length"] == len(tokenizer.encode(row["references"][0], add_special_tokens=False))


@pytest.mark.parametrize("bench", ["dolly", "sinst"])
def test_aggregates_equal_the_values_recomputed_from_generations(evaluated, bench):
    out = evaluated["out"] / bench
    rows = _read_jsonl(out / "generations.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    per_seed_rouge, per_seed_bleu = [], []
    for seed in (1, 2):
        seed_rows = [r for r in rows if r["seed"] == seed]
        scores = [
            100 * max(scorer.score(ref, r["prediction"])["rougeL"].fmeasure for ref in r["references"])
            for r in seed_rows
        ]
        per_seed_rouge.append(sum(scores) / len(scores))
        width = max(len(r["references"]) for r in seed_rows)
        streams = [[r["references"][i] if i < len(r["references"]) else None for r in seed_rows] for i in range(width)]
        per_seed_bleu.append(sacrebleu.corpus_bleu([r["prediction"] for r in seed_rows], streams).score)
        short = [s for s, r in zip(scores, seed_rows) if r["reference_length"] <= 3]
        entry = next(e for e in metrics["per_seed"] if e["seed"] == seed)
        if short:
            assert entry["by_length"]["[0,3]"]["rouge_l"] == pytest.approx(sum(short) / len(short), abs=1e-9)
            assert entry["by_length"]["[0,3]"]["n"] == len(short)
    agg = metrics["aggregate"]
    assert agg["rouge_l"]["mean"] == pytest.approx(statistics.mean(per_seed_rouge), abs=1e-9)
    assert agg["rouge_l"]["sd"] == pytest.approx(statistics.stdev(per_seed_rouge), abs=1e-9)
    assert agg["bleu"]["mean"] == pytest.approx(statistics.mean(per_seed_bleu), abs=1e-9)
    assert sum(v["n"] for v in agg["by_length"].values()) == len(rows) // 2


def test_resume_skips_without_loading_the_model(evaluated, workspace, monkeypatch):
    from switch_core.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not be loaded when every benchmark is up to date")

    monkeypatch.setattr(loading, "load_causal_lm", refuse)
    before = (evaluated["out"] / "dolly" / "metrics.json").read_text()
    summary = evaluate_model(workspace["model"], evaluated["benches"], PROTOCOL, evaluated["out"], show_progress=False)
    assert [o.skipped for o in summary.outcomes] == [True, True]
    assert summary.throughput is None
    assert (evaluated["out"] / "dolly" / "metrics.json").read_text() == before


def test_a_changed_protocol_or_force_recomputes(evaluated, workspace, tmp_path):
    out = tmp_path / "tiny"
    benches = evaluated["benches"][:1]
    first = evaluate_model(workspace["model"], benches, PROTOCOL, out, throughput_prompts=0, show_progress=False)
    assert first.outcomes[0].skipped is False and first.throughput is None
    changed = EvalProtocol(**{**PROTOCOL.__dict__, "seeds": (1,)})
    second = evaluate_model(workspace["model"], benches, changed, out, throughput_prompts=0, show_progress=False)
    assert second.outcomes[0].skipped is False
    assert [e["seed"] for e in second.outcomes[0].metrics["per_seed"]] == [1]
    # seed 1 with the same settings draws the same samples as in the two-seed run (timing aside)
    timing = {"tokens_per_s"}
    new, old = second.outcomes[0].metrics["per_seed"][0], first.outcomes[0].metrics["per_seed"][0]
    assert {k: v for k, v in new.items() if k not in timing} == {k: v for k, v in old.items() if k not in timing}
    forced = evaluate_model(workspace["model"], benches, changed, out, force=True, throughput_prompts=0,
                            show_progress=False)
    assert forced.outcomes[0].skipped is False


def test_the_dtype_is_part_of_the_protocol_record_unless_float32(evaluated, workspace, tmp_path, monkeypatch):
    """``eval.dtype`` loads the model in that dtype and enters the protocol record, so a change re-evaluates; a
    float32 record is the one written before the setting existed (no ``dtype`` key): those results stay valid."""
    from switch_core.models import loading

    float32 = json.loads((evaluated["out"] / "dolly" / "metrics.json").read_text())
    assert "dtype" not in float32["protocol"] and PROTOCOL.dtype == "float32"
    out = tmp_path / "tiny"
    shutil.copytree(evaluated["out"] / "dolly", out / "dolly")
    loaded: list[torch.nn.Module] = []
    load = loading.load_causal_lm

    def recording_load(*args, **kwargs):
        loaded.append(load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(loading, "load_causal_lm", recording_load)
    bf16 = EvalProtocol(**{**PROTOCOL.__dict__, "dtype": "bfloat16"})
    benches = evaluated["benches"][:1]
    first = evaluate_model(workspace["model"], benches, bf16, out, throughput_prompts=0, show_progress=False)
    assert first.outcomes[0].skipped is False and [m.dtype for m in loaded] == [torch.bfloat16]
    metrics = first.outcomes[0].metrics
    assert metrics["protocol"] == {**float32["protocol"], "dtype": "bfloat16"}
    assert metrics["fingerprint"] != float32["fingerprint"]
    again = evaluate_model(workspace["model"], benches, bf16, out, throughput_prompts=0, show_progress=False)
    assert again.outcomes[0].skipped is True and len(loaded) == 1
    back = evaluate_model(workspace["model"], benches, PROTOCOL, tmp_path / "back", throughput_prompts=0,
                          show_progress=False)
    assert [m.dtype for m in loaded] == [torch.bfloat16, torch.float32]
    assert back.outcomes[0].metrics["fingerprint"] == float32["fingerprint"]  # float32: the record it always had


def test_protocol_rejects_bad_settings():
    with pytest.raises(EvaluationError, match="seed"):
        EvalProtocol(seeds=())
    with pytest.raises(EvaluationError, match="limit"):
        EvalProtocol(limit=0)
    with pytest.raises(MetricInputError, match="increasing"):
        EvalProtocol(length_bucket_edges=(10, 5))
    with pytest.raises(EvaluationError, match="temperature"):  # the eval.* rules of the configuration apply
        EvalProtocol(temperature=0.0)
    with pytest.raises(EvaluationError, match=r"dtype = 'bf16': must be one of .*'bfloat16'"):
        EvalProtocol(dtype="bf16")
    protocol = EvalProtocol.from_config(Config())
    assert protocol.seeds == (10, 20, 30, 40, 50) and protocol.top_k == 0 and protocol.no_repeat_ngram_size == 6
    assert (protocol.max_prompt_length, protocol.max_new_tokens, protocol.batch_size) == (256, 256, 16)
    assert protocol == EvalProtocol()  # the defaults are the configuration's
    config = Config.model_validate({"seed": 7, "data": {"prompt_format": "chat_template"}, "eval": {"top_p": 0.9}})
    protocol = EvalProtocol.from_config(config, limit=3)
    assert (protocol.subsample_seed, protocol.prompt_style, protocol.top_p, protocol.limit) == (7, "chat_template",
                                                                                                  0.9, 3)
    assert protocol.generation_kwargs() == {"max_prompt_length": 256, "max_new_tokens": 256, "temperature": 1.0,
                                            "top_k": 0, "top_p": 0.9, "no_repeat_ngram_size": 6, "batch_size": 16,
                                            "greedy": False}


def _cli_args(argv: list[str], config: Config, root: Path) -> argparse.Namespace:
    from switch_core.commands import evaluate as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    args.config, args.project_root = config, root
    return args


def test_cli_evaluates_the_run_test_split_and_prints_the_summary(workspace, tmp_path, capsys):
    from switch_core.commands import evaluate as command

    records = [InstructionRecord(id=f"t{i}", instruction=f"question {i}", references=(ref,))
               for i, ref in enumerate(REFERENCES[:3])]
    write_records(records, tmp_path / "run" / "data" / "test.jsonl")
    config = Config.model_validate({"run_dir": "run", "eval": {"max_new_tokens": 6, "batch_size": 2}})
    args = _cli_args(["--model", str(workspace["model"]), "--benchmarks", "embedded", "--seeds", "3", "--limit", "2",
                      "--device", "cpu", "--throughput-prompts", "2", "--quiet"], config, tmp_path)
    assert command.run(args) == 0
    printed = capsys.readouterr().out
    assert "embedded" in printed and "ROUGE-L" in printed and "(n=2 of 3, limit 2, seeds 3;" in printed
    assert "one prompt at a time" in printed
    metrics = json.loads((tmp_path / "run" / "eval" / "tiny" / "embedded" / "metrics.json").read_text())
    assert metrics["limit"] == 2 and metrics["protocol"]["max_new_tokens"] == 6
    assert metrics["protocol"]["seeds"] == [3]


def test_cli_dtype_defaults_to_eval_dtype(tmp_path):
    """``--dtype`` is declared by ``eval.dtype``: its default is the configuration's value, a given one wins."""
    from switch_core.commands import evaluate as command

    config = Config.model_validate({"eval": {"dtype": "bfloat16"}})
    seen: list[EvalProtocol] = []

    def record(model, benchmarks, protocol, out, **kwargs):
        seen.append(protocol)
        raise SystemExit(0)

    for argv, dtype in (([], "bfloat16"), (["--dtype", "float32"], "float32")):
        args = _cli_args(["--model", "m", "--benchmarks", "embedded", *argv], config, tmp_path)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(command, "read_benchmark", lambda *a, **k: None)
            patch.setattr(command, "evaluate_model", record)
            with pytest.raises(SystemExit):
                command.run(args)
        assert seen[-1].dtype == dtype
    with pytest.raises(SystemExit):  # argparse: not a dtype
        _cli_args(["--model", "m", "--dtype", "int8"], config, tmp_path)


def test_median_length_window_takes_similar_lengths_longest_first():
    class Words:  # one token per word
        def encode(self, text: str) -> list[str]:
            return text.split()

    prompts = [" ".join(["w"] * n) for n in (9, 1, 5, 3, 7, 2, 8, 4, 6)]
    assert [len(p.split()) for p in median_length_window(prompts, Words(), 3)] == [6, 5, 4]
    assert [len(p.split()) for p in median_length_window(prompts, Words(), 20)] == [9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert [len(p.split()) for p in median_length_window(prompts, Words(), 1)] == [5]
