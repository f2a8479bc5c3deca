"""Parsing a --device argument into a torch.device, with a one-line reason when it cannot be used.

Why a module: main.py, infer.py and the tools accept the same --device values, and a typo (`gpu`) or a
GPU request on a machine without one must say so in one line instead of a torch traceback.
"""
from __future__ import annotations

import re

__all__ = ["DeviceError", "parse_device", "pick_device", "available_devices", "DEVICE_HELP"]

DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)"


class DeviceError(ValueError):
    """The requested device does not exist or is not available on this machine."""


def _mps_available() -> bool:
    """Apple's GPU backend, looked up defensively: torch builds without it lack torch.backends.mps."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list:
    """The --device names that work on this machine (cpu, cuda and cuda:N per visible GPU, mps)."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def pick_device(name: str | None):
    """--device checked (`parse_device`), or CUDA when available, else the CPU."""
    import torch

    dev = parse_device(name)
    return dev if dev is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(name: str | None):
    """torch.device for 'cpu', 'cuda', 'cuda:N' or 'mps' (case and spaces ignored); None or '' -> None
    (the caller's automatic choice). Raises DeviceError with one line naming what works here."""
    import torch

    if name is None or not str(name).strip():
        return None
    text = str(name).strip().lower()
    what = f"--device {name}"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceError(f"{what}: no Apple MPS device is available here; use --device cpu")
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m is None:
        raise DeviceError(f"{what}: unknown device name; use one of {', '.join(available_devices())} "
                          f"(the devices visible here)")
    if not torch.cuda.is_available():
        raise DeviceError(f"{what}: no CUDA device is visible (torch.cuda.is_available() is False; check "
                          f"nvidia-smi and CUDA_VISIBLE_DEVICES); use --device cpu")
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise DeviceError(f"{what}: only {n} CUDA device(s) are visible; use one of cuda:0..cuda:{n - 1}")
    return torch.device(text)
