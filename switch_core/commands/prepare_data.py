"""Load, validate and split the instruction data into run_dir/data/{train,dev,test}.jsonl (+ data_report.json)."""
from __future__ import annotations

import argparse
import random

from switch_core.atomic import atomic_write_json
from switch_core.config import Config
from switch_core.data.readers import load_records
from switch_core.data.splits import split_records, write_records
from switch_core.layout import RunLayout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything comes from the configuration's `data` section


def prepare_data(config: Config, layout: RunLayout) -> dict:
    """Read ``config.data``, subsample (``limit``), split (seeded) and write the split files.

    Returns:
        The data report (also written to ``layout.data_report``): sizes per split, skipped rows by reason, source.

    Raises:
        DataFormatError: malformed rows (with ``on_bad_rows: error``), an empty source or an empty split.
    """
    data = config.data
    result = load_records(
        data.source, data.path, split=data.hf_split, config_name=data.hf_config, on_bad_rows=data.on_bad_rows,
        embedded_size=data.embedded_size, seed=data.split_seed,
    )
    records = list(result.records)
    if data.limit is not None and data.limit < len(records):
        records = random.Random(data.split_seed).sample(records, data.limit)
    splits = split_records(records, dev_size=data.dev_size, test_size=data.test_size, seed=data.split_seed)
    for name, rows in splits.items():
        if rows:
            write_records(rows, layout.split(name))
    report = {
        "source": data.source,
        "path": data.path,
        "loaded": len(result.records),
        "used": len(records),
        "splits": {name: len(rows) for name, rows in splits.items()},
        "skipped_rows": result.report.to_dict(),
    }
    atomic_write_json(layout.data_report, report)
    return report


def run(args: argparse.Namespace) -> int:
    layout = RunLayout.from_config(args.config, args.project_root)
    report = prepare_data(args.config, layout)
    sizes = ", ".join(f"{k} {v}" for k, v in report["splits"].items())
    print(f"data: {report['used']} examples from {report['source']} -> {sizes} in {layout.data_dir}")
    skipped = report["skipped_rows"].get("skipped", 0)
    if skipped:
        print(f"data: skipped {skipped} malformed rows (see {layout.data_report})")
    return 0
