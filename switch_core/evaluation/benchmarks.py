"""The benchmark registry: where each evaluation set is found, and loading it as :class:`InstructionRecord` lists.

The five instruction-following sets of MiniLLM / DistiLLM (METHOD.md §5.1) in MiniLLM's processed JSONL format, plus
the run's own test split (``embedded``):

- ``dolly``: ``dolly/valid.jsonl`` (hub ``MiniLLM/dolly`` ``valid.jsonl``), all 500;
- ``self-inst``: ``self-inst/valid.jsonl`` (hub ``MiniLLM/self-inst``), all 242;
- ``vicuna``: ``vicuna/valid.jsonl`` (hub ``MiniLLM/Vicuna``), all 80;
- ``sinst``: ``sinst/valid.jsonl`` or ``sinst/11_/valid.jsonl`` (hub ``MiniLLM/sinst`` ``11_/valid.jsonl``), all
  rows; references are lists;
- ``uinst``: ``uinst/valid.jsonl`` or ``uinst/11_/valid.jsonl`` (hub ``MiniLLM/uinst`` ``11_/valid.jsonl``), the
  first 10,000 rows (``--dev-num 10000`` in the MiniLLM / DistiLLM eval scripts);
- ``embedded``: ``{run_dir}/data/test.jsonl``, the test split written by ``prepare-data``.

Local paths are relative to ``data_dir`` (``eval.data_dir``, e.g. ``../shared/data``). A set is looked for in the
local candidates first, then downloaded from the Hugging Face hub with ``huggingface_hub.hf_hub_download`` (the
MiniLLM hub repos keep S-NI / UnNI length buckets in sub-folders such as ``11_/``, so the exact file is fetched
rather than letting ``datasets`` merge every bucket). A hub "name" that is an existing local folder is read as a
local copy of that repo. A set found nowhere raises :class:`BenchmarkNotFoundError` listing every place tried.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from switch_core.data.readers import read_minillm_jsonl
from switch_core.data.records import InstructionRecord
from switch_core.data.splits import read_records

EMBEDDED_BENCHMARK = "embedded"


class BenchmarkNotFoundError(ValueError):
    """A benchmark that is not registered, or whose data is in none of the places it was looked for."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where one benchmark's data lives and how much of it is evaluated.

    Attributes:
        name: registry name (also the output folder name).
        description: one line for reports.
        local_files: candidate paths relative to ``data_dir``, tried in order.
        hub_repo: Hugging Face dataset repo id (or a local folder holding a copy of it); None = local only.
        hub_file: the file inside ``hub_repo``.
        max_examples: evaluate only the first N rows of the file (UnNI: 10,000, docs/METHOD.md §5.1); None = all.
        run_split: read ``{run_dir}/data/{run_split}.jsonl`` (the run's own split) instead of ``data_dir``.
    """

    name: str
    description: str
    local_files: tuple[str, ...] = ()
    hub_repo: str | None = None
    hub_file: str = "valid.jsonl"
    max_examples: int | None = None
    run_split: str | None = None


BENCHMARKS: Mapping[str, BenchmarkSpec] = MappingProxyType(
    {
        "dolly": BenchmarkSpec(
            "dolly", "databricks-dolly-15k test (500)", ("dolly/valid.jsonl",), "MiniLLM/dolly", "valid.jsonl"
        ),
        "self-inst": BenchmarkSpec(
            "self-inst", "user-oriented Self-Instruct (242)", ("self-inst/valid.jsonl",), "MiniLLM/self-inst",
            "valid.jsonl",
        ),
        "vicuna": BenchmarkSpec(
            "vicuna", "Vicuna evaluation questions (80)", ("vicuna/valid.jsonl",), "MiniLLM/Vicuna", "valid.jsonl"
        ),
        "sinst": BenchmarkSpec(
            "sinst", "Super-NaturalInstructions test, responses >= 11 tokens (list references)",
            ("sinst/valid.jsonl", "sinst/11_/valid.jsonl"), "MiniLLM/sinst", "11_/valid.jsonl",
        ),
        "uinst": BenchmarkSpec(
            "uinst", "Unnatural Instructions core, responses >= 11 tokens, first 10,000",
            ("uinst/valid.jsonl", "uinst/11_/valid.jsonl"), "MiniLLM/uinst", "11_/valid.jsonl", max_examples=10_000,
        ),
        EMBEDDED_BENCHMARK: BenchmarkSpec(
            EMBEDDED_BENCHMARK, "the run's own test split (prepare-data)", run_split="test"
        ),
    }
)
"""The registered benchmarks by name (read-only)."""


@dataclass(frozen=True)
class LoadedBenchmark:
    """A benchmark's records and where they were read from.

    Attributes:
        spec: the benchmark.
        records: the evaluated examples, in file order.
        source: the file read (local path, or ``hub:REPO/FILE``).
        available: examples in the file (after ``max_examples``), before ``limit``.
        limit: the ``limit`` applied (None = all).
    """

    spec: BenchmarkSpec
    records: list[InstructionRecord]
    source: str
    available: int
    limit: int | None


def get_spec(name: str) -> BenchmarkSpec:
    """The registered spec called ``name``.

    Raises:
        BenchmarkNotFoundError: unknown name; the message lists the registered names.
    """
    if name not in BENCHMARKS:
        raise BenchmarkNotFoundError(f"unknown benchmark {name!r}; registered benchmarks: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _download(spec: BenchmarkSpec) -> tuple[Path | None, str]:
    """Return (local file, "") from the hub or a local copy of the hub repo, else (None, why it failed)."""
    repo = Path(spec.hub_repo).expanduser()
    if repo.is_dir():
        path = repo / spec.hub_file
        return (path, "") if path.is_file() else (None, f"{path} does not exist")
    from huggingface_hub import hf_hub_download  # only needed when the data is not local
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(spec.hub_repo, spec.hub_file, repo_type="dataset")), ""
    except (OSError, ValueError, EntryNotFoundError) as err:  # offline, no network, no such repo or file
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _locate(spec: BenchmarkSpec, data_dir: str | Path | None, run_dir: str | Path | None, hub: bool) -> tuple[Path, str]:
    tried: list[str] = []
    if spec.run_split is not None:
        if run_dir is None:
            raise BenchmarkNotFoundError(f"benchmark {spec.name!r} is the run's own {spec.run_split} split: pass run_dir")
        path = Path(run_dir) / "data" / f"{spec.run_split}.jsonl"
        if path.is_file():
            return path, str(path)
        raise BenchmarkNotFoundError(
            f"benchmark {spec.name!r}: {path} does not exist; run `switch-kd prepare-data` first "
            "(with data.test_size > 0)"
        )
    if data_dir is not None:
        for rel in spec.local_files:
            path = Path(data_dir) / rel
            if path.is_file():
                return path, str(path)
            tried.append(str(path))
    if hub and spec.hub_repo is not None:
        path, why = _download(spec)
        if path is not None:
            return path, f"hub:{spec.hub_repo}/{spec.hub_file}"
        tried.append(f"hub {spec.hub_repo}/{spec.hub_file} ({why})")
    raise BenchmarkNotFoundError(
        f"benchmark {spec.name!r} not found; looked in: {'; '.join(tried) or 'nowhere (no data_dir, hub off)'}. "
        "Put the MiniLLM-format file at one of these paths (eval.data_dir), or allow the hub download"
    )


def subsample_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded subsample of ``limit`` out of ``n`` rows, in increasing (file) order.

    The same ``(n, limit, seed)`` always gives the same rows, so every model and every generation seed is evaluated
    on the same examples. ``limit`` None or ``>= n`` keeps all rows.

    Raises:
        ValueError: ``limit < 1``.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def read_benchmark(
    name: str | BenchmarkSpec,
    *,
    data_dir: str | Path | None,
    run_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    hub: bool = True,
) -> LoadedBenchmark:
    """Load a benchmark's evaluated examples together with where they came from.

    Args:
        name: a registered name (see :data:`BENCHMARKS`) or a custom :class:`BenchmarkSpec`.
        data_dir: folder of the MiniLLM-format sets (``eval.data_dir``, e.g. ``../shared/data``); None = skip.
        run_dir: the run directory (for ``embedded``: ``{run_dir}/data/test.jsonl``).
        limit: keep a seeded subsample of this many examples (``--limit``); None = all.
        seed: seed of that subsample (not a generation seed).
        hub: allow the hub download when no local file exists.

    Returns:
        A :class:`LoadedBenchmark`; records keep file order.

    Raises:
        BenchmarkNotFoundError: unknown name, or the data is nowhere (the message lists every path tried).
        switch_core.data.records.DataFormatError: a malformed file (names file, line and field).
    """
    spec = name if isinstance(name, BenchmarkSpec) else get_spec(name)
    path, source = _locate(spec, data_dir, run_dir, hub)
    if spec.run_split is not None:
        records = read_records(path)
    else:
        records = read_minillm_jsonl(path, on_bad_rows="error", id_prefix=spec.name).records
    if spec.max_examples is not None:
        records = records[: spec.max_examples]
    keep = subsample_indices(len(records), limit, seed)
    return LoadedBenchmark(spec, [records[i] for i in keep], source, len(records), limit)
