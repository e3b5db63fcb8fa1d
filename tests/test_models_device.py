"""model_device: the one helper that says where a model lives."""
from __future__ import annotations

import torch
from torch import nn

from switch_core.models.device import model_device
from switch_core.models.tiny import build_tokenizer, tiny_causal_lm


def test_device_of_hf_plain_and_parameterless_models() -> None:
    tokenizer = build_tokenizer(["a b c d e f"], vocab_size=270)
    hf = tiny_causal_lm("llama", len(tokenizer), hidden=16, layers=1, heads=2, seed=0)
    assert model_device(hf) == hf.device == torch.device("cpu")
    linear = nn.Linear(2, 2).to(torch.device("meta"))  # no `.device` attribute: the first parameter's
    assert model_device(linear) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")


def test_no_other_device_helper_is_left() -> None:
    """Issue 13: four copies of this helper existed (generate, objective, sources, the rollout engine)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "switch_core"
    helpers = [
        f"{path.relative_to(root)}: {line.strip()}"
        for path in root.rglob("*.py") for line in path.read_text().splitlines()
        if re.match(r"\s*def _?(model_)?device\(", line)
    ]
    assert helpers == ["models/device.py: def model_device(model: nn.Module) -> torch.device:"]
