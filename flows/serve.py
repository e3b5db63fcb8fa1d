"""Serve the switch-kd deployments from one long-running process (the "one GPU box" way).

::

    prefect server start --host 127.0.0.1 --port 4200 &                  # or any Prefect API
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                                                 # registers and serves the deployments
    prefect deployment run 'pipeline/tiny' --watch

The same deployments are declared in prefect.yaml for a work pool and workers (``prefect deploy --all``). At most one
flow run at a time: a project folder holds one params.yaml and one dvc.lock.
"""
from __future__ import annotations

import sys
from typing import Any

from prefect import serve

from flows.ablation import ablation
from flows.pipeline import pipeline

TINY_METHODS = ["kd", "switch"]
"""Methods of the tiny smoke deployment (a short chain that still covers ground-truth KD and SWITCH rollouts)."""

TINY_GRID: dict[str, list[Any]] = {"tau0": [0.1, 0.3]}
"""Grid of the tiny ablation deployment."""

DEPLOYMENTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("pipeline", "default", {}, "The whole chain on params.yaml (the embedded default)."),
    ("pipeline", "tiny", {"preset": "tiny", "methods": TINY_METHODS}, "Smoke run: tiny random models."),
    ("ablation", "default", {}, "τ0 × λ grid of SWITCH on params.yaml."),
    ("ablation", "tiny", {"preset": "tiny", "grid": TINY_GRID}, "Smoke ablation: tiny random models."),
]
"""(flow, deployment name, parameters, description); prefect.yaml declares the same list."""


def deployments() -> list[Any]:
    """The runner deployments of :data:`DEPLOYMENTS`."""
    flows = {"pipeline": pipeline, "ablation": ablation}
    return [
        flows[flow_name].to_deployment(name=name, parameters=params, description=text, tags=["switch-kd"])
        for flow_name, name, params, text in DEPLOYMENTS
    ]


def main() -> int:
    """Serve every deployment, one flow run at a time, until interrupted."""
    serve(*deployments(), limit=1, pause_on_shutdown=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
