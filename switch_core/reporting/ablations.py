"""The numbers of an ablation (a grid of the ``ablation`` flow, :mod:`switch_core.grids`) read from its run folder, one
row per cell: ROUGE-L over seeds, teacher share of the cell's rollouts overall and by position, stop rate and response
length of its evaluation answers, and the τ0 and λ in force; and the two run folders of the teacher-student gap
ablation.

Every score is computed as in docs/RESULTS.md (:mod:`switch_core.reporting.scores`: mean ± sample sd over generation
seeds, the average over benchmarks taken per seed first); the teacher share is that of
:mod:`switch_core.reporting.teacher_share`. Missing outputs (a cell still training) are listed, never fatal.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from switch_core.config import ROLLOUT_DATA, Config, MethodConfig, RolloutConfig, validate_dict
from switch_core.grids import cell_overrides
from switch_core.layout import RunLayout
from switch_core.reporting.loading import read_json
from switch_core.reporting.references import REFERENCE_MODELS
from switch_core.reporting.run_outputs import RunOutputs, load_run_outputs, writes_rollout_traces
from switch_core.reporting.scores import Score, average_scores, benchmark_scores, has_per_seed
from switch_core.reporting.teacher_share import position_buckets, teacher_share


@dataclass(frozen=True)
class CellSettings:
    """What a cell's configuration sets for its rollouts: the strategy, the threshold schedule, its λ and the linear
    schedule's horizon T in tokens (``rollout.horizon``, else ``rollout.max_new_tokens``); ``traced``: whether its
    training writes rollout traces (:func:`~switch_core.reporting.run_outputs.writes_rollout_traces`)."""

    strategy: str
    schedule: str
    decay: float
    traced: bool = True
    horizon: int | None = None


@dataclass(frozen=True)
class AblationSpec:
    """One ablation to report.

    Attributes:
        name: the grid's name (``schedules``, ``decay``, ``strategies`` for the paper's claims, or another).
        run_dir: the run folder the cells wrote to.
        study: the ``--study`` prefix of the cells' names.
        points: cell name -> its grid values ``{axis: value}`` (:func:`switch_core.grids.grid_points`), in grid order.
        grid_spec: how the flow was given the grid (``presets/grids/paper-ablations.yaml:schedules``), for the commands.
        settings: cell or reference name -> its settings in force (:func:`cell_settings`,
            :func:`reference_settings`); rows without are shown as unknown.
        references: other models of the run folder shown as reference rows (the study's ``switch`` run, baselines...).
        label: how the run folder is named in the text (default: ``run_dir``).
    """

    name: str
    run_dir: Path
    study: str
    points: Mapping[str, Mapping[str, Any]]
    grid_spec: str
    settings: Mapping[str, CellSettings] = field(default_factory=dict)
    references: Sequence[str] = ()
    label: str | None = None


@dataclass(frozen=True)
class Row:
    """One cell (or reference model) of an ablation table; None / empty where its outputs are missing.

    ``share`` is ``(teacher tokens / tokens, tokens)`` over all rollout tokens of its trace, ``buckets``
    ``[(position label, share, tokens)]`` (:func:`~switch_core.reporting.teacher_share.position_buckets`), ``tau0``
    the τ0 of its train_summary.json and ``tau0_source`` where it came from (:func:`tau0_source`), ``stop`` the share
    of evaluation answers ended by a stop token and ``length`` their mean length in tokens, both averaged over the
    benchmarks per seed.
    """

    name: str
    point: Mapping[str, Any]
    settings: CellSettings | None
    tau0: float | None
    tau0_source: str
    average: Score | None
    per_benchmark: Mapping[str, Score]
    share: tuple[float, int] | None
    buckets: Sequence[tuple[str, float, int]]
    stop: Score | None
    length: Score | None


@dataclass
class AblationResult:
    """An ablation's rows read from its run folder (:func:`read_ablation`)."""

    spec: AblationSpec
    cells: list[str]
    references: list[str]
    rows: dict[str, Row]
    benchmarks: list[str]
    traces: dict[str, pd.DataFrame]
    missing: list[str]

    found: set[str] = field(default_factory=set)
    """The cells that left any output (an evaluation, a training summary or a rollout trace)."""

    def ran(self) -> bool:
        """Whether any cell left an output."""
        return bool(self.found)

    def value(self, cell: str, *axes: str) -> Any:
        """The cell's grid value on the first of ``axes`` it has (an alias or its dotted key), else None."""
        point = self.spec.points[cell]
        return next((point[a] for a in axes if a in point), None)


def cell_settings(config: Config, method: str, points: Mapping[str, Mapping[str, Any]]) -> dict[str, CellSettings]:
    """The rollout settings in force in each cell: the cell's entry of ``config.runs`` when the configuration holds it
    (the flow writes every cell into params.yaml), else ``config`` with the cell's grid values applied as the flow
    does (:func:`switch_core.grids.cell_overrides` for ``method``).

    Raises:
        ConfigError: a grid value the configuration refuses.
    """
    out = {}
    for name, point in points.items():
        source = config
        if name not in config.runs:
            data = config.model_dump()
            data["runs"] = {name: {"method": method, "overrides": cell_overrides(method, dict(point))}}
            source = validate_dict(data, origin=f"grid cell {name}")
        out[name] = _settings(source.method_config(name), source.run_config(name).rollout)
    return out


def _settings(method: MethodConfig, rollout: RolloutConfig) -> CellSettings:
    """The :class:`CellSettings` of a run's method and rollout sections (after its overrides)."""
    strategy = method.rollout_strategy or rollout.strategy
    return CellSettings(strategy, rollout.schedule, rollout.decay, writes_rollout_traces(method.data, strategy),
                        rollout.horizon or rollout.max_new_tokens)


def reference_settings(config: Config, references: Sequence[str]) -> dict[str, CellSettings]:
    """The rollout settings of the reference rows that are runs of ``config`` and train on rollouts (e.g. the study's
    ``switch`` run), so that their τ0 and λ are shown; teacher and student-sft have none."""
    out = {}
    for name in references:
        if name not in config.runs:
            continue
        method = config.method_config(name)
        if method.data in ROLLOUT_DATA:
            out[name] = _settings(method, config.run_config(name).rollout)
    return out


def tau0_source(summary: Mapping[str, Any]) -> str:
    """Where a run's τ0 came from, from its ``train_summary.json``: ``"set"`` (configured), ``"calibrated"`` (searched
    to the target teacher share) or ``"calibrated, at the ln 2 bound"`` (the search stopped at the largest τ0, ln 2,
    the JSD's maximum, with the target share out of reach: the run's share is above its target)."""
    calibration = summary.get("calibration")
    if calibration is None:
        return "set"
    return "calibrated, at the ln 2 bound" if calibration.get("bounded") else "calibrated"


def _row(outputs: RunOutputs, name: str, point: Mapping[str, Any], settings: CellSettings | None,
         benchmarks: Sequence[str]) -> Row:
    evals = {name: outputs.evaluations[name]} if name in outputs.evaluations else {}
    average = average_scores(evals, benchmarks).get(name)
    measured = bool(evals) and has_per_seed(evals, "mean_prediction_length") and has_per_seed(evals, "stopped_fraction")
    stop = average_scores(evals, benchmarks, "stopped_fraction").get(name) if measured else None
    length = average_scores(evals, benchmarks, "mean_prediction_length").get(name) if measured else None
    summary = outputs.summaries.get(name, {})
    trace = outputs.traces.get(name)
    return Row(
        name=name, point=dict(point), settings=settings,
        tau0=None if summary.get("tau0") is None else float(summary["tau0"]),
        tau0_source=tau0_source(summary),
        average=average, per_benchmark=benchmark_scores(evals).get(name, {}),
        share=teacher_share(trace) if trace is not None else None,
        buckets=position_buckets(trace) if trace is not None else [],
        stop=stop, length=length,
    )


def read_ablation(spec: AblationSpec, benchmarks: Sequence[str]) -> AblationResult:
    """An ablation's rows from its run folder: one per cell (grid order), then one per reference model evaluated there.

    Args:
        spec: the ablation.
        benchmarks: the benchmarks expected; the averages are over those evaluated by at least one cell.

    Returns:
        The :class:`AblationResult`; ``missing`` lists each cell's absent evaluations, training summary and rollout
        trace, and the references not evaluated.

    Raises:
        ReportInputError: an output file that exists but is not readable (names the file).
    """
    cells = list(spec.points)
    outputs = load_run_outputs(spec.run_dir, cells)
    done = [b for b in benchmarks if any(b in outputs.evaluations.get(c, {}) for c in cells)]
    references = [r for r in spec.references if r in outputs.evaluations]
    rows = {c: _row(outputs, c, spec.points[c], spec.settings.get(c), done) for c in cells}
    rows |= {r: _row(outputs, r, {}, spec.settings.get(r), done) for r in references}
    missing = []
    for cell in cells:
        absent = [b for b in benchmarks if b not in outputs.evaluations.get(cell, {})]
        if absent:
            missing.append(f"evaluation of `{cell}` on {', '.join(absent)}")
        if cell not in outputs.summaries:
            missing.append(f"models/{cell}/train_summary.json")
        settings = spec.settings.get(cell)
        if (settings is None or settings.traced) and cell not in outputs.traces:
            missing.append(f"state/{cell}/rollout_traces.jsonl")
    missing += [f"evaluation of the reference `{r}`" for r in spec.references if r not in references]
    traces = {c: outputs.traces[c] for c in cells if c in outputs.traces}
    found = {c for c in cells if c in outputs.evaluations or c in outputs.summaries or c in outputs.traces}
    return AblationResult(spec, cells, references, rows, done, traces, missing, found)


@dataclass(frozen=True)
class GapPair:
    """SWITCH and a baseline in the run folder of one teacher-student pair (the gap ablation).

    ``switch`` / ``baseline`` / ``teacher`` are their average ROUGE-L over ``benchmarks`` (None: not evaluated on every
    one), ``student`` the warmed-up (else the untrained) student's, with its name; ``rows`` the :class:`Row` of each of
    SWITCH, the baseline and that student evaluated there (τ0, teacher share of the training rollouts, stop rate,
    response length), in that order; ``layers`` the decoder layers of that student and of the teacher
    (:func:`model_layers`).
    """

    label: str
    run_dir: str
    benchmarks: list[str]
    switch: Score | None
    baseline: Score | None
    teacher: Score | None
    student: tuple[str, Score] | None
    rows: Mapping[str, Row] = field(default_factory=dict)
    layers: tuple[int | None, int | None] = (None, None)

    def layers_text(self) -> str | None:
        """``"20 of 30 layers"`` (student of teacher), ``"20 layers"`` without the teacher's; None when unknown."""
        student, teacher = self.layers
        if student is None:
            return None
        return f"{student} of {teacher} layers" if teacher is not None else f"{student} layers"


LAYER_KEYS = ("num_hidden_layers", "n_layer")
"""Keys of a Hugging Face ``config.json`` that hold the number of decoder layers (``n_layer``: GPT-2)."""


def model_layers(run_dir: str | Path, name: str) -> int | None:
    """The number of decoder layers of the run folder's model ``name`` (``models/<name>/config.json``,
    :data:`LAYER_KEYS`); None when the checkpoint or the key is absent (e.g. outputs kept without their models).

    Raises:
        ReportInputError: a config.json that is not a JSON object.
    """
    path = RunLayout(Path(run_dir)).model(name) / "config.json"
    if not path.is_file():
        return None
    config = read_json(path)
    return next((int(config[k]) for k in LAYER_KEYS if isinstance(config.get(k), int)), None)


def strongest_baseline(small: RunOutputs, large: RunOutputs, switch: str, benchmarks: Sequence[str],
                       method_of: Mapping[str, str]) -> str | None:
    """The baseline of the gap ablation: of the models evaluated in both run folders, references and SWITCH runs
    (``switch``, and runs whose method is ``switch`` in ``method_of``) excepted, the one with the highest average
    ROUGE-L over ``benchmarks`` on the small-gap pair (the large-gap folder holds only what was trained on the
    large-gap student, so runs of the small-gap study alone, ablation cells included, drop out); None when there is
    none (or none evaluated on every benchmark).
    """
    both = [m for m in small.evaluations if m in large.evaluations and m not in REFERENCE_MODELS and m != switch
            and method_of.get(m) != "switch"]
    averages = average_scores({m: small.evaluations[m] for m in both}, benchmarks)
    return max(sorted(averages), key=lambda m: averages[m].mean) if averages else None


def gap_pair(outputs: RunOutputs, label: str, run_label: str, switch: str, baseline: str | None,
             benchmarks: Sequence[str], settings: Mapping[str, CellSettings] | None = None) -> GapPair:
    """One pair of the gap ablation from its run folder's outputs (averages over the ``benchmarks`` that SWITCH was
    evaluated on); ``settings``: run name -> its rollout settings (:func:`reference_settings`), for the rows' τ0 and
    λ."""
    done = [b for b in benchmarks if b in outputs.evaluations.get(switch, {})]
    averages = average_scores(outputs.evaluations, done)
    student = next(((s, averages[s]) for s in ("student-sft", "student-init") if s in averages), None)
    names = [n for n in (switch, baseline, student and student[0]) if n and n in outputs.evaluations]
    rows = {n: _row(outputs, n, {}, (settings or {}).get(n), done) for n in names}
    layers = (model_layers(outputs.run_dir, student[0]) if student else None, model_layers(outputs.run_dir, "teacher"))
    return GapPair(label, run_label, done, averages.get(switch), averages.get(baseline) if baseline else None,
                   averages.get("teacher"), student, rows, layers)


def read_gap_pairs(small_dir: str | Path, large_dir: str | Path, *, switch: str, baseline: str | None,
                   benchmarks: Sequence[str], method_of: Mapping[str, str] | None = None,
                   labels: tuple[str, str] | None = None, settings: Mapping[str, CellSettings] | None = None
                   ) -> tuple[GapPair, GapPair, str | None]:
    """The gap ablation: SWITCH and the strongest baseline on the small-gap and the large-gap pair.

    Args:
        small_dir, large_dir: the run folders of the two pairs.
        switch: the SWITCH run's name (in both folders).
        baseline: the baseline's name; None = :func:`strongest_baseline`.
        benchmarks: the benchmarks expected.
        method_of: run name -> method, to keep SWITCH runs out of the baselines (None: by name only).
        labels: how the two folders are named in the text (default: as given).
        settings: run name -> its rollout settings (:func:`reference_settings`), for the rows' τ0 and λ.

    Returns:
        ``(small pair, large pair, baseline name or None)``.

    Raises:
        ReportInputError: an output file that exists but is not readable.
    """
    small, large = load_run_outputs(small_dir), load_run_outputs(large_dir)
    if baseline is None:
        baseline = strongest_baseline(small, large, switch, benchmarks, method_of or {})
    names = labels or (str(small_dir), str(large_dir))
    return (gap_pair(small, "small gap", names[0], switch, baseline, benchmarks, settings),
            gap_pair(large, "large gap", names[1], switch, baseline, benchmarks, settings), baseline)
