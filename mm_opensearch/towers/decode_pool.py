"""JPEG decode and resize in worker processes, so decoding never starves the backbone forward.

Decode threads share the encoding process's interpreter with the forward; under load on a small
CPU they cost the forward its cores at the wrong moment. A few processes (``Settings.decode_processes``)
decode the next batch in parallel instead, returning uint8 arrays (cheap to pickle) and failures as
(message, reason) pairs, because ``ImageLoadError`` does not pickle.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch

from mm_opensearch.config import Settings
from mm_opensearch.errors import ImageLoadError
from mm_opensearch.images import decode_image
from mm_opensearch.towers.config import ImagePreprocess
from mm_opensearch.towers.preprocess import resize_crop

__all__ = ["DecodePool", "decode_to_pixels"]


def decode_to_pixels(data: bytes, preprocess: ImagePreprocess, settings: Settings) -> torch.Tensor | ImageLoadError:
    """Decode, resize and crop one image to uint8 (3, crop, crop); a failure is returned, not raised."""
    try:
        return resize_crop(decode_image(data, settings), preprocess)
    except ImageLoadError as e:
        return e


def _decode_in_child(data: bytes, preprocess: ImagePreprocess, settings: Settings) -> np.ndarray | tuple[str, str]:
    result = decode_to_pixels(data, preprocess, settings)
    if isinstance(result, ImageLoadError):
        return (str(result), result.reason)
    return result.numpy()


class _Decoded(Future):  # type: ignore[type-arg]
    """A child's result turned back into a tensor or an ImageLoadError, as the thread path returns."""

    def __init__(self, inner: Future) -> None:  # type: ignore[type-arg]
        super().__init__()
        self._inner = inner

    def result(self, timeout: float | None = None) -> torch.Tensor | ImageLoadError:
        value = self._inner.result(timeout)
        if isinstance(value, tuple):
            return ImageLoadError(value[0], reason=value[1])
        return torch.from_numpy(value)


class DecodePool:
    """A lazily started process pool of ``size`` decoders (forkserver: no fork of a threaded process)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, data: bytes, preprocess: ImagePreprocess, settings: Settings) -> Future:  # type: ignore[type-arg]
        """Decode ``data`` in a child; ``result()`` is a uint8 tensor or an ``ImageLoadError``."""
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                self._pool = ProcessPoolExecutor(max_workers=self.size, mp_context=context)
            pool = self._pool
        return _Decoded(pool.submit(_decode_in_child, data, preprocess, settings))

    def close(self) -> None:
        """Stop the children (they also stop with the process)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
