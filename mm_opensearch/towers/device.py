"""Where and how the towers run: device choice, CUDA precision, batch size from free memory.

Pure functions of what they are given (the setting, what the CUDA probe says, the free bytes), so
the choice is tested on machines without a GPU. This module imports only torch and the standard
library: ``bench/encode.py --device cuda`` loads it on a machine that has the repo and PyTorch alone.
"""

from __future__ import annotations

import torch

__all__ = ["DeviceUnavailableError", "select_device", "autocast_dtype", "batch_size_for_free_memory", "IMAGE_BYTES_PER_ITEM"]

# Peak activation memory of one 224 px EfficientNet-Lite0 image in half precision, with headroom
# (measured by bench/encode.py --device cuda; docs/encoding.md).
IMAGE_BYTES_PER_ITEM = 48 << 20


class DeviceUnavailableError(ValueError):
    """The configured device is not there; the message names the setting and the fix."""


def select_device(requested: str | None, *, cuda_available: bool) -> torch.device:
    """``requested`` ("auto", "cpu", "cuda", "cuda:1", or None = auto) -> the device to run on."""
    choice = (requested or "auto").strip().lower()
    if choice == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    if choice.startswith("cuda") and not cuda_available:
        msg = (f"MMOS_DEVICE={requested} but PyTorch sees no CUDA device here; set MMOS_DEVICE=cpu or auto, "
               "or install a CUDA build of PyTorch")
        raise DeviceUnavailableError(msg)
    try:
        return torch.device(choice)
    except RuntimeError as e:
        msg = f"MMOS_DEVICE={requested} is not a device; use auto, cpu or cuda"
        raise DeviceUnavailableError(msg) from e


def autocast_dtype(precision: str, *, bf16_supported: bool) -> torch.dtype:
    """The CUDA autocast dtype for ``MMOS_CUDA_PRECISION``: bf16 falls back to fp16 on GPUs without it."""
    if precision == "float32":
        return torch.float32
    if precision == "bf16" and bf16_supported:
        return torch.bfloat16
    return torch.float16


def batch_size_for_free_memory(free_bytes: int, *, per_item_bytes: int = IMAGE_BYTES_PER_ITEM,
                               share: float = 0.5, minimum: int = 8, maximum: int = 1024) -> int:
    """Images per forward that fit in ``share`` of the free memory (other processes may share the GPU).

    A power of two (cuDNN picks its kernels per shape; few shapes keep autotuning short), clamped
    to [minimum, maximum].
    """
    fit = int(free_bytes * share) // max(1, per_item_bytes)
    size = minimum
    while size * 2 <= min(fit, maximum):
        size *= 2
    return size
