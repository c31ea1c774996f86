"""Thumbnails of local catalog images for the page, read under the library's confinement rule.

The client names a product id only; the image path comes from the indexed document and is read by
:func:`read_image_bytes` inside the allowed roots, so a page request can never name a file. Each
thumbnail is resized once (Pillow) and kept in a small LRU cache in the API process.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.errors import ImageLoadError
from mm_opensearch.images import decode_image, read_image_bytes

__all__ = ["Thumbnail", "ThumbnailCache", "is_url", "local_candidates"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    etag: str
    media_type: str = "image/jpeg"


def is_url(value: object) -> bool:
    """An http(s) image, which the page shows from its URL (the server never fetches it for a client)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def local_candidates(value: str, roots: Sequence[Path]) -> list[str]:
    """Where a catalog image value may be: itself when absolute, else relative to each allowed root.

    Indexed documents keep the catalog's relative path (``images/1.jpg``); the roots are the folders
    the library may read images from, the catalog's folder by default.
    """
    if value.startswith("file://") or Path(value).is_absolute():
        return [value]
    return [str(root / value) for root in roots]


class ThumbnailCache:
    """``thumbnail(key, image_value)``: a JPEG at most ``size`` px on its longest side, or None."""

    def __init__(self, settings: Settings, roots: Sequence[Path], *, size: int, capacity: int) -> None:
        self.settings = settings
        self.roots = tuple(roots)
        self.size = size
        self.capacity = capacity
        self._cache: OrderedDict[str, Thumbnail] = OrderedDict()
        self._lock = threading.Lock()

    def thumbnail(self, key: str, value: object) -> Thumbnail | None:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        made = self._make(value)
        if made is not None and self.capacity > 0:
            with self._lock:
                self._cache[key] = made
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        return made

    def _make(self, value: object) -> Thumbnail | None:
        if not isinstance(value, str) or not value or is_url(value):
            return None
        for source in local_candidates(value, self.roots):
            try:
                image = decode_image(read_image_bytes(source, self.settings, roots=self.roots), self.settings)
            except ImageLoadError as e:  # missing, outside the roots, not an image: the placeholder shows
                logger.debug("no thumbnail for %s: %s", source, e)
                continue
            image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=85)
            data = out.getvalue()
            return Thumbnail(data=data, etag=f'"{hashlib.sha256(data).hexdigest()[:32]}"')
        return None
