"""`--device auto|cpu|cuda`, resolved once in one place."""
from __future__ import annotations

from ..errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA GPU is visible to torch")
    return device
