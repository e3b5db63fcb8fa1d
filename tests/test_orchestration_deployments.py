"""Deployments (prefect.yaml and flows/serve.py agree) and the ablation grid (cell names and overrides)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from flows.ablation import grid_cells, load_grid
from flows.serve import DEPLOYMENTS, deployments
from switch_core.config import load_config
from switch_core.grids import AXES
from tasks.params import ParamsError

PROJECT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_declares_the_served_deployments() -> None:
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    declared = {}
    for dep in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(PROJECT / dep["entrypoint"]))
        declared[(flow.name, dep["name"])] = dep["parameters"]
        assert dep["work_pool"]["name"] == "switch-kd"
        flow.validate_parameters(dep["parameters"])  # raises on a parameter the flow does not take
    assert declared == {(flow, name): params for flow, name, params, _ in DEPLOYMENTS}
    assert [d.name for d in deployments()] == [name for _, name, _, _ in DEPLOYMENTS]
    pull = spec["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ $PWD }}"


def test_grid_cells_name_and_override_each_combination() -> None:
    cells = grid_cells("abl", "switch", {"tau0": [0.1, 0.3], "divergence": ["fkl", "jsd"]})
    assert list(cells) == [
        "abl-tau0_0p1-divergence_fkl", "abl-tau0_0p1-divergence_jsd",
        "abl-tau0_0p3-divergence_fkl", "abl-tau0_0p3-divergence_jsd",
    ]
    assert cells["abl-tau0_0p3-divergence_jsd"] == {
        "method": "switch", "init_from": "student-sft",
        "overrides": {"rollout.tau0": 0.3, "methods.switch.loss": "jsd"},
    }
    shared = grid_cells("abl", "switch", {"schedule": ["linear", "constant"], "decay": [0.045], "tau0": [None]})
    assert {name: spec["overrides"] for name, spec in shared.items()} == {  # one-value axes: in every cell, no name
        "abl-schedule_linear": {"rollout.schedule": "linear", "rollout.decay": 0.045, "rollout.tau0": None},
        "abl-schedule_constant": {"rollout.schedule": "constant", "rollout.decay": 0.045, "rollout.tau0": None},
    }
    dotted = grid_cells("s", "gkd", {"rollout.decay": [0.05]}, init_from="student-init")
    assert dotted == {"s-decay_0p05": {"method": "gkd", "init_from": "student-init",
                                       "overrides": {"rollout.decay": 0.05}}}


def test_grid_cells_are_valid_runs_of_the_configuration() -> None:
    cells = grid_cells("abl", "switch", {axis: [value] for axis, value in zip(
        AXES, [0.2, 0.5, 0.1, "linear", "random", "jsd"], strict=True)})
    (name,) = cells
    config = load_config(None, overrides={"runs": cells})
    run = config.run_config(name)
    assert (run.rollout.tau0, run.rollout.target_teacher_share, run.rollout.decay) == (0.2, 0.5, 0.1)
    assert (run.rollout.schedule, run.rollout.strategy, run.methods["switch"].loss) == ("linear", "random", "jsd")


@pytest.mark.parametrize(
    ("study", "grid", "message"),
    [
        ("abl", {}, "at least one axis"),
        ("abl", {"tau0": []}, "non-empty list"),
        ("my.study", {"tau0": [0.1]}, "no dots"),
        ("abl", {"tau0": [0.1, "0.1"]}, "both named"),
    ],
)
def test_bad_grids_are_refused(study: str, grid: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        grid_cells(study, "switch", grid)


def test_the_paper_ablation_grids_are_valid_runs() -> None:
    """presets/grids/paper-ablations.yaml (issue 16): schedules, λ and intervention strategies, each cell a valid
    run of the configuration."""
    spec = "presets/grids/paper-ablations.yaml"
    expected = {
        "schedules": ("schedule", ["exponential", "linear", "constant"]),
        "decay": ("decay", [0.2, 0.1, 0.05]),
        "strategies": ("strategy", ["student", "teacher", "random", "skd", "adaswitch", "switch"]),
    }
    ln2 = math.log(2)
    shared = {  # settings every cell of a grid has (its one-value axes; schedules keeps tau0 null to calibrate)
        "schedules": {"decay": 0.045, "tau0": None},
        "decay": {"tau0": ln2},
        "strategies": {"decay": 0.045, "tau0": ln2, "random_rate": 0.558},
    }
    for name, (axis, values) in expected.items():
        grid = load_grid(f"{spec}:{name}", PROJECT)
        assert grid[axis] == values and all(len(v) == 1 for a, v in grid.items() if a != axis)
        cells = grid_cells(f"abl-{name}", "switch", grid)
        assert list(cells) == [f"abl-{name}-{axis}_{str(v).replace('.', 'p')}" for v in values]
        config = load_config(None, overrides={"runs": cells})
        rollouts = [config.run_config(cell).rollout for cell in cells]
        assert [getattr(r, AXES[axis].split(".")[1]) for r in rollouts] == values
        for key, value in shared[name].items():
            assert all(getattr(r, key) == value for r in rollouts), (name, key)


def test_load_grid_reads_json_one_grid_files_and_names(tmp_path: Path) -> None:
    assert load_grid('{"tau0": [0.1]}') == {"tau0": [0.1]}
    (tmp_path / "one.yaml").write_text("decay: [0.1, 0.2]\n")
    assert load_grid("one.yaml", tmp_path) == {"decay": [0.1, 0.2]}
    with pytest.raises(ParamsError, match="drop ':x'"):
        load_grid("one.yaml:x", tmp_path)
    with pytest.raises(ParamsError, match="name one of its grids.*schedules"):
        load_grid("presets/grids/paper-ablations.yaml", PROJECT)
    with pytest.raises(ParamsError, match="not a file"):
        load_grid("missing.yaml", tmp_path)
