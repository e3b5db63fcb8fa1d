"""Ablation grids: reading a grid (JSON or a committed YAML file of named grids), and the name and overrides of each
cell. The one place that knows how a cell is named, shared by the ``ablation`` flow (flows/ablation.py, which trains
the cells) and ``switch-kd ablation-doc`` (which finds their outputs).

A grid maps axes to lists of values; its cells are every combination, in axis order. An axis is a dotted config key
or an alias of :data:`AXES`. Cell ``<study>-<axis>_<value>-...`` (the last part of a dotted axis; ``.`` in a value
becomes ``p``, ``-`` becomes ``m``, other characters outside letters, digits and ``_`` are dropped). An axis with one
value (a setting every cell shares, e.g. the λ of a schedules grid) is left out of the names, unless no axis has more.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

AXES = {
    "tau0": "rollout.tau0",
    "target_share": "rollout.target_teacher_share",
    "decay": "rollout.decay",
    "schedule": "rollout.schedule",
    "strategy": "rollout.strategy",
    "divergence": "methods.{method}.loss",
}
"""Grid axis aliases -> dotted config keys (``{method}`` is the ablated method)."""


class GridError(ValueError):
    """A grid that cannot be read or named (no such file, no such grid, an empty axis, two cells of one name)."""


def load_grid(spec: str, root: Path | None = None) -> dict[str, list[Any]]:
    """The grid of ``spec``: JSON text (``{"axis": [values]}``) or ``path[:name]`` of a YAML file, relative to
    ``root`` (default: the working directory). A file is either one grid (axis -> values) or named grids
    (name -> grid), of which ``name`` picks one.

    Raises:
        GridError: no such file, a file that is not a mapping, or a missing / unknown grid name.
    """
    if spec.lstrip().startswith("{"):
        return json.loads(spec)
    path_text, _, name = spec.partition(":")
    path = (root or Path.cwd()) / path_text
    if not path.is_file():
        raise GridError(f"grid: {path} is not a file; give JSON ({{\"axis\": [values]}}) or path[:name] of a YAML file")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data:
        raise GridError(f"grid file {path}: expected a mapping of axis -> values or of name -> grid")
    named = all(isinstance(v, dict) for v in data.values())
    if not named:
        if name:
            raise GridError(f"grid file {path} holds one grid, not named grids: drop ':{name}'")
        return data
    if name not in data:
        raise GridError(f"grid file {path}: name one of its grids with {path_text}:NAME ({', '.join(data)})")
    return data[name]


def grid_names(path: Path) -> list[str]:
    """The names of the grids in a grid file of named grids, in file order.

    Raises:
        GridError: no such file, or a file that is not a mapping of names to grids.
    """
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise GridError(f"grid file {path}: expected a mapping of name -> grid (axis -> values)")
    return list(data)


def _slug(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    text = text.replace(".", "p").replace("-", "m")
    return re.sub(r"[^A-Za-z0-9_]", "", text) or "x"


def varying_axes(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """The axes (of the first point, in order) on which ``points`` take more than one value; every axis when none
    does. They name the cells (:func:`grid_points`) and label the rows of ABLATIONS.md."""
    axes = list(points[0]) if points else []
    return [a for a in axes if len({repr(p[a]) for p in points}) > 1] or axes


def grid_points(study: str, grid: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Every cell of a grid: ``{cell name: {axis: value}}`` (module docstring), in ``itertools.product`` order.

    Raises:
        GridError: no axis, an axis whose values are not a non-empty list, or two cells with the same name.
    """
    if not grid:
        raise GridError("grid: give at least one axis, e.g. {'tau0': [0.1, 0.3]}")
    axes = list(grid)
    for axis in axes:
        if not isinstance(grid[axis], list) or not grid[axis]:
            raise GridError(f"grid.{axis}: give a non-empty list of values")
    combos = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*(grid[a] for a in axes))]
    named = varying_axes(combos)
    points: dict[str, dict[str, Any]] = {}
    for point in combos:
        name = "-".join([study] + [f"{a.rsplit('.', 1)[-1]}_{_slug(point[a])}" for a in named])
        if name in points:
            raise GridError(f"grid: two cells are both named {name!r}; use distinct values")
        points[name] = point
    return points


def cell_overrides(method: str, point: dict[str, Any]) -> dict[str, Any]:
    """The config overrides of one cell: ``{dotted key: value}`` (aliases of :data:`AXES` resolved for ``method``)."""
    return {AXES.get(a, a).format(method=method): v for a, v in point.items()}
