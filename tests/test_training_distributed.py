"""Two processes on CPU (gloo, accelerate.debug_launcher) train to the same weights as one process with the same
global batch: the loss is normalised by the global token count and gradients are summed over processes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator, debug_launcher
from accelerate.state import AcceleratorState
from test_training_support import make_job, method

from switch_core.training import Action, choose_action, train
from switch_core.training.seeding import Stream, uniform

TESTS_DIR = str(Path(__file__).resolve().parent)
# kd: ground truth + teacher forward; switch in the GKD mix without replay: fresh SWITCH rollouts (teacher logits
# kept from the rollout) or ground truth. Micro-batches of 2 and rollout chunks of 2 divide each process's 4 sequences.
RUNS = {"kd": method("kd"), "switch-mixed": method("switch", data="mixed", on_policy_fraction=0.5)}
OPTIM = {"batch_size": 8, "micro_batch_size": 2, "max_steps": 3}
ROLLOUT = {"batch_size": 2}


def _train_all(root: str) -> None:
    """Runs in every process (also called directly for the one-process reference)."""
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)  # forked children inherit the parent's singleton
    accelerator = Accelerator(cpu=True)
    for name, config in RUNS.items():
        job = make_job(Path(root), config, name=name, rollout=ROLLOUT, **OPTIM)
        # float64: the two processes sum gradients in another order than one process; in float32 Adam turns that
        # rounding (~1e-7) of near-zero gradients into weight differences of ~1e-6, in float64 into ~1e-16
        job.student.double()
        job.teacher.double()
        train(job, accelerator=accelerator)
        if accelerator.is_main_process:
            torch.save(job.student.state_dict(), Path(root) / f"{name}.pt")


@pytest.mark.slow  # about 20 s on 2 busy cores
def test_two_processes_equal_one_process(tmp_path) -> None:
    mixed_actions = {
        choose_action(RUNS["switch-mixed"], r=uniform(10, Stream.SOURCE_CHOICE, k), step=k + 1, total_steps=3, phi=0.0, buffered=0)
        for k in range(OPTIM["max_steps"])
    }
    assert mixed_actions == {Action.ROLLOUT, Action.GROUND_TRUTH}  # the seed-10 draws exercise both sources
    debug_launcher(_train_all, args=(str(tmp_path / "two"),), num_processes=2)
    _train_all(str(tmp_path / "one"))
    AcceleratorState._reset_state(reset_partial_state=True)
    for name, config in RUNS.items():
        two = torch.load(tmp_path / "two" / f"{name}.pt", weights_only=True)
        one = torch.load(tmp_path / "one" / f"{name}.pt", weights_only=True)
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-12, atol=1e-12, msg=f"{name}: {key}")
        initial = make_job(tmp_path / "init", config).student.state_dict()
        assert any(not torch.equal(one[k], initial[k]) for k in one)  # training moved the weights
