"""The product encode path: products -> backbone features (disk-cached) -> vectors, with error reporting.

Training reads :func:`product_features` too, so encoding and training see the same tower inputs.
A failed image falls back to the text and is reported per product; a product with neither gets
NaN rows (never a zero vector that could be indexed by accident).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mm_opensearch.towers.extract import extract_image_features, extract_text_features

if TYPE_CHECKING:
    from mm_opensearch.towers.heads import ProductVectors
    from mm_opensearch.towers.model import MultimodalModel
    from mm_opensearch.towers.onnx_product import ProductTower

__all__ = ["EncoderInput", "ProductInput", "ProductEncoding", "ProductFeatures", "product_features",
           "encode_products"]

_HEAD_CHUNK = 4096  # rows per head forward: bounds the token tensor held at once


class EncoderInput(Protocol):
    """What the product tower reads of a product: catalog ``Product``s fit as they are."""

    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str | None: ...

    @property
    def image(self) -> str | None: ...


@dataclass(frozen=True)
class ProductInput:
    """One product to encode: its text (fields already joined) and/or an image source."""

    id: str
    text: str | None = None
    image: str | None = None  # local path, file:// or http(s):// URL


@dataclass(frozen=True)
class ProductEncoding:
    """Vectors of a batch of products, in input order.

    Rows without a vector (no text and no loadable image; see ``errors``) are NaN, as are the
    ``text``/``image`` rows of a missing modality: NaN cannot be indexed by accident, a zero
    vector could. ``errors[i]`` is ``"<reason>: <message>"`` when product i's image failed (its
    vector then comes from its text alone) or when it has no vector at all.
    """

    ids: list[str]
    fused: np.ndarray  # (n, dim) float32, L2-normalised
    text: np.ndarray | None  # (n, dim) with with_modalities=True
    image: np.ndarray | None
    errors: list[str | None]
    has_text: np.ndarray  # (n,) bool
    has_image: np.ndarray  # (n,) bool: an image was given *and* loaded

    @property
    def has_vector(self) -> np.ndarray:
        """Rows with a usable fused vector."""
        return self.has_text | self.has_image


@dataclass(frozen=True)
class ProductFeatures:
    """Backbone features of a batch of products; rows of a missing modality are zeros.

    ``errors[i]`` is ``"<reason>: <message>"`` when product i's image failed to load.
    """

    text: np.ndarray  # (n, text_dim) float32
    image: np.ndarray  # (n, image_dim) pooled
    tokens: np.ndarray  # (n, num_tokens, image_dim)
    has_text: np.ndarray  # (n,) bool
    has_image: np.ndarray  # (n,) bool: an image was given *and* loaded
    errors: list[str | None]


def _present(value: object) -> bool:
    """Given at all: a value that is not even a string goes to the loader, which says why it fails."""
    return value is not None and (not isinstance(value, str) or bool(value.strip()))


def product_features(
    model: MultimodalModel, products: Sequence[EncoderInput], *, image_roots: Sequence[Path] = (),
    batch_size: int = 64,
    tower: ProductTower | None = None,
) -> ProductFeatures:
    """Backbone features of each product's text and image (disk-cached), with presence masks.

    Local image paths load only inside ``image_roots``; any other image fails on its own.
    ``tower``: the backbones that run (ONNX Runtime ones, say); default the model's own.
    """
    text_backbone = tower.text if tower is not None else model.text_backbone
    image_backbone = tower.image if tower is not None else model.image_backbone
    n = len(products)
    has_text = np.array([_present(p.text) for p in products], dtype=bool)
    wants_image = np.array([_present(p.image) for p in products], dtype=bool)
    text = np.zeros((n, model.text_backbone.dim), dtype=np.float32)
    if has_text.any():
        text[has_text] = extract_text_features(
            text_backbone, [p.text for p, ok in zip(products, has_text, strict=True) if ok],
            cache=model.feature_cache(text_backbone), batch_size=batch_size,
        )
    image = np.zeros((n, model.image_backbone.dim), dtype=np.float32)
    tokens = np.zeros((n, model.image_backbone.num_tokens, model.image_backbone.token_dim), dtype=np.float32)
    errors: list[str | None] = [None] * n
    has_image = np.zeros(n, dtype=bool)
    if wants_image.any():
        where = np.flatnonzero(wants_image)
        loaded = extract_image_features(
            image_backbone, [products[j].image for j in where], settings=model.settings,
            cache=model.feature_cache(image_backbone), roots=image_roots, batch_size=batch_size,
            decode_pool=model.decode_pool,
        )
        image[where], tokens[where] = loaded.pooled, loaded.tokens
        for j, error in zip(where, loaded.errors, strict=True):
            if error is not None:
                errors[j] = f"{error.reason}: {error}"
        has_image[where] = loaded.ok
    return ProductFeatures(text, image, tokens, has_text, has_image, errors)


def encode_products(
    model: MultimodalModel,
    products: Sequence[EncoderInput],
    features: ProductFeatures,
    *,
    with_modalities: bool = False,
    tower: ProductTower | None = None,
) -> ProductEncoding:
    """Vectors of ``products`` from their ``features``: the heads, plus per-product error messages."""
    heads = tower.heads if tower is not None else model.product_vectors_from_features
    n = len(products)
    text, image, tokens = features.text, features.image, features.tokens
    has_text, has_image, errors = features.has_text, features.has_image, list(features.errors)
    for j in np.flatnonzero(~has_text & ~has_image):
        errors[j] = (
            f"{errors[j]}; product {products[j].id!r} has no text either, so it has no vector"
            if errors[j]
            else f"no_input: product {products[j].id!r} has neither text nor image; give it at least one"
        )
    ok = has_text | has_image
    fused = np.full((n, model.dim), np.nan, dtype=np.float32)
    text_out = np.full((n, model.dim), np.nan, dtype=np.float32) if with_modalities else None
    image_out = np.full((n, model.dim), np.nan, dtype=np.float32) if with_modalities else None
    rows = np.flatnonzero(ok)
    with model.evaluating():
        for start in range(0, len(rows), _HEAD_CHUNK):
            part = rows[start : start + _HEAD_CHUNK]
            out: ProductVectors = heads(
                text[part], image[part], tokens[part], has_text[part], has_image[part]
            )
            fused[part] = out.fused.float().cpu().numpy()
            if text_out is not None and image_out is not None:
                text_out[part] = np.where(has_text[part, None], out.text.float().cpu().numpy(), np.nan)
                image_out[part] = np.where(has_image[part, None], out.image.float().cpu().numpy(), np.nan)
    return ProductEncoding(
        ids=[p.id for p in products],
        fused=fused,
        text=text_out,
        image=image_out,
        errors=errors,
        has_text=has_text,
        has_image=has_image,
    )
