"""Create a product index and load a catalog into it, with vectors when a model is given.

Used by ``demo`` and ``eval`` (whole catalogs at once); the Celery workers reuse the same
``product_vectors`` to embed batches of an existing index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opensearchpy import OpenSearch

from mm_opensearch.catalog import CatalogSchema, Product, content_hash
from mm_opensearch.indexing.bulk import BulkReport, bulk_write, index_action, vector_fields_doc
from mm_opensearch.indexing.mappings import VectorOptions, product_index_body

if TYPE_CHECKING:
    from mm_opensearch.towers import MultimodalModel

__all__ = ["create_product_index", "load_products", "product_vectors", "merge_to_one_segment"]


def _batches(items: Iterable[Product], size: int) -> Iterator[list[Product]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def create_product_index(
    client: OpenSearch,
    index: str,
    schema: CatalogSchema,
    *,
    sample: dict[str, Any] | None = None,
    model: MultimodalModel | None = None,
    modalities: bool = False,
    replace: bool = False,
    index_settings: dict[str, Any] | None = None,
    vector_options: VectorOptions | None = None,
) -> dict[str, Any]:
    """Create ``index`` (BM25-only without a model). ``replace`` deletes an existing one first.

    ``index_settings`` override entries of the template's ``settings.index``; ``vector_options``
    (``VectorOptions.from_settings``) how vectors are indexed, today's mapping when None.
    """
    body = product_index_body(
        schema,
        sample=sample,
        dim=model.dim if model is not None else None,
        model_id=model.model_id if model is not None else None,
        modalities=modalities,
        options=vector_options,
    )
    body["settings"]["index"].update(index_settings or {})
    if replace and client.indices.exists(index=index):
        client.indices.delete(index=index)
    client.indices.create(index=index, body=body)
    return body


def product_vectors(
    model: MultimodalModel,
    products: Sequence[Product],
    *,
    modalities: bool = False,
    image_roots: Sequence[Path] = (),
) -> list[dict[str, Any]]:
    """Vector and bookkeeping fields for each product (only the error where nothing could be encoded).

    Local image paths load only inside ``image_roots``; a product whose image fails keeps its text
    vector and the reason, and never fails the others.
    """
    encoding = model.encode_products(products, with_modalities=modalities, image_roots=image_roots)
    docs: list[dict[str, Any]] = []
    for row, product in enumerate(products):
        with_text = encoding.text is not None and encoding.has_text[row]
        with_image = encoding.image is not None and encoding.has_image[row]
        docs.append(
            vector_fields_doc(
                encoding.fused[row] if encoding.has_vector[row] else None,
                product_id=product.id,
                model_id=model.model_id,
                content_hash=content_hash(product.text, product.image),
                error=encoding.errors[row],
                text=encoding.text[row] if with_text else None,
                image=encoding.image[row] if with_image else None,
            )
        )
    return docs


def load_products(
    client: OpenSearch,
    index: str,
    products: Iterable[Product],
    *,
    model: MultimodalModel | None = None,
    modalities: bool = False,
    image_roots: Sequence[Path] = (),
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> BulkReport:
    """Index whole documents (their own fields, plus vectors when ``model`` is given).

    ``image_roots``: the folders local image paths may be read from (usually the catalog's folder).
    """
    report = BulkReport()
    for batch in _batches(products, batch_size):
        vectors = (
            product_vectors(model, batch, modalities=modalities, image_roots=image_roots)
            if model
            else [{} for _ in batch]
        )
        actions = [index_action(index, p.id, {**p.source, **v}) for p, v in zip(batch, vectors, strict=True)]
        report.merge(bulk_write(client, actions))
        if on_batch is not None:
            on_batch(len(batch))
    return report


def merge_to_one_segment(client: OpenSearch, index: str) -> None:
    """Make a freshly loaded index one segment in indexing order, and search that segment.

    One segment means one HNSW graph and a stable tie order, so evaluations and benchmarks give
    the same figures run after run. The refresh after the merge matters: without it searches keep
    reading the pre-merge segment until the next refresh, and a restarted node opens the merged one.
    """
    client.indices.refresh(index=index)
    client.indices.forcemerge(index=index, max_num_segments=1, request_timeout=600)
    client.indices.refresh(index=index)
