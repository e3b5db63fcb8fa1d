"""The git commit of a checkout, as the documents state it (RESULTS.md, ABLATIONS.md): the code that made a run and
the code that wrote the document."""
from __future__ import annotations

import subprocess
from pathlib import Path

DIRTY_MARK = " + uncommitted changes"
"""What :func:`git_commit` appends to the sha when tracked files differ from ``HEAD``."""


STUDY_FILES = ("params.yaml", "dvc.lock")
"""Tracked files a study rewrites by design (the preset applied, the stages' hashes): not code, so not a change to the
code that made it."""

CODE_PATHS = (".", *(f":(exclude){name}" for name in STUDY_FILES))
"""The pathspec of :func:`git_commit` for the code of a study's checkout: everything tracked but :data:`STUDY_FILES`."""


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
    return f"{sha}{DIRTY_MARK}" if dirty.stdout.strip() else sha


def split_commit(commit: str) -> tuple[str, bool]:
    """``(sha, dirty)`` of a commit as :func:`git_commit` states it (``"<sha> + uncommitted changes"`` or ``"<sha>"``)."""
    dirty = commit.endswith(DIRTY_MARK)
    return (commit[: -len(DIRTY_MARK)] if dirty else commit).strip(), dirty


def provenance_lines(commit: str | None, generated_with: str | None, made: str = "the runs") -> list[str]:
    """The code lines of a document's provenance: the commit that made ``made`` and, when it differs, the commit that
    wrote the document, with a ``git diff`` between the bare shas; uncommitted changes are stated in words (they are
    not recorded, so no command shows them)."""
    if not commit:
        return ["- code: git commit unknown (pass `--commit`)"]
    sha, dirty = split_commit(commit)
    lines = [f"- code: git commit `{sha}`" + (" with uncommitted changes (not recorded)" if dirty else "")]
    if not generated_with or generated_with == commit:
        return lines
    gen_sha, gen_dirty = split_commit(generated_with)
    gen_note = " with uncommitted changes" if gen_dirty else ""
    if gen_sha == sha:
        lines.append(f"- this document was generated with the code at the same commit `{sha}`"
                     + (gen_note or " without uncommitted changes"))
    else:
        lines.append(f"- this document was generated with the code at `{gen_sha}`{gen_note}; `git diff {sha} {gen_sha}` "
                     f"shows what changed since {made}" + (" (committed changes only)" if dirty or gen_dirty else ""))
    return lines
