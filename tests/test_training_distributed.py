"""Two processes on CPU (gloo) under the run's engine, DDP or FSDP2 (switch_core.training.engine), train to the
weights of one process with the same global batch: the loss is normalised by the global token count and the engines
sum (average, rescaled) gradients over processes. A SWITCH rollout with a sharded student and teacher gives the
tokens of the unsharded pair; a sharded run killed with SIGKILL resumes to the weights of an uninterrupted one."""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator, debug_launcher
from accelerate.state import AcceleratorState
from kill_resume import kill_at_step, run_to_end, write_script
from pydantic import ValidationError
from safetensors.torch import load_file
from test_training_support import make_job, method

from switch_core.config import DistributedConfig
from switch_core.data.tokenize import left_pad
from switch_core.rollout import RolloutSettings, rollout
from switch_core.training import TRACE_FILE, Action, choose_action, read_traces, train
from switch_core.training.engine import Engine, is_sharded
from switch_core.training.seeding import Stream, uniform
from switch_core.training.state import StateMismatchError, check_resumable, latest_state

TESTS_DIR = str(Path(__file__).resolve().parent)
# sft: ground truth; kd: ground truth + teacher forward; switch in the GKD mix without replay: fresh SWITCH rollouts
# (teacher logits kept from the rollout) or ground truth. Micro-batches of 2 and rollout chunks of 2 divide each
# process's 4 sequences.
RUNS = {"sft": method("sft"), "kd": method("kd"), "switch-mixed": method("switch", data="mixed", on_policy_fraction=0.5)}
ENGINES = {"ddp": DistributedConfig(), "fsdp2": DistributedConfig(strategy="fsdp2", teacher="shard")}
OPTIM = {"batch_size": 8, "micro_batch_size": 2, "max_steps": 3}
ROLLOUT = {"batch_size": 2}
# float64: the processes sum gradients in another order than one process (and the engines' one backward per
# micro-batch sums the chunks' head gradients before adding them); Adam turns that rounding (~1e-16 in float64) of
# near-zero gradients into weight differences far below this tolerance
TOLERANCE = 1e-10


def _fresh_accelerator() -> Accelerator:
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)  # forked children inherit the parent's singleton
    return Accelerator(cpu=True)


def _train_all(root: str, engines: tuple[str, ...]) -> None:
    """Runs in every process (also called directly, with the default engine, for the one-process reference)."""
    accelerator = _fresh_accelerator()
    for engine in engines:
        for name, config in RUNS.items():
            job = make_job(Path(root) / engine, config, name=name, rollout=ROLLOUT, **OPTIM)
            job.distributed = ENGINES[engine]
            job.student.double()
            job.teacher.double()
            train(job, accelerator=accelerator)


@pytest.mark.slow  # 10-30 s on 2 busy cores
def test_two_processes_under_ddp_and_fsdp2_equal_one_process(tmp_path) -> None:
    mixed_actions = {
        choose_action(RUNS["switch-mixed"], r=uniform(10, Stream.SOURCE_CHOICE, k), step=k + 1, total_steps=3, phi=0.0, buffered=0)
        for k in range(OPTIM["max_steps"])
    }
    assert mixed_actions == {Action.ROLLOUT, Action.GROUND_TRUTH}  # the seed-10 draws exercise both sources
    debug_launcher(_train_all, args=(str(tmp_path / "two"), tuple(ENGINES)), num_processes=2)
    _train_all(str(tmp_path / "one"), ("ddp",))
    AcceleratorState._reset_state(reset_partial_state=True)
    for name, config in RUNS.items():
        # the published checkpoint (the best = the last step here): for fsdp2 the gathered full weights
        one = load_file(tmp_path / "one" / "ddp" / "models" / name / "model.safetensors")
        initial = make_job(tmp_path / "init", config).student.state_dict()
        assert any(not torch.equal(one[k], initial[k].double()) for k in one)  # training moved the weights
        for engine in ENGINES:
            two = load_file(tmp_path / "two" / engine / "models" / name / "model.safetensors")
            assert two.keys() == one.keys(), (engine, name)  # a plain HF folder: the tied head is not stored
            for key in one:
                torch.testing.assert_close(
                    two[key], one[key], rtol=TOLERANCE, atol=TOLERANCE, msg=f"{engine} {name}: {key}"
                )
            summary = json.loads((tmp_path / "two" / engine / "models" / name / "train_summary.json").read_text())
            assert summary["steps"] == OPTIM["max_steps"]
    # the rollout trace counts the rows of both processes: the same lines as one process's (rollout.batch_size
    # divides each process's batch, so the rows draw the same tokens)
    trace = read_traces(tmp_path / "one" / "ddp" / "state" / "switch-mixed" / TRACE_FILE)
    assert trace and sum(trace[0]["count_by_position"]) > 0
    for engine in ENGINES:
        assert read_traces(tmp_path / "two" / engine / "state" / "switch-mixed" / TRACE_FILE) == trace, engine


