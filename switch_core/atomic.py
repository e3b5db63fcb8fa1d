"""Atomic file writes: write a temporary sibling, fsync, rename. A reader sees the old file or the new one.

The written file gets the permissions of any newly created file (``0o666`` less the process umask), not the
owner-only ``0o600`` of the temporary file, so a shared checkout's group can read checkpoints and summaries.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (read by setting it and putting it back: ``os.umask`` has no read-only form)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: str | Path) -> None:
    """Give every file under ``folder`` the mode of a newly created file (``0o666`` less the umask): writers that
    create files owner-only (safetensors' ``save_file`` writes ``0o600``) then match every other file.

    Raises:
        OSError: a file's mode cannot be changed.
    """
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders.

    Raises:
        OSError: the folder cannot be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent folders.

    Raises:
        OSError: the folder cannot be created or written.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
