"""Read a product catalog (JSON Lines, optionally gzipped) through a configurable field schema.

Nothing here knows about one particular shop: which fields are searchable text, which field holds
the image and which are filters all come from :class:`CatalogSchema` (built from ``Settings``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError

__all__ = ["CatalogSchema", "Product", "read_catalog", "content_hash", "parse_instant"]


def _split_boost(spec: str) -> tuple[str, float]:
    name, _, boost = spec.partition("^")
    try:
        return name, float(boost) if boost else 1.0
    except ValueError as e:
        msg = f"text field '{spec}' has a malformed boost; write it as name or name^2.0"
        raise ConfigError(msg) from e


@dataclass(frozen=True)
class CatalogSchema:
    """Which fields of a product document are its id, searchable text, image and filters."""

    id_field: str = "id"
    text_fields: dict[str, float] = field(default_factory=lambda: {"title": 2.0, "brand": 1.0, "description": 1.0})
    image_field: str | None = "image"
    filter_fields: tuple[str, ...] = ()
    updated_at_field: str = "updated_at"

    @classmethod
    def from_settings(cls, settings: Settings) -> CatalogSchema:
        return cls(
            id_field=settings.id_field,
            text_fields=dict(_split_boost(spec) for spec in settings.text_fields),
            image_field=settings.image_field,
            filter_fields=tuple(settings.filter_fields),
            updated_at_field=settings.updated_at_field,
        )

    def multi_match_fields(self) -> list[str]:
        """``field^boost`` strings for a ``multi_match`` query."""
        return [name if boost == 1.0 else f"{name}^{boost:g}" for name, boost in self.text_fields.items()]


@dataclass(frozen=True)
class Product:
    """One catalog document: its id, the original fields (kept whole for BM25) and its inputs."""

    id: str
    source: dict[str, Any]
    text: str | None
    # A path or URL. A catalog may hold any JSON value here; the image loader refuses what is not a
    # string for that product alone, so one odd document never fails its batch.
    image: Any


def product_text(source: dict[str, Any], schema: CatalogSchema) -> str | None:
    """The text the product tower reads: the configured text fields, in order, joined."""
    parts = [str(source[name]).strip() for name in schema.text_fields if source.get(name) not in (None, "")]
    text = ". ".join(p for p in parts if p)
    return text or None


def parse_instant(value: object) -> datetime | None:
    """An ``updated_at`` value as an aware datetime (a naive one is taken as UTC); None when empty.

    Aware values compare with each other whatever zone they were written in; a naive one beside
    an aware one would not compare at all.
    """
    if value in (None, ""):
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def content_hash(text: str | None, image: object) -> str:
    """Identifies the inputs a vector was computed from, to skip or refuse stale re-encodes."""
    payload = json.dumps({"text": text, "image": image}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def to_product(source: dict[str, Any], schema: CatalogSchema, base_dir: Path | None = None) -> Product:
    """Validate one document and resolve its image path relative to the catalog file.

    Only the id is required. The image value is not judged here: whether it is a usable path or
    URL (and inside the allowed roots) is the image loader's call, per product, at encoding time.
    """
    raw_id = source.get(schema.id_field)
    if raw_id in (None, ""):
        msg = f"product is missing its id field '{schema.id_field}'; set MMOS_ID_FIELD to the field that holds ids"
        raise ConfigError(msg)
    image = source.get(schema.image_field) if schema.image_field else None
    if isinstance(image, str) and image and base_dir is not None and "://" not in image and not Path(image).is_absolute():
        image = str(base_dir / image)
    return Product(id=str(raw_id), source=source, text=product_text(source, schema), image=image or None)


def _catalog_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a ``.jsonl`` or ``.jsonl.gz`` file; unreadable bytes name their line and offset.

    Read as bytes and decoded line by line: a text-mode reader fails on a whole chunk, with no line.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        handle = opener(path, "rb")
    except FileNotFoundError as e:
        msg = f"catalog file {path} does not exist; pass the path of a JSON Lines catalog"
        raise ConfigError(msg) from e
    except OSError as e:  # a folder, no permission
        msg = f"catalog file {path} cannot be read ({e.strerror or e}); pass the path of a JSON Lines catalog"
        raise ConfigError(msg) from e
    offset = line_no = 0
    with handle:
        try:
            for line_no, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    hint = "; it is gzipped: name it .gz" if raw.startswith(b"\x1f\x8b") else ""
                    msg = (
                        f"{path}:{line_no} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {offset + e.start} "
                        f"of the file{' once uncompressed' if opener is gzip.open else ''}); write the catalog "
                        f"as UTF-8 JSON Lines{hint}"
                    )
                    raise ConfigError(msg) from e
                yield line_no, text.removeprefix("\ufeff") if line_no == 1 else text  # a BOM is no product
                offset += len(raw)
        except gzip.BadGzipFile as e:
            msg = f"catalog file {path} is named .gz but is not gzipped; name a plain catalog .jsonl"
            raise ConfigError(msg) from e
        except EOFError as e:
            msg = f"catalog file {path} is a truncated gzip file (it ends inside line {line_no + 1}); copy or write it again"
            raise ConfigError(msg) from e


def read_catalog(path: Path, schema: CatalogSchema, *, limit: int | None = None) -> Iterator[Product]:
    """Products of a ``.jsonl`` or ``.jsonl.gz`` file; relative image paths resolve beside it."""
    for line_no, line in _catalog_lines(path):
        if limit is not None and line_no > limit:
            return
        if not line.strip():
            continue
        try:
            source = json.loads(line)
        except json.JSONDecodeError as e:
            msg = f"{path}:{line_no} is not valid JSON ({e.msg}); each line must hold one product object"
            raise ConfigError(msg) from e
        if not isinstance(source, dict):
            msg = f"{path}:{line_no} holds a JSON {_json_kind(source)}, not an object; each line must hold one product object"
            raise ConfigError(msg)
        try:
            yield to_product(source, schema, path.parent)
        except ConfigError as e:
            msg = f"{path}:{line_no}: {e}"
            raise ConfigError(msg) from e


def _json_kind(value: object) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)
