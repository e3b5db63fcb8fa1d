"""The git commit of a checkout, as the documents state it (RESULTS.md, ABLATIONS.md): the code that made a run and
the code that wrote the document."""
from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(root: Path, paths: tuple[str, ...] = ()) -> str | None:
    """``HEAD`` of the git checkout at ``root`` (``"<sha> + uncommitted changes"`` when tracked files differ, only those
    under ``paths`` when given), or None when ``root`` is not a git checkout or git is missing."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *paths],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    sha = head.stdout.strip()
    return f"{sha} + uncommitted changes" if dirty.stdout.strip() else sha
