"""A scratch workspace: a copy of the project (tracked files and untracked ones git does not ignore) in a new git
repository with one commit, for tests and CI that run DVC and Prefect without touching the real workspace. ::

    python -m tasks.workspace SRC DST
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

GENERATED = ("mlartifacts/", ".prefect/", "dvc_plots/", "bench/")
"""Untracked folders that are run output or not part of the pipeline; never copied."""


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout


def project_files(src: Path) -> list[str]:
    """Repository-relative paths of the files a scratch copy holds: tracked files and untracked files git does not
    ignore, except :data:`GENERATED` folders and files deleted from the work tree."""
    listed = _git(src, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    return sorted({p for p in listed if p and not p.startswith(GENERATED) and (src / p).is_file()})


def clone_workspace(src: str | Path, dst: str | Path) -> Path:
    """Copy the project at ``src`` into ``dst`` (created, must not exist) and commit it there.

    Raises:
        FileExistsError: ``dst`` exists.
        RuntimeError: a git command failed.
    """
    src, dst = Path(src).resolve(), Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; give a new folder")
    for rel in project_files(src):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    _git(dst, "init", "-q", "-b", "main")
    _git(dst, "config", "user.email", "ci@switch-kd.invalid")  # DVC experiments commit
    _git(dst, "config", "user.name", "switch-kd")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-q", "-m", "snapshot")
    return dst.resolve()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m tasks.workspace SRC DST", file=sys.stderr)
        sys.exit(2)
    print(clone_workspace(sys.argv[1], sys.argv[2]))
