"""Apply a preset, a selection of runs and ``key=value`` overrides to ``params.yaml``, the canonical parameters.

DVC reads ``params.yaml`` twice: ``dvc.yaml`` templating (``${run_dir}``, ``foreach: ${runs}``) and the stages' params
dependencies. Neither sees a preset file or a ``--set``, so a preset is *materialised*: every leaf whose resolved value
(params.yaml + preset + overrides, ``switch_core.config.load_config``) differs from what params.yaml gives on its own is
written into params.yaml, and ``preset`` is set to null. This is what ``dvc exp run -S key=value`` does too (it edits
params.yaml in the workspace and leaves it edited), so after a Prefect flow run the workspace, ``dvc.lock`` and
``dvc status`` agree, and ``git diff params.yaml`` / ``dvc params diff`` show what ran. Comments and key order of
params.yaml are kept (ruamel.yaml round trip, as DVC's own ``-S``).

Command line (for ``dvc repro`` / ``dvc exp run`` on a preset)::

    python -m tasks.params --preset tiny [--methods kd,switch] [--set optim.lr=1e-4 ...] [--dry-run]
"""
from __future__ import annotations

import argparse
import io
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import SingleQuotedScalarString

from switch_core.atomic import atomic_write_text
from switch_core.cli import help_text
from switch_core.config import (
    Config,
    ConfigError,
    DistillRun,
    MethodName,
    deep_merge,
    load_config,
    parse_override,
    validate_dict,
)

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
"""Run names become DVC stage names (``distill@NAME``), params paths (``runs.NAME``) and folders: no dots."""


_MISSING = object()


class ParamsError(ValueError):
    """params.yaml cannot be updated as asked (bad run name, unknown method, a value YAML cannot round-trip)."""


@dataclass(frozen=True)
class ParamsUpdate:
    """What :func:`apply_params` changed.

    Attributes:
        path: the params file.
        changes: dotted key -> new value, for every key written (empty when params.yaml already held the target).
        config: the resolved configuration params.yaml now gives on its own (``preset`` is None).
        preset: the preset that was applied, if any (kept for tags: params.yaml no longer names it).
    """

    path: Path
    changes: dict[str, Any]
    config: Config
    preset: str | None = None


