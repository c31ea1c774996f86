"""JPEG decode and resize on the GPU (nvJPEG through torchvision), with PIL on the CPU as fallback.

On a GPU the forward is fast enough that CPU decoding bounds the rate; torchvision's
``decode_jpeg(device="cuda")`` decodes a whole batch on the GPU. The resize (shorter side, then a
centre crop) runs there too, antialiased bilinear: vectors differ from the PIL path by resampling
rounding only. Imports only torch, torchvision and PIL (see :mod:`device`).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional

__all__ = ["gpu_jpeg_decode_available", "is_jpeg", "decode_resize", "resize_crop_tensor"]

_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == _JPEG_MAGIC


@functools.cache
def gpu_jpeg_decode_available() -> bool:
    """True where torchvision can decode JPEGs on a CUDA device (it needs its nvJPEG build)."""
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: PLC0415 - optional on CPU machines
    except ImportError:
        return False
    try:
        probe = io.BytesIO()
        from PIL import Image  # noqa: PLC0415

        Image.new("RGB", (8, 8), (200, 10, 10)).save(probe, format="JPEG")
        decode_jpeg(torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8), device="cuda")
    except (RuntimeError, TypeError):  # a CPU-only torchvision build, or no nvJPEG
        return False
    return True


def resize_crop_tensor(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, crop, crop): shorter side to ``resize``, centre crop, on its device."""
    height, width = image.shape[-2:]
    scale = resize / min(height, width)
    new_h, new_w = max(crop, round(height * scale)), max(crop, round(width * scale))
    resized = functional.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear",
                                     antialias=True, align_corners=False)[0]
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    return resized[:, top : top + crop, left : left + crop].round().clamp(0, 255).to(torch.uint8)


def _decode_cpu(data: bytes) -> torch.Tensor:
    from PIL import Image  # noqa: PLC0415

    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def decode_resize(datas: Sequence[bytes], side: int, *, device: torch.device, crop: int | None = None) -> torch.Tensor:
    """A batch (n, 3, crop, crop) uint8 on ``device``: JPEGs decoded there where possible, else by PIL."""
    crop = crop or side
    on_gpu = device.type == "cuda" and gpu_jpeg_decode_available()
    images: list[torch.Tensor | None] = [None] * len(datas)
    if on_gpu:
        from torchvision.io import ImageReadMode, decode_jpeg  # noqa: PLC0415

        where = [j for j, data in enumerate(datas) if is_jpeg(data)]
        if where:
            raw = [torch.frombuffer(bytearray(datas[j]), dtype=torch.uint8) for j in where]
            try:
                decoded = decode_jpeg(raw, device=device, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            except RuntimeError:  # one undecodable file fails the batch: let PIL sort them out
                decoded = [None] * len(where)
            for j, image in zip(where, decoded, strict=True):
                images[j] = image
    out = []
    for j, image in enumerate(images):
        pixels = image if image is not None else _decode_cpu(datas[j]).to(device)
        out.append(resize_crop_tensor(pixels, side, crop))
    return torch.stack(out)