VOCAB = 97
PROMPTS = [[5, 17, 33, 8, 64, 21], [40, 9, 77], [12], [88, 3, 50, 61, 14], [7, 7, 7, 7, 7], [3, 96], [30, 31], [60]]


def _peaked(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(8.0)
    return model.double()


def _rollout_ranks(root: str) -> None:
    """Every process rolls out its own prompts (rank 1 more rows, with a stop token, so the ranks call forward a
    different number of times) with the sharded pair inside ``gathered`` and with unsharded copies."""
    from switch_core.models.tiny import tiny_causal_lm

    accelerator = _fresh_accelerator()
    student = _peaked(tiny_causal_lm("llama", VOCAB, hidden=32, layers=2, heads=2, seed=1, max_positions=128))
    teacher = _peaked(tiny_causal_lm("llama", VOCAB, hidden=48, layers=2, heads=2, seed=2, max_positions=128))
    plain_student, plain_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    engine = Engine.build(student, teacher, accelerator, DistributedConfig(strategy="fsdp2", teacher="shard"))
    assert is_sharded(engine.student) and is_sharded(engine.teacher)
    rank = accelerator.process_index
    prompts = PROMPTS[:3] if rank == 0 else PROMPTS[3:]
    ids, mask = left_pad(prompts, pad_token_id=0)
    settings = RolloutSettings(
        pad_token_id=0, strategy="switch", tau0=0.5, decay=0.1, max_new_tokens=16, keep_teacher_logits=True,
        teacher_logits_dtype="float32", stop_token_ids=(11,) if rank else (),
    )
    results = {}
    for name in ("lockstep", "speculative"):
        chosen = dataclasses.replace(settings, engine=name)
        with engine.gathered():
            sharded = rollout(engine.student, engine.teacher, ids, mask, chosen, generator=torch.Generator().manual_seed(3))
        plain = rollout(plain_student, plain_teacher, ids, mask, chosen, generator=torch.Generator().manual_seed(3))
        results[name] = {
            "tokens": torch.equal(sharded.tokens, plain.tokens),
            "teacher_chosen": torch.equal(sharded.teacher_chosen, plain.teacher_chosen),
            "response_mask": torch.equal(sharded.response_mask, plain.response_mask),
            "teacher_logits": torch.equal(sharded.teacher_logits, plain.teacher_logits),
            "share": plain.teacher_share(), "lengths": plain.response_mask.sum(dim=1).tolist(),
        }
    Path(root, f"rank-{rank}.json").write_text(json.dumps(results))


def test_switch_rollout_with_sharded_student_and_teacher_gives_the_unsharded_tokens(tmp_path) -> None:
    debug_launcher(_rollout_ranks, args=(str(tmp_path),), num_processes=2)
    AcceleratorState._reset_state(reset_partial_state=True)
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        for name, result in results.items():
            assert result["tokens"] and result["teacher_chosen"] and result["response_mask"], (rank, name, result)
            assert result["teacher_logits"], (rank, name)
            assert 0 < result["share"] < 1, "test set-up: both sources should occur"
    lengths = json.loads((tmp_path / "rank-1.json").read_text())["lockstep"]["lengths"]
    assert len(set(lengths)) > 1, "test set-up: rank 1's rows should stop at different steps"


RESUME_CHILD = """
from accelerate import Accelerator
from switch_core.config import DistributedConfig

accelerator = Accelerator(cpu=True)
job = make_job(root, method("kd"), resume=resume, save_every=2, epochs=2)
job.distributed = DistributedConfig(strategy="fsdp2", teacher="shard")
train(job, accelerator=accelerator, tracker=Hang(root / "events.jsonl"))
"""


@pytest.mark.slow  # three launches of two ranks (about 1 min on 2 busy cores)
def test_sharded_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path) -> None:
    script = write_script(tmp_path / "child.py", RESUME_CHILD)
    killed, reference = tmp_path / "killed", tmp_path / "uninterrupted"
    killed.mkdir()
    reference.mkdir()
    kill_at_step(script, killed, 7, processes=2, timeout=240)
    folder = latest_state(killed / "state" / "run")
    assert folder.name == "step-00000006"  # mid-epoch 2 (steps 6-10); saved as a distributed checkpoint
    assert (folder / "sharded").is_dir() and not (folder / "model.pt").exists()

    assert "resuming at step 6/10" in run_to_end(script, killed, "resume", processes=2, timeout=400)
    run_to_end(script, reference, "fresh", processes=2, timeout=400)

    got = json.loads((killed / "models" / "run" / "train_summary.json").read_text())
    want = json.loads((reference / "models" / "run" / "train_summary.json").read_text())
    assert got == want  # the final dev metrics are those of the same final weights
    best_got = load_file(killed / "models" / "run" / "model.safetensors")
    best_want = load_file(reference / "models" / "run" / "model.safetensors")
    assert best_got.keys() == best_want.keys()
    assert all(torch.equal(best_got[k], best_want[k]) for k in best_want)