def read_raw(params_path: Path) -> dict[str, Any]:
    """The mapping in a params file (PyYAML, as switch_core reads it).

    Raises:
        ParamsError: missing file, invalid YAML or not a mapping.
    """
    if not params_path.is_file():
        raise ParamsError(f"{params_path} does not exist")
    try:
        data = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{params_path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{params_path} must hold a mapping, got {type(data).__name__}")
    return data


def check_run_names(names: list[str]) -> None:
    """Raise :class:`ParamsError` for run names that cannot be DVC stage keys (letters, digits, ``_``, ``-``)."""
    bad = [n for n in names if not RUN_NAME.match(n)]
    if bad:
        raise ParamsError(
            f"run names {bad} cannot name DVC stages: use letters, digits, '_' and '-' only (no dots: DVC reads "
            "`runs.NAME` as a params path)"
        )


def select_runs(config: Config, methods: list[str]) -> dict[str, dict[str, Any]]:
    """The ``runs`` mapping restricted to ``methods``, keeping what the chosen runs start from.

    A name in ``methods`` selects the run of that name, else every run whose method it is, else a new run
    ``{method: NAME, init_from: student-sft}``. Runs that a selected run starts from (``init_from`` chains) are kept.

    Raises:
        ParamsError: an empty list or a name that is neither a run nor a method.
    """
    if not methods:
        raise ParamsError("methods: give at least one method or run name")
    known_methods = set(MethodName.__args__)  # type: ignore[attr-defined]
    chosen: list[str] = []
    extra: dict[str, DistillRun] = {}
    for name in methods:
        if name in config.runs:
            chosen.append(name)
        elif matches := [r for r, spec in config.runs.items() if spec.method == name]:
            chosen.extend(matches)
        elif name in known_methods:
            extra[name] = DistillRun(method=name)  # type: ignore[arg-type]
            chosen.append(name)
        else:
            valid = sorted(set(config.runs) | known_methods)
            raise ParamsError(f"methods: {name!r} is neither a run nor a method; valid: {', '.join(valid)}")
    runs = {**config.runs, **extra}
    keep: list[str] = []
    for name in chosen:
        cur: str | None = name
        while cur is not None and cur in runs and cur not in keep:
            keep.append(cur)
            cur = runs[cur].init_from
    return {name: runs[name].model_dump() for name in runs if name in keep}


def diff_config(base: dict[str, Any], target: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys whose value in ``target`` differs from ``base``.

    A mapping is written whole when ``target`` drops some of its keys (params.yaml must not keep them) or when it is
    new; otherwise the difference recurses into it.
    """
    changes: dict[str, Any] = {}
    for key, value in target.items():
        dotted = f"{prefix}{key}"
        old = base.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(old, dict) and value and not set(old) - set(value):
            changes.update(diff_config(old, value, f"{dotted}."))
        elif old != value or type(old) is not type(value):
            changes[dotted] = value
    return changes


def plan_params(
    params_path: Path,
    *,
    preset: str | None = None,
    methods: list[str] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> tuple[dict[str, Any], Config]:
    """The changes that make params.yaml give, on its own, params.yaml + ``preset`` + ``methods`` + ``overrides``.

    Returns:
        ``(changes, target)``: dotted key -> value, and the target configuration (``preset`` None).

    Raises:
        ConfigError: the preset or an override does not validate.
        ParamsError: a bad run name or method.
    """
    raw = read_raw(params_path)
    defaults = Config().model_dump()
    base = validate_dict(deep_merge(defaults, {**raw, "preset": None}), origin=str(params_path)).model_dump()
    resolved = load_config(params_path, preset=preset, overrides=overrides)
    data = resolved.model_dump()
    if methods:
        data["runs"] = select_runs(resolved, methods)
    data["preset"] = None
    target = validate_dict(data, origin=f"{params_path} + preset {preset} + methods {methods}")
    check_run_names(list(target.runs))
    changes = diff_config(base, target.model_dump())
    if raw.get("preset") is not None:
        changes["preset"] = None
    return changes, target


def _float_text(value: float) -> str:
    """A float as YAML 1.1 and 1.2 both read it back as this float (PyYAML needs a '.' before an exponent)."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _node(value: Any) -> Any:
    """A ruamel node for ``value`` that PyYAML (switch_core) and ruamel (DVC) read back identically."""
    if isinstance(value, dict):
        node = CommentedMap()
        for k, v in value.items():
            node[k] = _node(v)
        if not value:
            node.fa.set_flow_style()
        return node
    if isinstance(value, (list, tuple)):
        seq = CommentedSeq(_node(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, str) and _ambiguous(value):
        return SingleQuotedScalarString(value)
    return value


def _ambiguous(text: str) -> bool:
    """Whether a plain (unquoted) YAML scalar ``text`` would not read back as this string ('no', '1e-3', '')."""
    try:
        return text == "" or yaml.safe_load(text) != text or YAML(typ="safe").load(text) != text
    except Exception:  # noqa: BLE001 - anything YAML cannot parse plainly must be quoted
        return True


def _yaml() -> YAML:
    handler = YAML()
    handler.width = 120
    handler.preserve_quotes = True
    handler.representer.add_representer(
        type(None), lambda rep, v: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    handler.representer.add_representer(
        float, lambda rep, v: rep.represent_scalar("tag:yaml.org,2002:float", _float_text(v))
    )
    return handler


def render_params(text: str, changes: dict[str, Any]) -> str:
    """params.yaml ``text`` with the dotted ``changes`` set; comments, order and untouched formatting kept.

    Raises:
        ParamsError: a change would put a key under a value that is not a mapping.
    """
    handler = _yaml()
    doc = handler.load(text) or CommentedMap()
    for dotted, value in changes.items():
        node = doc
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node or node[part] is None:
                node[part] = CommentedMap()
            node = node[part]
            if not isinstance(node, dict):
                raise ParamsError(f"params: {'.'.join(parts[: i + 1])} is a value, not a section: cannot set {dotted}")
        node[parts[-1]] = _node(value)
    out = io.StringIO()
    handler.dump(doc, out)
    return out.getvalue()


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def check_round_trip(text: str, changes: dict[str, Any], path: Path) -> None:
    """Check that PyYAML (switch_core) and ruamel.yaml (DVC) both read every changed key of ``text`` back as its new
    value, and that the whole file validates.

    Raises:
        ParamsError: a key reads back differently.
        ConfigError: the file does not validate.
    """
    views = {"PyYAML": yaml.safe_load(text), "ruamel.yaml": YAML(typ="safe").load(text)}
    for dotted, value in changes.items():
        for reader, data in views.items():
            if _lookup(data, dotted) != value:
                raise ParamsError(
                    f"{path}: {dotted} = {value!r} reads back as {_lookup(data, dotted)!r} with {reader}; "
                    "quote the value or write it in another form"
                )
    validate_dict(deep_merge(Config().model_dump(), views["PyYAML"]), origin=str(path))


def apply_params(
    params_path: str | Path,
    *,
    preset: str | None = None,
    methods: list[str] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    dry_run: bool = False,
) -> ParamsUpdate:
    """Materialise ``preset``, ``methods`` and ``overrides`` into params.yaml (module docstring).

    The file is rewritten only when its text changes, atomically, after :func:`check_round_trip`.

    Args:
        params_path: the params file (``<project>/params.yaml``).
        preset: preset name or path (``presets/NAME.yaml``), applied on top of the current params.yaml (on top of
            the schema defaults when the preset says ``base: defaults``).
        methods: run or method names to keep in ``runs`` (see :func:`select_runs`); None keeps ``runs``.
        overrides: ``["a.b=value"]`` or ``{"a.b": value}``, applied last.
        dry_run: compute the changes without writing.

    Returns:
        A :class:`ParamsUpdate`.

    Raises:
        ConfigError: the result does not validate.
        ParamsError: bad run names or methods, or a value that does not read back identically.
    """
    path = Path(params_path)
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    changes, target = plan_params(path, preset=preset, methods=methods, overrides=overrides)
    original = path.read_text(encoding="utf-8")
    text = render_params(original, changes) if changes else original
    if text == original:
        changes = {}
    elif not dry_run:
        check_round_trip(text, changes, path)
        atomic_write_text(path, text)
    return ParamsUpdate(path, changes, target, preset)


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.params``: apply a preset / methods / overrides to params.yaml and list the changes."""
    parser = argparse.ArgumentParser(prog="python -m tasks.params", description=help_text(__doc__.splitlines()[0]))
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--preset", default=None, help="preset name (presets/NAME.yaml) or path")
    parser.add_argument("--methods", default=None, help="comma-separated runs or methods to keep in `runs`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set optim.lr=1e-4 (repeatable; applied after the preset)")
    parser.add_argument("--dry-run", action="store_true", help="print the changes, do not write")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    try:
        update = apply_params(
            args.params, preset=args.preset, methods=methods, overrides=args.overrides, dry_run=args.dry_run
        )
    except (ConfigError, ParamsError) as err:
        print(f"tasks.params: {err}", file=sys.stderr)
        return 2
    verb = "would set" if args.dry_run else "set"
    for key, value in update.changes.items():
        print(f"{verb} {key} = {value!r}")
    if not update.changes:
        print(f"{args.params} already gives this configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
