"""Which switch_core source files a pipeline stage's command can execute: the static import closure of its module.

DVC re-runs a stage when one of its declared dependencies changes; a missing code dependency silently keeps a stale
model. ``dvc.yaml`` lists each stage's code dependencies by hand and a test compares them with this closure, so the two
cannot drift apart. Imports inside functions count (they can run); imports of other packages do not. Empty files (a
bare ``__init__.py``) need not be declared: they execute nothing, and DVC warns about empty dependencies.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "switch_core"

OBSERVABILITY_ONLY = frozenset({"switch_core/tracking.py", "switch_core/cli.py"})
"""Files left out of every stage's dependencies: argument plumbing and metric reporting, which do not change any
output a stage writes (a change there must not retrain every model). The validated configuration values they route
are tracked as DVC params."""


def module_file(root: Path, module: str) -> Path | None:
    """The source file of ``module`` under ``root`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the ``switch_core`` modules that ``path`` imports (``from a import b`` gives ``a`` and
    ``a.b``; the caller keeps those that exist)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


@cache
def import_closure(root: Path, module: str) -> frozenset[str]:
    """Repository-relative paths of every ``switch_core`` file that importing ``module`` can load, including each
    package's ``__init__.py`` on the way.

    Raises:
        FileNotFoundError: ``module`` has no source file under ``root``.
    """
    start = module_file(root, module)
    if start is None:
        raise FileNotFoundError(f"no source file for module {module} under {root}")
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # parent packages run their __init__ first
            path = module_file(root, ".".join(parts[:i]))
            if path is None:
                continue
            rel = path.relative_to(root).as_posix()
            if rel in seen:
                continue
            seen.add(rel)
            pending.extend(_imported_modules(path))
    return frozenset(seen)


def expand_deps(root: Path, deps: list[str]) -> set[str]:
    """Repository-relative ``.py`` files named by dvc.yaml dependency paths (folders expanded recursively)."""
    files: set[str] = set()
    for dep in deps:
        path = root / dep
        if path.is_dir():
            files.update(p.relative_to(root).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.suffix == ".py":
            files.add(Path(dep).as_posix())
    return files
