"""What a training command (``sft``, ``distill``) does with a saved state: the ``--restart`` / ``--resume`` /
``--resume-compatible`` flags.

=====================  =====================================================================================
flag                   with a saved state in ``state/<name>``
=====================  =====================================================================================
(none), ``--resume``   continued when it belongs to the same settings and inputs (a warning if the library code
                       changed); otherwise an error that names ``--restart``: nothing is deleted
``--resume-compatible``  continued when settings, inputs and code are the same; otherwise the run starts over,
                       replacing it (what dvc.yaml and ``switch-kd pipeline`` run: a stage re-run for a changed
                       dependency never continues a stale state, a killed one continues)
``--restart``          discarded: the run starts over
=====================  =====================================================================================

So re-running an interrupted command continues it; only an explicit flag ever deletes a saved state.
"""
from __future__ import annotations

import argparse


def add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mutually exclusive ``--restart``, ``--resume`` and ``--resume-compatible`` flags (module docstring)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--restart", action="store_true",
        help="discard the saved training state, if any, and start over",
    )
    group.add_argument(
        "--resume", action="store_true",
        help="continue the saved training state (the default: an error, naming --restart, if it belongs to other "
        "settings or inputs)",
    )
    group.add_argument(
        "--resume-compatible", action="store_true",
        help="continue a saved state of the same settings, inputs and code, else start over (dvc.yaml uses this)",
    )


def resume_options(args: argparse.Namespace) -> dict[str, bool]:
    """The ``resume`` and ``restart_if_incompatible`` keyword arguments of ``sft`` / ``distill`` from the flags of
    :func:`add_resume_arguments`."""
    return {"resume": not args.restart, "restart_if_incompatible": args.resume_compatible}
