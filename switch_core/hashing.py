"""Content fingerprints: what a resumable result (a training state, an evaluation, the SeqKD data) was made from.

A result is reused only when the fingerprints it recorded equal the current ones, so a changed checkpoint, data file
or library source is never silently continued from.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


def _update(digest: Any, path: Path, label: str) -> None:
    digest.update(label.encode() + b"\0")
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def files_fingerprint(paths: Iterable[Path]) -> str:
    """SHA-256 over the names and bytes of ``paths`` (in sorted order).

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        OSError: a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        _update(digest, path, path.name)
    return f"sha256:{digest.hexdigest()}"


def checkpoint_fingerprint(model_path: str | Path) -> str:
    """Content hash of a checkpoint: the non-hidden files of the folder (a ``.gguf`` file: its bytes). A name that is
    not a local path (a hub name) is fingerprinted by the name.

    Returns:
        ``"sha256:<hex>"``, or ``"name:<model_path>"`` for a non-local model.
    """
    path = Path(model_path).expanduser()
    if not path.exists():
        return f"name:{model_path}"
    if path.is_file():
        return files_fingerprint([path])
    return files_fingerprint(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def source_fingerprint() -> str:
    """Hash of the ``switch_core`` package's Python source (the code a result was computed with).

    Returns:
        ``"sha256:<hex>"`` over the relative paths and bytes of ``switch_core/**/*.py``.
    """
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        _update(digest, path, path.relative_to(PACKAGE_DIR).as_posix())
    return f"sha256:{digest.hexdigest()}"


def stat_fingerprint(path: str | Path) -> str:
    """A cheap identity of a file or folder: SHA-256 over the relative path, size (bytes) and modification time (ns)
    of every file in it (recursively, in sorted order), without reading the files. A rewritten file (a retrained
    checkpoint, a new evaluation) changes it; so does a copy that does not keep modification times.

    Returns:
        ``"stat:<16 hex>"``, or ``"absent"`` when ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        return "absent"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        info = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return f"stat:{digest.hexdigest()[:16]}"
