"""Backbone features for lists of texts and images: cache first, backbone only for the misses.

Cache keys are content hashes: sha256 of the UTF-8 text, and sha256 of the image *bytes* for every
source (local path, ``file://`` or ``http(s)://``). Keying URLs on their bytes rather than their
string costs a fetch on a cache hit, but a URL whose picture changed is re-encoded instead of
silently keeping the old vector, and two URLs of the same file share one entry.

Every backbone call runs at a fixed shape (:data:`FIXED_ROWS` rows; texts also at a fixed padded
length per length bucket, see :meth:`TextBackbone.fixed_shape_features`). Float kernels pick their
blocking and thread split by shape, so a row's last bits used to depend on which other inputs
shared its batch; through the cache's float16 rounding that made a cache's contents, and a model
trained from it, depend on the cache's history. At one shape a row depends on its own input only.

Images go through a pipeline: worker threads read and hash a chunk of sources, the cache answers
what it can, then the misses are decoded and resized in the threads while the backbone runs the
previous batch (PIL and torch both release the GIL, so this is real overlap, not just concurrency),
or in the processes of a :class:`DecodePool` (``Settings.decode_processes``).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.errors import ImageLoadError
from mm_opensearch.images import read_image_bytes
from mm_opensearch.towers.backbone_base import FIXED_ROWS, ImageBackbone, ImageFeatures, TextBackbone
from mm_opensearch.towers.decode_pool import DecodePool, decode_to_pixels
from mm_opensearch.towers.feature_cache import FeatureCache, get_or_compute
from mm_opensearch.towers.gpu_decode import decode_resize, gpu_jpeg_decode_available, is_jpeg

__all__ = [
    "FIXED_ROWS",
    "ImageFeatureBatch",
    "text_key",
    "extract_text_features",
    "extract_image_features",
    "default_workers",
]


@dataclass(frozen=True)
class ImageFeatureBatch:
    """Image features in input order; rows whose ``errors`` entry is set are zeros."""

    pooled: np.ndarray  # (n, dim) float32
    tokens: np.ndarray  # (n, num_tokens, dim) float32
    errors: list[ImageLoadError | None]

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the images that loaded."""
        return np.array([error is None for error in self.errors], dtype=bool)


