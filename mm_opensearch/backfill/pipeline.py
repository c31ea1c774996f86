"""The two steps of embedding a batch, and what happens when one fails for good.

``embed_step`` reads the products (with their ``_seq_no``/``_primary_term``), skips those whose
vector is current, encodes the rest and hands a :class:`WriteJob` to the queue. ``write_step``
sends guarded partial updates: a product that changed after it was read refuses the write (409),
and its id goes back to ``embed_step`` to be read and encoded again, so the newest version always
ends up with the vector. Keeping the steps apart lets the model queue never wait on OpenSearch.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opensearchpy import OpenSearch

from mm_opensearch.backfill.jobs import EmbedJob, JobQueue, WriteJob, batch_ids, new_job_id
from mm_opensearch.backfill.retry import RefusedItemsError, classify_response
from mm_opensearch.backfill.store import JobStore
from mm_opensearch.catalog import CatalogSchema, Product, content_hash, to_product
from mm_opensearch.errors import ConfigError
from mm_opensearch.indexing.bulk import BulkFailure, bulk_write, vector_update_action
from mm_opensearch.indexing.load import product_vectors
from mm_opensearch.indexing.mappings import check_model_compatible

if TYPE_CHECKING:
    from mm_opensearch.towers import MultimodalModel

__all__ = [
    "EmbedContext",
    "InlineQueue",
    "MAX_STALE_REREADS",
    "dead_letter",
    "embed_step",
    "enqueue",
    "is_current",
    "read_product",
    "retry_dead_letters",
    "submit_embed",
    "write_step",
]

MAX_STALE_REREADS = 5  # a product edited this often while being embedded is reported, not chased forever


@dataclass
class EmbedContext:
    """What a step needs; built once per worker process (the model is the expensive part)."""

    client: OpenSearch
    store: JobStore
    queue: JobQueue
    schema: CatalogSchema
    model: MultimodalModel | None = None  # write steps need no model
    image_dir: Path | None = None
    image_roots: tuple[Path, ...] = ()  # where local images may be read (MMOS_IMAGE_ROOTS or the data dir)
    _checked: dict[str, dict[str, Any]] = field(default_factory=dict)

    def index_meta(self, index: str) -> dict[str, Any]:
        """The index's model entry, checked once against the loaded model."""
        if index not in self._checked:
            if self.model is None:
                msg = "embed_step needs a model; start the worker with MMOS_MODEL_DIR set"
                raise ConfigError(msg)
            mapping = self.client.indices.get_mapping(index=index)
            (body,) = mapping.values()  # an alias resolves to exactly one index here
            self._checked[index] = check_model_compatible(
                index, body["mappings"], self.model.model_id, self.model.dim
            )
        return self._checked[index]


def read_product(hit: dict[str, Any], schema: CatalogSchema, image_dir: Path | None = None) -> Product:
    """The encoder inputs of a search hit or mget doc; the product id is always the ``_id``.

    Relative image paths resolve against ``image_dir`` (``MMOS_DATA_DIR``), as catalog files do.
    """
    product = to_product({schema.id_field: hit["_id"], **hit["_source"]}, schema, image_dir)
    return replace(product, id=hit["_id"])


def is_current(source: dict[str, Any], digest: str, model_id: str) -> bool:
    """The vector was made by this model from these inputs (bookkeeping is only written with it)."""
    return source.get("mm_content_hash") == digest and source.get("mm_model_id") == model_id


def embed_step(ctx: EmbedContext, job: EmbedJob) -> WriteJob:
    """Encode the products of ``job`` that need it and submit their guarded writes."""
    meta = ctx.index_meta(job.index)
    assert ctx.model is not None  # checked by index_meta
    response = ctx.client.mget(index=job.index, body={"ids": list(job.ids)})
    _raise_if_unread(job.index, response["docs"])
    products, versions, missing, skipped = [], [], 0, 0
    for doc in response["docs"]:
        if not doc.get("found"):
            missing += 1
            continue
        product = read_product(doc, ctx.schema, ctx.image_dir)
        if is_current(doc["_source"], content_hash(product.text, product.image), ctx.model.model_id):
            skipped += 1
            continue
        products.append(product)
        versions.append((doc["_seq_no"], doc["_primary_term"]))
    # Image failures are per product (text vector + mm_embedding_error), never the batch's.
    vectors = (
        product_vectors(ctx.model, products, modalities=bool(meta.get("modalities")), image_roots=ctx.image_roots)
        if products
        else []
    )
    actions, failed = [], []
    for product, (seq_no, term), fields in zip(products, versions, vectors, strict=True):
        if fields is None:
            failed.append({"id": product.id, "status": 0, "error": "no_input: neither text nor a loadable image"})
            continue
        actions.append(vector_update_action(job.index, product.id, fields, if_seq_no=seq_no, if_primary_term=term))
    write = WriteJob(job.index, job.job_id, job.batch_id, actions, job.attempt, skipped, missing, failed)
    ctx.queue.submit_write(write)
    return write


