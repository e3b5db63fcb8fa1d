"""Write docs/ABLATIONS.md (and its plots, in docs/ablations/) from the outputs of the paper's ablations:
``switch-kd ablation-doc``.

An ablation is a named grid of a grid file (``--grids``, default presets/grids/paper-ablations.yaml: ``schedules``,
``decay``, ``strategies``) that the ``ablation`` flow ran with a ``--study`` prefix into a run folder; its cells are
the grid's cells under that prefix (switch_core.grids), e.g. ``abl-schedules-schedule_exponential``. Give each as
``--ablation NAME[=RUN_DIR[:STUDY]]`` (repeatable; RUN_DIR defaults to the configuration's run_dir, STUDY to
``abl-NAME``); without ``--ablation``, every grid of the file is looked for in the configuration's run_dir. The
teacher-student gap ablation is two run folders, ``--gap-small`` (default: the configuration's run_dir) and
``--gap-large``, each with SWITCH (``--gap-switch``) and a baseline (``--gap-baseline``, default: the strongest
evaluated in both). ``--reference`` adds other models of an ablation's run folder as rows (default: teacher,
student-sft and switch, those evaluated there).

A claim whose inputs are missing is listed as not run, so the command works with any subset of the ablations done.
The commit is HEAD of the project's checkout (``--commit`` to give it); the commands are given with ``--command``
(repeatable) or reconstructed (the flow's command line per ablation and its deployment run); ``--note`` adds a remark
of whoever ran them. Example::

    switch-kd ablation-doc --preset dolly-smollm2 --ablation schedules --ablation decay=runs/dolly-smollm2:abl-decay \\
        --gap-large runs/dolly-smollm2-6l --note "run on 2 cores"
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from switch_core.config import Config, ConfigError
from switch_core.git_info import CODE_PATHS, git_commit
from switch_core.grids import grid_names, grid_points, load_grid
from switch_core.layout import RunLayout
from switch_core.reporting.ablations import AblationSpec, cell_settings, reference_settings
from switch_core.reporting.ablations_md import GapSpec, write_ablations_doc

DEFAULT_GRIDS = "presets/grids/paper-ablations.yaml"
DEFAULT_REFERENCES = ("teacher", "student-sft", "switch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ablation", dest="ablations", action="append", default=None,
                        metavar="NAME[=RUN_DIR[:STUDY]]",
                        help="an ablation: the grid NAME of --grids, the run folder its cells wrote to (default: the "
                        "configuration's run_dir) and the flow's --study prefix (default: abl-NAME); repeatable, in "
                        "document order (default: every grid of --grids)")
    parser.add_argument("--grids", default=DEFAULT_GRIDS, help=f"the grid file (default: {DEFAULT_GRIDS}; a relative "
                        "path is taken from the project folder)")
    parser.add_argument("--method", default="switch", help="the method the flow ablated (its --method; default: "
                        "switch), for the settings of cells the configuration does not hold")
    parser.add_argument("--reference", dest="references", action="append", default=None, metavar="MODEL",
                        help="a model of the ablation's run folder shown as a reference row (repeatable; default: "
                        f"{', '.join(DEFAULT_REFERENCES)})")
    parser.add_argument("--gap-small", default=None, metavar="RUN_DIR", help="run folder of the small-gap pair "
                        "(default: the configuration's run_dir)")
    parser.add_argument("--gap-large", default=None, metavar="RUN_DIR", help="run folder of the large-gap pair (SWITCH "
                        "and the baseline trained on the large-gap student); without it the gap claim is not run")
    parser.add_argument("--gap-switch", default="switch", help="the SWITCH run in both gap folders (default: switch)")
    parser.add_argument("--gap-baseline", default=None, help="the baseline of the gap ablation (default: the "
                        "strongest run evaluated in both gap folders, SWITCH runs excluded)")
    parser.add_argument("--out", default="docs/ABLATIONS.md", help="markdown file; plots go to <its folder>/ablations/ "
                        "(a relative path is taken from the project folder)")
    parser.add_argument("--commit", default=None, help="git commit of the code that made the runs (default: HEAD of "
                        "the project's checkout, marked when it has uncommitted changes)")
    parser.add_argument("--command", dest="commands", action="append", default=None, metavar="CMD",
                        help="a command that produced the ablations, shown verbatim (repeatable; default: "
                        "reconstructed)")
    parser.add_argument("--title", default="Ablations", help="the document's first heading (default: Ablations)")
    parser.add_argument("--note", dest="notes", action="append", default=[], metavar="TEXT",
                        help="a remark of whoever ran the ablations, shown under Provenance (repeatable)")


def parse_ablation(text: str, default_run_dir: str) -> tuple[str, str, str]:
    """``NAME[=RUN_DIR[:STUDY]]`` -> ``(name, run_dir, study)`` (defaults: ``default_run_dir``, ``abl-NAME``).

    Raises:
        ConfigError: an empty name, run folder or study.
    """
    name, _, rest = text.partition("=")
    run_dir, study = (rest.rsplit(":", 1) if ":" in rest else (rest, "")) if rest else (default_run_dir, "")
    if not name or not run_dir or (":" in rest and not study):
        raise ConfigError(f"--ablation {text!r}: give NAME[=RUN_DIR[:STUDY]], e.g. schedules=runs/x:abl-schedules")
    return name, run_dir, study or f"abl-{name}"


def _resolve(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def reconstructed_commands(args: argparse.Namespace, specs: list[AblationSpec]) -> list[str]:
    """The commands that most likely made the ablations: per ablation the flow's command line and the equivalent
    deployment run, then this command itself. An ablation whose run folder holds not exactly the grid's cells
    (``models/<cell>`` or ``eval/<cell>``: a subset, or cells of the study prefix from another grid) gets a comment
    line saying so before its guessed command lines."""
    config_args = (["--preset", args.preset] if args.preset else []) + [
        part for override in args.overrides for part in ("--set", override)
    ]
    commands = []
    for spec in specs:
        ran = {p.name for folder in ("models", "eval") for p in (spec.run_dir / folder).glob(f"{spec.study}-*")}
        found, extra = ran & set(spec.points), ran - set(spec.points)
        if len(found) < len(spec.points) or extra:
            commands.append(f"# {spec.name}: {len(found)} of the {len(spec.points)} cells of {spec.grid_spec} found"
                            + (f", and {len(extra)} other {spec.study}-* cells" if extra else "")
                            + ": the lines below are a guess, not the recorded commands")
        method = [] if args.method == "switch" else ["--method", args.method]
        commands.append(shlex.join(["python", "-m", "flows.ablation", *config_args, "--grid", spec.grid_spec,
                                    "--study", spec.study, *method]))
        params = [f"grid={spec.grid_spec}", f"study={spec.study}"] + ([f"preset={args.preset}"] if args.preset else [])
        params += [f"method={args.method}"] if args.method != "switch" else []
        params += [f"overrides={json.dumps(args.overrides)}"] if args.overrides else []
        commands.append(shlex.join(["prefect", "deployment", "run", "ablation/default",
                                    *[part for p in params for part in ("-p", p)]]))
    own = ["switch-kd", "ablation-doc", *config_args, "--out", args.out]
    own += [part for a in args.ablations or () for part in ("--ablation", a)]
    own += [part for flag, value in (("--gap-small", args.gap_small), ("--gap-large", args.gap_large),
                                     ("--gap-baseline", args.gap_baseline)) if value for part in (flag, value)]
    return [*commands, shlex.join(own)]


def run(args: argparse.Namespace) -> int:
    root = Path(args.project_root)
    config: Config = args.config
    default_run_dir = str(RunLayout.from_config(config, root).root)
    grids_path = _resolve(root, args.grids)
    names = args.ablations or grid_names(grids_path)
    specs = []
    references = tuple(args.references or DEFAULT_REFERENCES)
    for text in names:
        name, run_dir, study = parse_ablation(text, default_run_dir)
        points = grid_points(study, load_grid(f"{grids_path}:{name}"))
        specs.append(AblationSpec(
            name=name, run_dir=_resolve(root, run_dir), study=study, points=points, grid_spec=f"{args.grids}:{name}",
            settings=cell_settings(config, args.method, points) | reference_settings(config, references),
            references=references,
            label=run_dir if run_dir != default_run_dir else config.run_dir,
        ))
    gap = GapSpec(
        small_dir=_resolve(root, args.gap_small) if args.gap_small else Path(default_run_dir),
        large_dir=_resolve(root, args.gap_large) if args.gap_large else None,
        switch=args.gap_switch, baseline=args.gap_baseline,
        method_of={name: r.method for name, r in config.runs.items()},
        settings=reference_settings(config, list(config.runs)),
        labels=(args.gap_small or config.run_dir, args.gap_large or ""),
    )
    out = _resolve(root, args.out)
    commands = args.commands or reconstructed_commands(args, specs)
    note = None if args.commands else (
        "(Reconstructed from the arguments, not recorded: the ablations may have run with other grids or cells; "
        "`--command` records the exact ones.)")
    code = git_commit(Path(__file__).resolve().parents[2], ("switch_core",))
    doc = write_ablations_doc(specs, out, benchmarks=config.eval.benchmarks, commands=commands,
                              commit=args.commit or git_commit(root, CODE_PATHS), gap=gap, generated_with=code,
                              commands_note=note, notes=args.notes, title=args.title)
    print(f"ablations: {doc.markdown}")
    print(f"plots: {', '.join(str(p) for p in doc.plots) or 'none yet'}")
    for name, status in doc.claims.items():
        print(f"claim {name}: {status}")
    if doc.missing:
        print(f"missing ({len(doc.missing)}): " + "; ".join(doc.missing))
    return 0