def text_key(text: str) -> str:
    """Cache key of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_workers() -> int:
    """Decode threads: enough to keep one backbone busy, never more than the cores."""
    return max(1, min(4, os.cpu_count() or 1))


def extract_text_features(
    backbone: TextBackbone,
    texts: Sequence[str],
    *,
    cache: FeatureCache | None,
    batch_size: int = 64,
) -> np.ndarray:
    """(n, dim) float32 features of non-empty ``texts``; only cache misses run the backbone."""
    keys = [text_key(text) for text in texts]
    by_key = dict(zip(keys, texts, strict=True))

    def compute(misses: list[str]) -> Iterator[dict[str, np.ndarray]]:
        ordered = sorted(misses, key=lambda key: len(by_key[key]))  # similar lengths pad less
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start : start + batch_size]
            features = backbone.fixed_shape_features([by_key[key] for key in chunk]).numpy()
            yield {key: row[None, :] for key, row in zip(chunk, features, strict=True)}

    found = get_or_compute(keys, cache, compute)
    if not keys:
        return np.zeros((0, backbone.dim), dtype=np.float32)
    return np.stack([found[key][0] for key in keys])


def _read(source: str, settings: Settings, roots: Sequence[Path]) -> bytes | ImageLoadError:
    try:
        return read_image_bytes(source, settings, roots=roots)
    except ImageLoadError as e:
        return e


def extract_image_features(
    backbone: ImageBackbone,
    sources: Sequence[str],
    *,
    settings: Settings,
    cache: FeatureCache | None,
    roots: Sequence[Path] = (),
    batch_size: int = 32,
    workers: int | None = None,
    decode_pool: DecodePool | None = None,
) -> ImageFeatureBatch:
    """Features of each image source; a failed image gets zeros and its ``ImageLoadError``.

    Local paths are read only inside ``roots`` (see :func:`mm_opensearch.images.read_image_bytes`).
    ``decode_pool``: decode and resize in its processes instead of this process's threads.
    """
    parts = backbone.cached_parts()
    if parts:
        each = [
            extract_image_features(part, sources, settings=settings, roots=roots, batch_size=batch_size,
                                   workers=workers, decode_pool=decode_pool,
                                   cache=cache.sibling(part.cache_id) if cache is not None else None)
            for part in parts
        ]
        errors = [next((e for e in row if e is not None), None) for row in zip(*(b.errors for b in each), strict=True)]
        return ImageFeatureBatch(np.concatenate([b.pooled for b in each], axis=1), each[0].tokens, errors)
    n = len(sources)
    pooled = np.zeros((n, backbone.dim), dtype=np.float32)
    tokens = np.zeros((n, backbone.num_tokens, backbone.token_dim), dtype=np.float32)
    errors: list[ImageLoadError | None] = [None] * n
    chunk_size = batch_size * 8  # bounds the bytes held in memory; big enough to keep batches full
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="mmos-img") as pool:
        for start in range(0, n, chunk_size):
            index = range(start, min(n, start + chunk_size))
            payloads = list(pool.map(lambda j: _read(sources[j], settings, roots), index))
            data_by_key: dict[str, bytes] = {}
            keys: dict[int, str] = {}
            for j, payload in zip(index, payloads, strict=True):
                if isinstance(payload, ImageLoadError):
                    errors[j] = payload
                    continue
                keys[j] = hashlib.sha256(payload).hexdigest()
                data_by_key.setdefault(keys[j], payload)
            failures: dict[str, ImageLoadError] = {}
            found = get_or_compute(
                list(keys.values()),
                cache,
                lambda misses: _forward_pipelined(
                    backbone, misses, data_by_key, failures, pool, settings, batch_size, decode_pool
                ),
            )
            for j, key in keys.items():
                if key in found:
                    pooled[j], tokens[j] = _from_cache(found[key], backbone)
                else:
                    errors[j] = failures[key]
    return ImageFeatureBatch(pooled, tokens, errors)


def fixed_shape_image_features(backbone: ImageBackbone, pixels: torch.Tensor) -> ImageFeatures:
    """``backbone.features`` run on batches of exactly :data:`FIXED_ROWS` images, the last padded with black ones."""
    n = pixels.shape[0]
    padded = (-n) % FIXED_ROWS
    if padded:
        pixels = torch.cat([pixels, pixels.new_zeros((padded, *pixels.shape[1:]))])
    parts = [backbone.features(pixels[start : start + FIXED_ROWS]) for start in range(0, pixels.shape[0], FIXED_ROWS)]
    return ImageFeatures(torch.cat([p.pooled for p in parts])[:n], torch.cat([p.tokens for p in parts])[:n])


def _cache_rows(features: ImageFeatures) -> np.ndarray:
    """(n, rows, cols) cache entries: [pooled; tokens] when both are one width, else one flat row of both."""
    pooled, tokens = features.pooled, features.tokens
    if pooled.shape[1] == tokens.shape[2]:
        return torch.cat([pooled.unsqueeze(1), tokens], dim=1).numpy()
    return torch.cat([pooled, tokens.flatten(1)], dim=1).unsqueeze(1).numpy()


def _from_cache(entry: np.ndarray, backbone: ImageBackbone) -> tuple[np.ndarray, np.ndarray]:
    """(pooled, tokens) of an entry :func:`_cache_rows` made."""
    if backbone.dim == backbone.token_dim:
        return entry[0], entry[1:]
    flat = entry[0]
    return flat[: backbone.dim], flat[backbone.dim :].reshape(backbone.num_tokens, backbone.token_dim)


def _forward_pipelined(
    backbone: ImageBackbone,
    keys: list[str],
    data_by_key: dict[str, bytes],
    failures: dict[str, ImageLoadError],
    pool: ThreadPoolExecutor,
    settings: Settings,
    batch_size: int,
    decode_pool: DecodePool | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Decode batch b+1 in the pool while the backbone runs batch b; yield features per batch."""
    batches = [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]
    preprocess = backbone.preprocess

    def submit(batch: list[str]) -> list[Future[torch.Tensor | ImageLoadError]]:
        if decode_pool is not None:
            return [decode_pool.submit(data_by_key[key], preprocess, settings) for key in batch]
        return [pool.submit(decode_to_pixels, data_by_key[key], preprocess, settings) for key in batch]

    if backbone.device.type == "cuda" and gpu_jpeg_decode_available():
        yield from _forward_gpu_decoded(backbone, batches, data_by_key, failures, submit, settings)
        return
    pending = submit(batches[0]) if batches else []
    for b, batch in enumerate(batches):
        current = pending
        pending = submit(batches[b + 1]) if b + 1 < len(batches) else []
        pixels: list[torch.Tensor] = []
        decoded: list[str] = []
        for key, future in zip(batch, current, strict=True):
            result = future.result()
            if isinstance(result, ImageLoadError):
                failures[key] = result
            else:
                pixels.append(result)
                decoded.append(key)
        if not pixels:
            continue
        features = fixed_shape_image_features(backbone, torch.stack(pixels))
        yield dict(zip(decoded, _cache_rows(features), strict=True))


def _gpu_decodable(data: bytes, settings: Settings) -> bool:
    """A JPEG whose header passes the pixel limit: the GPU may decode it (anything else takes the CPU path)."""
    if not is_jpeg(data):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return image.format == "JPEG" and width * height <= settings.image_max_pixels
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _forward_gpu_decoded(
    backbone: ImageBackbone,
    batches: list[list[str]],
    data_by_key: dict[str, bytes],
    failures: dict[str, ImageLoadError],
    submit: Callable[[list[str]], list[Future[torch.Tensor | ImageLoadError]]],
    settings: Settings,
) -> Iterator[dict[str, np.ndarray]]:
    """On CUDA: JPEGs decoded and resized on the GPU (nvJPEG), the rest (and any the GPU refuses) on the CPU."""
    spec = backbone.preprocess
    for batch in batches:
        gpu = [key for key in batch if _gpu_decodable(data_by_key[key], settings)]
        pixels: dict[str, torch.Tensor] = {}
        if gpu:
            try:
                decoded = decode_resize([data_by_key[key] for key in gpu], spec.resize, crop=spec.crop,
                                        device=backbone.device)
                pixels.update(zip(gpu, decoded, strict=True))
            except (RuntimeError, OSError, ValueError):  # a file the GPU and PIL both refuse: per image on the CPU
                pass
        rest = [key for key in batch if key not in pixels]
        for key, future in zip(rest, submit(rest), strict=True):
            result = future.result()
            if isinstance(result, ImageLoadError):
                failures[key] = result
            else:
                pixels[key] = result.to(backbone.device)
        decoded_keys = [key for key in batch if key in pixels]
        if not decoded_keys:
            continue
        features = fixed_shape_image_features(backbone, torch.stack([pixels[key] for key in decoded_keys]))
        yield dict(zip(decoded_keys, _cache_rows(features), strict=True))
