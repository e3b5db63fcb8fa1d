"""Where a model lives: the one device helper of the project."""
from __future__ import annotations

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of a model: ``model.device`` (Hugging Face models), else its first parameter's, else the CPU (a
    model without parameters)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")