DEV_MID_RUN_CHILD = """
import torch.distributed as dist
from accelerate import Accelerator
from switch_core.config import DistributedConfig
from switch_core.models.tiny import tiny_causal_lm
from test_training_support import tokenizer

accelerator = Accelerator(cpu=True)
job = make_job(root, method("kd"), max_steps=6, eval_every=2, micro_batch_size=2)
job.student = tiny_causal_lm("llama", len(tokenizer()), hidden=32, layers=2, heads=2, seed=1).double()
job.teacher.double()
if dist.is_initialized():
    job.distributed = DistributedConfig(strategy="fsdp2", teacher="shard")
train(job, accelerator=accelerator)
"""


@pytest.mark.slow  # two launches (about 30 s on 2 busy cores)
def test_sharded_two_layer_run_with_dev_evaluations_mid_run_ends_with_the_weights_of_one_process(tmp_path) -> None:
    # dev ROUGE-L generation runs on rank 0 only: its forwards used to leave FSDP2's backward-prefetch order
    # different on the ranks, and with two decoder layers the next backward deadlocked (all-gather vs reduce-scatter)
    script = write_script(tmp_path / "child.py", DEV_MID_RUN_CHILD)
    two, one = tmp_path / "two", tmp_path / "one"
    output = run_to_end(script, two, "fresh", processes=2, timeout=240)
    assert "dev @ step 2:" in output and "dev @ step 4:" in output and "dev @ step 6:" in output
    run_to_end(script, one, "fresh", processes=1, timeout=240)
    summary = json.loads((two / "models" / "run" / "train_summary.json").read_text())
    assert summary["steps"] == 6
    got, want = (load_file(root / "models" / "run" / "model.safetensors") for root in (two, one))
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=TOLERANCE, atol=TOLERANCE, msg=key)


def test_a_state_of_another_engine_is_refused(tmp_path) -> None:
    folder = tmp_path / "step-00000002"
    folder.mkdir()
    (folder / "trainer.json").write_text(json.dumps({"world_size": 2, "strategy": "ddp", "fingerprint": {}}))
    (tmp_path / "latest").write_text(folder.name)
    assert check_resumable(tmp_path, {}, 2, strategy="ddp") is not None
    with pytest.raises(StateMismatchError, match="distributed.strategy=ddp, this run has fsdp2") as error:
        check_resumable(tmp_path, {}, 2, strategy="fsdp2")
    assert error.value.changed == ["distributed.strategy"]


def test_a_sharded_teacher_needs_fsdp2() -> None:
    with pytest.raises(ValidationError, match="distributed.teacher=shard needs distributed.strategy=fsdp2"):
        DistributedConfig(strategy="ddp", teacher="shard")
    assert DistributedConfig(strategy="fsdp2", teacher="shard").teacher == "shard"