def write_step(ctx: EmbedContext, job: WriteJob) -> dict[str, int]:
    """Write the vectors; re-embed refused (stale) products; count the batch once. Returns its product counts."""
    report = bulk_write(ctx.client, job.actions)
    _raise_if_refused(job.index, report.failed)
    errors = [{"id": f.id, "status": f.status, "error": f.error} for f in report.failed] + job.failed
    conflicts = report.conflicts
    if conflicts and job.attempt + 1 > MAX_STALE_REREADS:
        errors += [{"id": pid, "status": 409, "error": "changed on every re-read; enqueue it again"} for pid in conflicts]
        conflicts = []
    if conflicts:
        again = EmbedJob(job.index, tuple(conflicts), job.job_id, f"{job.batch_id}.r{job.attempt + 1}", job.attempt + 1)
        submit_embed(ctx.store, ctx.queue, again)
    ctx.store.record_errors(job.job_id, [{**e, "batch": job.batch_id} for e in errors])
    counts = {"written": report.succeeded, "skipped": job.skipped, "missing": job.missing, "failed": len(errors)}
    ctx.store.settle(job.job_id, job.batch_id, **counts)
    return counts


def _raise_if_refused(index: str, failures: list[BulkFailure]) -> None:
    """Items refused because of the cluster, not the document, fail the whole step.

    A 429 that outlived bulk_write's own backoff or a write block is retried later (the written
    items are skipped then as current); missing privileges dead-letter the batch. Other item
    failures (a document the mapping refuses) are the product's own and are recorded with it.
    """
    verdicts = [classify_response(f.status, {"type": f.type, "reason": f.error}) for f in failures]
    for kind in ("denied", "transient"):
        refused = [verdict for verdict in verdicts if verdict.kind == kind]
        if refused:
            raise RefusedItemsError(refused[0], len(refused), f"writes to '{index}'")


def _raise_if_unread(index: str, docs: list[dict[str, Any]]) -> None:
    """A product the multi-get could not read is not missing: the step fails, and is retried when that passes.

    After a node restart, a shard not started yet answers ``no_shard_available_action_exception``
    for each of its documents; counting them as missing would skip them for good.
    """
    verdicts = [classify_response(0, doc["error"]) for doc in docs if "error" in doc]
    if verdicts:
        first = next((v for v in verdicts if v.kind == "denied"), verdicts[0])
        raise RefusedItemsError(first, len(verdicts), f"reads of '{index}'")


def submit_embed(store: JobStore, queue: JobQueue, job: EmbedJob) -> None:
    """Send a batch, keeping its message in the job store until it settles (see :mod:`.recovery`)."""
    store.mark_enqueued(job.job_id, job.batch_id, job.to_dict())
    queue.submit_embed(job)


def enqueue(
    store: JobStore,
    queue: JobQueue,
    index: str,
    product_ids: list[str],
    *,
    batch_size: int = 64,
    job_id: str | None = None,
) -> str:
    """Embed these products (new or changed) soon; returns the job id to follow progress with."""
    job_id = job_id or new_job_id("enqueue")
    store.ensure_job(job_id, index)
    call = uuid.uuid4().hex[:8]  # a job (the change feed) may be fed many times
    for number, ids in enumerate(batch_ids(product_ids, batch_size)):
        submit_embed(store, queue, EmbedJob(index, ids, job_id, f"{job_id}.{call}.{number}"))
    return job_id


def dead_letter(store: JobStore, kind: str, payload: dict[str, Any], reason: str) -> str:
    """Park a batch that failed for good and count it as settled so its job can finish."""
    letter_id = store.add_dead_letter(kind, payload, reason)
    n = _products(payload)
    store.record_errors(payload["job_id"], [{"batch": payload["batch_id"], "status": -1, "error": reason}])
    store.settle(payload["job_id"], payload["batch_id"], dead=n)
    return letter_id


def _products(payload: dict[str, Any]) -> int:
    """How many products a dead-lettered batch counts for in its job's ``dead``."""
    return len(payload.get("ids") or payload.get("actions") or ())


def retry_dead_letters(store: JobStore, queue: JobQueue, letter_ids: list[str] | None = None) -> list[str]:
    """Submit dead-lettered batches again (as new batches of their job); returns the retried ids.

    Every retry is an embed of the batch's products, also for a failed write: the products may
    have changed since, and the write's vectors were made from the version read back then. The
    products leave their job's ``dead`` count as they are sent again and count once more, as
    written or dead, when the retry settles.
    """
    retried = []
    for letter in store.dead_letters():
        if letter_ids is not None and letter.id not in letter_ids:
            continue
        payload = letter.payload
        ids = payload.get("ids") or [action["_id"] for action in payload["actions"]]
        job = EmbedJob(payload["index"], tuple(ids), payload["job_id"], f"{payload['batch_id']}.dl-{letter.id}",
                       payload.get("attempt", 0))
        store.ensure_job(job.job_id, job.index)
        submit_embed(store, queue, job)
        store.retract_dead_letter(letter.id, job.job_id, _products(payload))
        retried.append(letter.id)
    return retried


class InlineQueue:
    """Runs each step at once in the caller's thread: small catalogs, benchmarks and tests."""

    def __init__(self, ctx_factory: Any) -> None:
        """``ctx_factory(queue)`` builds the :class:`EmbedContext` that uses this queue."""
        self.ctx: EmbedContext = ctx_factory(self)

    def submit_embed(self, job: EmbedJob) -> None:
        embed_step(self.ctx, job)

    def submit_write(self, job: WriteJob) -> None:
        write_step(self.ctx, job)

    def pending_batch_ids(self, batch_ids: Collection[str]) -> set[str]:
        """Nothing waits here: a batch runs as it is submitted."""
        return set()
