"""Print the resolved configuration (params.yaml + preset + --set) as YAML, or one key."""
from __future__ import annotations

import argparse

import yaml

from switch_core.config import flatten


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", default=None, help="print only this dotted key, e.g. rollout.tau0")
    parser.add_argument("--flat", action="store_true", help="one dotted key per line")


def run(args: argparse.Namespace) -> int:
    data = args.config.model_dump()
    if args.key:
        flat = flatten(data)
        matches = {k: v for k, v in flat.items() if k == args.key or k.startswith(args.key + ".")}
        if not matches:
            raise ValueError(f"no key {args.key!r} in the configuration")
        data = matches
    elif args.flat:
        data = flatten(data)
    print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0
