"""The DVC side of the orchestration: the pipeline's stages, their state, and running one stage through DVC.

DVC owns the artefacts and the skip decision (docs/ORCHESTRATION.md). For each stage this module gives a *signature*:
a SHA-256 over exactly what DVC compares against ``dvc.lock`` to decide whether the stage is up to date — its
command, the md5 of every dependency (code and data), the values of its params and its output paths — and whether
DVC considers it up to date now. Prefect's cache key is built from the signature, so the two layers agree by
construction: same signature and a clean stage means nothing to do.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TELEMETRY_OFF = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""Environment that turns off the telemetry of DVC, MLflow and Prefect (closed networks log errors otherwise)."""

GPU_STAGES = frozenset(
    {"sft-teacher", "sft-student", "gate-profile", "seqkd-data", "distill", "evaluate-base", "evaluate"}
)
"""Stage groups that load a model on the accelerator (they carry the ``gpu`` concurrency tag)."""

TRAINING_STAGES = frozenset({"sft-teacher", "sft-student", "distill"})
"""Stage groups that train (their command may run under ``accelerate launch``)."""


class StageError(RuntimeError):
    """A DVC stage is unknown, its inputs are missing, or its command failed (the message holds DVC's output)."""


@dataclass(frozen=True)
class StageState:
    """What DVC knows about one stage right now.

    Attributes:
        name: DVC address, e.g. ``distill@switch``.
        signature: SHA-256 hex of the command, dependency md5s, params values and output paths.
        clean: True when ``dvc status`` reports nothing for the stage (outputs match dvc.lock, inputs unchanged).
        deps: dependency path -> md5 (``.dir`` suffix for folders) as DVC computes it now.
        params: params key -> value as the stage declares them.
    """

    name: str
    signature: str
    clean: bool
    deps: dict[str, str]
    params: dict[str, Any]

    @property
    def group(self) -> str:
        """The stage's name without its ``@item`` suffix (``distill@switch`` -> ``distill``)."""
        return stage_group(self.name)

    @property
    def item(self) -> str | None:
        """The ``foreach`` item (``distill@switch`` -> ``switch``), None for a plain stage."""
        return self.name.partition("@")[2] or None


def stage_group(name: str) -> str:
    """``distill@switch`` -> ``distill``."""
    return name.partition("@")[0]


def dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``dvc`` subprocess: this one, telemetry off, this interpreter's ``bin`` first on PATH
    (stage commands call ``switch-kd`` and ``python``), plus ``extra``."""
    env = dict(os.environ)
    env.update(TELEMETRY_OFF)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def _open(root: Path):  # -> dvc.repo.Repo
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.repo import Repo

    return Repo(str(root))


def stage_names(root: str | Path) -> list[str]:
    """Every stage of the project's pipeline (names as in ``dvc repro NAME``), dependencies first (ties in dvc.yaml
    order).

    Raises:
        StageError: dvc.yaml does not parse or templating fails (e.g. a params key it names is missing).
    """
    import networkx as nx
    from dvc.exceptions import DvcException

    try:
        with _open(Path(root)) as repo:
            graph = repo.index.graph
            order = {stage: i for i, stage in enumerate(repo.index.stages)}
            ranked = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: order[s])
            return [stage.name for stage in ranked]
    except DvcException as err:
        raise StageError(f"cannot read the DVC pipeline in {root}: {err}") from err


def _hash_value(hash_info: Any) -> str:
    return str(getattr(hash_info, "value", None) or "")


def inspect_stage(root: str | Path, name: str) -> StageState:
    """The :class:`StageState` of stage ``name`` of ``root``'s dvc.yaml (takes DVC's repository lock while reading;
    independent of the working directory).

    Raises:
        StageError: no such stage.
    """
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException

    try:
        with _open(Path(root)) as repo, repo.lock:
            stages = repo.stage.collect(f"{Path(root).resolve() / 'dvc.yaml'}:{name}")
            if len(stages) != 1:
                raise StageError(f"{name!r} names {len(stages)} DVC stages; expected one")
            stage = stages[0]
            deps: dict[str, str] = {}
            params: dict[str, Any] = {}
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params.update(dep.read_params())
                else:
                    deps[dep.def_path] = _hash_value(dep.get_hash()) if dep.exists else "missing"
            clean = "missing" not in deps.values() and not stage.status()
            payload = {
                "cmd": stage.cmd, "deps": deps, "params": params, "outs": sorted(o.def_path for o in stage.outs),
            }
    except DvcException as err:
        raise StageError(f"DVC stage {name!r} in {root}: {err}") from err
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return StageState(name, digest, clean, deps, params)


def run_dvc(root: str | Path, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``dvc ARGS`` in ``root`` with :func:`dvc_env`; return its combined output.

    Raises:
        StageError: non-zero exit (the message ends with the last 4000 characters of the output).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=dvc_env(env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
    )
    if proc.returncode:
        raise StageError(f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout


def repro_stage(root: str | Path, name: str, env: dict[str, str] | None = None) -> str:
    """``dvc repro --single-item NAME``: run the stage if DVC finds it changed, update dvc.lock; return the output.

    The stage's upstream must be up to date (the flows run stages in :func:`stage_names` order).

    Raises:
        StageError: the command failed.
    """
    return run_dvc(root, ["repro", "--single-item", name], env)


def lock_entry(root: str | Path, name: str) -> dict[str, Any]:
    """The stage's entry in dvc.lock (``cmd``, ``deps``, ``params``, ``outs``); empty when it has none."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    return dict((data.get("stages") or {}).get(name) or {})


def out_hashes(entry: dict[str, Any]) -> dict[str, str]:
    """Output path -> md5 of a dvc.lock entry."""
    return {o["path"]: str(o.get("md5", "")) for o in entry.get("outs") or []}


def dep_hashes(entry: dict[str, Any]) -> dict[str, str]:
    """Dependency path -> md5 of a dvc.lock entry."""
    return {d["path"]: str(d.get("md5", "")) for d in entry.get("deps") or []}


def pipeline_status(root: str | Path) -> dict[str, Any]:
    """``dvc status --json`` of the whole pipeline: ``{}`` when every stage is up to date.

    Raises:
        StageError: dvc failed.
    """
    text = run_dvc(root, ["status", "--json"])
    start = text.find("{")
    return json.loads(text[start:]) if start >= 0 else {}
