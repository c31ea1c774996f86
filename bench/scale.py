"""Benchmark how cost grows with the catalog: 10 thousand to a million products on the local node.

Products are synthetic, made from the real Myntra catalog (``MMOS_DATA_DIR``): product ``j`` is a
copy of real product ``j mod S`` (its text and filter fields, so BM25 and filters see real values)
whose three vectors (fused, text, image; the default model's, ``models/default`` or
``MMOS_MODEL_DIR``) are turned away from the real ones by noise calibrated to the real catalog
(``_perturb``): the first S products are the real ones, unchanged. Nothing is written to the repo;
the real vectors are cached under ``MMOS_CACHE_DIR/bench-scale`` and the products are generated
batch by batch while they are sent, never held or stored.

**Noise.** For each real product and each vector kind, ``theta_nn`` is the angle to its nearest
real neighbour (exact, over the S real vectors). A copy's vector is the real one turned by
``theta = noise_scale * theta_nn * u`` (``u`` uniform in [0.5, 1.5], ``noise_scale`` 1 by
default) towards a random direction orthogonal to it, so it stays unit length. A copy therefore
lies about as far from its original as the original's nearest real neighbour: at a million
products the neighbourhoods are as dense, relative to the real ones, as a catalog a hundred times
larger would be, and a query's true neighbours are spread over copies of different real products,
not a cluster of near-duplicates of one (the run prints the median nearest-neighbour angle, real
and synthetic).

Per size and vector option: bulk indexing rate (lucene builds the HNSW graphs while indexing),
refresh and force-merge (to one segment: the graphs are built again, merged) times, size on disk,
k-NN stats memory (native engines' graphs; lucene's are memory-mapped files, reported as the size
of its vector and graph files), vector and hybrid (client-side RRF) p50/p99 at concurrency 1 and 8
including query encoding, and ANN recall@10 and @100 of the fused vector against exact search
(``script_score`` with ``knn_score``) on ``--queries`` real Myntra queries, unfiltered and filtered
(``article_type`` of the query's exact top hit: a user narrowing to the kind of product found).

``--sweep`` measures, at the sizes of ``--sweep-at`` (100k by default), the HNSW and quantization
options beside the default (see ``_sweep``); other sizes run the default (``MMOS_KNN_*``) only.
``--budget-s`` bounds each size (its options, merges and searches): an option that would start after
it is skipped, a force merge still running when it is spent is abandoned (its index deleted), and
exact searches stop, recall then taken over the queries done; the table says where it stopped.

    PYTHONPATH=. nice -n 19 python bench/scale.py --sizes 10000,100000,1000000 --sweep --json scale.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from opensearchpy import OpenSearch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mm_opensearch.catalog import CatalogSchema, Product, read_catalog  # noqa: E402
from mm_opensearch.client import create_client  # noqa: E402
from mm_opensearch.config import Settings  # noqa: E402
from mm_opensearch.hybrid import HybridSearcher, SearchRequest, serving_settings  # noqa: E402
from mm_opensearch.indexing.bulk import bulk_write, index_action, vector_fields_doc  # noqa: E402
from mm_opensearch.indexing.load import create_product_index  # noqa: E402
from mm_opensearch.indexing.mappings import VECTOR_FIELDS, VectorOptions  # noqa: E402
from mm_opensearch.towers import MultimodalModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PREFIX = "mmos-bench-scale"  # the only indices this bench creates and deletes
KINDS = ("fused", "text", "image")
BYTES_PER_PRODUCT = 7_000  # on disk, three 256-d vectors + BM25 fields (the demo index: 66 MB / 9,583)
MERGE_HEADROOM = 2.5  # a force merge writes the merged segment before it drops the old ones; translog
FILTER_FIELD = "article_type"
console = Console(width=None if Console().is_terminal else 220)  # the table whole in a log file too


# --- real vectors and synthetic products ----------------------------------------------------------

@dataclass
class Seeds:
    """The real products and their vectors, with each vector's angle to its nearest real neighbour."""

    products: list[Product]
    vectors: dict[str, np.ndarray]  # kind -> (S, dim) float32, unit rows
    nn_angle: dict[str, np.ndarray]  # kind -> (S,) radians


def _nn_angles(vectors: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Angle from each row to its nearest other row (exact, cosine)."""
    best = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        sims = vectors[start : start + chunk] @ vectors.T
        np.fill_diagonal(sims[:, start : start + chunk], -2.0)
        best[start : start + chunk] = sims.max(axis=1)
    return np.arccos(np.clip(best, -1.0, 1.0))


def real_vectors(settings: Settings, model: MultimodalModel, products: list[Product],
                 data_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each product's fused, text and image vectors (unnormalised rows, NaN-free) and whether it has all three.

    Cached under ``cache_dir/bench-scale`` by model id, product runtime (``MMOS_PRODUCT_RUNTIME``:
    int8 vectors are not float's) and product count.
    """
    runtime = settings.product_runtime
    cache = Path(settings.cache_dir) / "bench-scale" / f"vectors-{model.model_id}-{runtime}-{len(products)}.npz"
    if cache.exists():
        stored = np.load(cache)
        return {kind: stored[kind] for kind in KINDS}, stored["keep"]
    console.print(f"encoding {len(products)} real products with {model.model_id} on {runtime} (cached in {cache})")
    parts: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}
    ok: list[np.ndarray] = []
    for start in range(0, len(products), 512):
        batch = products[start : start + 512]
        console.print(f"  {start:,} of {len(products):,}")
        enc = model.encode_products(batch, with_modalities=True, image_roots=settings.image_roots_or(data_dir))
        ok.append(enc.has_vector & enc.has_text & enc.has_image)  # all three kinds: copies carry all three
        for kind, values in (("fused", enc.fused), ("text", enc.text), ("image", enc.image)):
            parts[kind].append(np.nan_to_num(np.asarray(values, dtype=np.float32)))
    keep = np.concatenate(ok)
    vectors = {kind: np.concatenate(parts[kind]) for kind in KINDS}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, keep=keep, **vectors)
    return vectors, keep


def load_seeds(settings: Settings, model: MultimodalModel, data_dir: Path, limit: int | None) -> Seeds:
    schema = CatalogSchema.from_settings(settings)
    products = list(itertools.islice(read_catalog(data_dir / "products.jsonl.gz", schema), limit))
    vectors, keep = real_vectors(settings, model, products, data_dir)
    products = [p for p, k in zip(products, keep, strict=True) if k]
    vectors = {kind: _unit(v[keep]) for kind, v in vectors.items()}
    return Seeds(products, vectors, {kind: _nn_angles(v) for kind, v in vectors.items()})


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _perturb(vectors: np.ndarray, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each unit row turned by its angle ``theta`` towards a random orthogonal direction (unit length kept)."""
    noise = rng.standard_normal(vectors.shape).astype(np.float32)
    noise -= (noise * vectors).sum(axis=1, keepdims=True) * vectors
    noise = _unit(noise)
    return _unit(np.cos(theta)[:, None] * vectors + np.sin(theta)[:, None] * noise)


def synthetic_batches(
    seeds: Seeds, size: int, *, batch: int = 500, noise_scale: float = 1.0
) -> Iterator[tuple[list[str], list[Product], dict[str, np.ndarray]]]:
    """Products ``0 .. size-1`` in batches: ids, the real products they copy, their vectors.

    Deterministic (the rng is seeded by the batch's start), so every option indexes the same products.
    """
    n_real = len(seeds.products)
    for start in range(0, size, batch):
        rows = np.arange(start, min(size, start + batch))
        real = rows % n_real
        copy = rows // n_real
        rng = np.random.default_rng(start)
        vectors = {}
        for kind in KINDS:
            theta = noise_scale * seeds.nn_angle[kind][real] * rng.uniform(0.5, 1.5, len(rows)).astype(np.float32)
            theta[copy == 0] = 0.0  # the real products themselves
            vectors[kind] = _perturb(seeds.vectors[kind][real], theta, rng)
        ids = [seeds.products[r].id if c == 0 else f"{seeds.products[r].id}~{c}" for r, c in zip(real, copy)]
        yield ids, [seeds.products[r] for r in real], vectors


def synthetic_nn_angle(seeds: Seeds, size: int, kind: str = "fused", sample: int = 2000) -> float:
    """Median angle from a sample of the synthetic products to their nearest synthetic neighbour."""
    rows = min(size, 200_000)  # enough to see the density; exact over all of it
    vectors = np.concatenate([v[kind] for _, _, v in synthetic_batches(seeds, rows, batch=10_000)])
    picked = np.random.default_rng(1).choice(rows, size=min(sample, rows), replace=False)
    sims = vectors[picked] @ vectors.T
    sims[np.arange(len(picked)), picked] = -2.0
    return float(np.median(np.arccos(np.clip(sims.max(axis=1), -1.0, 1.0))))


# --- one index: build, measure ---------------------------------------------------------------------

@dataclass
class Row:
    size: int
    option: str
    stopped: str | None = None
    docs_per_s: float | None = None
    bulk_s: float | None = None
    refresh_s: float | None = None
    merge_s: float | None = None
    disk_bytes: int | None = None
    vector_files: dict[str, int] = field(default_factory=dict)  # lucene file extension -> bytes
    knn_graph_memory_kb: int | None = None
    latency: dict[str, float] = field(default_factory=dict)  # "vector c1 p50" ... in ms
    recall: dict[str, float] = field(default_factory=dict)  # "@10", "@100", "@10 filtered", ...
    filter_selectivity: float | None = None
    recall_queries: int | None = None  # fewer than --queries where the budget ended the exact searches


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _index_name(size: int, options: VectorOptions) -> str:
    label = options.label().replace(" ", "-").replace(":", "").lower()
    return f"{PREFIX}-{size}-{label}"


def send_vectors(client: OpenSearch, index: str, model_id: str, ids: list[str], products: list[Product],
                 vectors: dict[str, np.ndarray]) -> int:
    """One bulk of ``products`` under ``ids`` with their rows of ``vectors``; products sent.

    An all-zero row (a product the encoder gave no such vector: real vectors are cached NaN-free) is
    left out of the document, as indexing leaves out a vector it could not compute.
    """
    actions = []
    for row, (doc_id, product) in enumerate(zip(ids, products, strict=True)):
        vec = {kind: (v if np.any(v := vectors[kind][row]) else None) for kind in KINDS}
        doc = vector_fields_doc(vec["fused"], product_id=doc_id, model_id=model_id, content_hash=doc_id,
                                text=vec["text"], image=vec["image"])
        actions.append(index_action(index, doc_id, {**product.source, "id": doc_id, **doc}))
    report = bulk_write(client, actions, chunk_size=len(actions))
    if report.failed:
        raise SystemExit(f"bulk into {index} failed: {report.failed[0]}")
    return report.succeeded


def _write(
    client: OpenSearch, index: str, model_id: str, seeds: Seeds, size: int, noise_scale: float, budget: Budget
) -> int:
    """Products sent (all of ``size`` unless the budget ended the bulk first)."""
    def send(batch: tuple[list[str], list[Product], dict[str, np.ndarray]]) -> int:
        return send_vectors(client, index, model_id, *batch)

    written, pending = 0, []
    with ThreadPoolExecutor(max_workers=2) as pool:  # two batches in flight; the next generated meanwhile
        for batch in synthetic_batches(seeds, size, noise_scale=noise_scale):
            if budget.left() <= 0:
                break
            pending.append(pool.submit(send, batch))
            if len(pending) >= 2:
                written += pending.pop(0).result()
        return written + sum(future.result() for future in pending)


def _wait_merge(client: OpenSearch, index: str, budget: Budget) -> float | None:
    """Force-merge ``index`` to one segment as a task; seconds taken, None when the budget ran out first."""
    started = time.perf_counter()
    task = client.transport.perform_request(
        "POST", f"/{index}/_forcemerge", params={"max_num_segments": 1, "wait_for_completion": "false"}
    )["task"]
    while True:
        state = client.tasks.get(task_id=task)
        if state.get("completed"):
            return time.perf_counter() - started
        if budget.left() <= 0:
            return None
        time.sleep(2)


def _vector_files(settings: Settings, client: OpenSearch, index: str) -> dict[str, int]:
    """Bytes of lucene's vector (.vec), graph (.vex) and quantized (.veq/.vemq) files, on a local node."""
    uuid = client.indices.get_settings(index=index)[index]["settings"]["index"]["uuid"]
    totals: dict[str, int] = {}
    for path in Path(settings.dev_dir).glob(f"**/indices/{uuid}/*/index/*"):
        ext = path.suffix.lstrip(".")
        if ext in ("vec", "vex", "veq", "vemq", "vemf", "vem"):
            totals[ext] = totals.get(ext, 0) + path.stat().st_size
    return totals


def _knn_graph_memory_kb(client: OpenSearch) -> int:
    stats = client.transport.perform_request("GET", "/_plugins/_knn/stats")
    return sum(int(node.get("graph_memory_usage", 0)) for node in stats["nodes"].values())


def _node_heap(client: OpenSearch) -> int:
    """The node's own heap (the bench's settings may not be the ones the node was started with)."""
    stats = client.nodes.stats(metric="jvm")["nodes"]
    return min(int(node["jvm"]["mem"]["heap_max_in_bytes"]) for node in stats.values())


def _percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _latency(fn: Callable[[str], object], queries: list[str], concurrency: int) -> tuple[float, float]:
    for query in queries[:10]:  # connection pool, node caches
        fn(query)

    def timed(query: str) -> float:
        started = time.perf_counter()
        fn(query)
        return (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return _percentiles(list(pool.map(timed, queries)))


def _exact(client: OpenSearch, index: str, vector: list[float], k: int, filters: list[dict[str, Any]]) -> list[str]:
    query = {"bool": {"filter": filters}} if filters else {"match_all": {}}
    body = {
        "size": k, "_source": False, "docvalue_fields": ["mm_id"], "track_total_hits": False,
        "query": {"script_score": {"query": query, "script": {"source": "knn_score", "lang": "knn", "params": {
            "field": VECTOR_FIELDS["fused"], "query_value": vector, "space_type": "cosinesimil"}}}},
    }
    return [hit["fields"]["mm_id"][0] for hit in client.search(index=index, body=body, request_timeout=600)["hits"]["hits"]]


def _ann(client: OpenSearch, index: str, vector: list[float], k: int, filters: list[dict[str, Any]],
         ef_search: int | None) -> list[str]:
    knn: dict[str, Any] = {"vector": vector, "k": k}
    if ef_search is not None:
        knn["method_parameters"] = {"ef_search": ef_search}
    if filters:
        knn["filter"] = {"bool": {"filter": filters}}
    body = {"size": k, "_source": False, "docvalue_fields": ["mm_id"], "track_total_hits": False,
            "query": {"knn": {VECTOR_FIELDS["fused"]: knn}}}
    return [hit["fields"]["mm_id"][0] for hit in client.search(index=index, body=body)["hits"]["hits"]]


@dataclass
class Truth:
    """Exact neighbours of each query (unfiltered and filtered), computed once per size."""

    top: list[list[str]]
    filters: list[list[dict[str, Any]]]
    top_filtered: list[list[str]]
    selectivity: float


def exact_truth(client: OpenSearch, index: str, vectors: np.ndarray, size: int, budget: Budget) -> Truth:
    top, filters, top_filtered, matched = [], [], [], []
    for vector in vectors.tolist():
        if budget.left() <= 0 and top:
            break
        hits = _exact(client, index, vector, 100, [])
        first = client.get(index=index, id=hits[0], _source_includes=[FILTER_FIELD])["_source"].get(FILTER_FIELD)
        clause = [{"term": {FILTER_FIELD: first}}]
        top.append(hits)
        filters.append(clause)
        top_filtered.append(_exact(client, index, vector, 100, clause))
        matched.append(client.count(index=index, body={"query": {"bool": {"filter": clause}}})["count"])
    return Truth(top, filters, top_filtered, float(np.mean(matched)) / size)


def _recall(found: list[str], truth: list[str], k: int) -> float:
    return len(set(found[:k]) & set(truth[:k])) / max(1, min(k, len(truth)))


def measure_recall(client: OpenSearch, index: str, vectors: np.ndarray, truth: Truth, ef_search: int | None) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for i, vector in enumerate(vectors.tolist()[: len(truth.top)]):
        for name, filters, exact in (("", [], truth.top[i]), (" filtered", truth.filters[i], truth.top_filtered[i])):
            for k in (10, 100):
                sums.setdefault(f"@{k}{name}", []).append(_recall(_ann(client, index, vector, k, filters, ef_search), exact, k))
    return {name: float(np.mean(values)) for name, values in sums.items()}


def measure_latency(searcher: HybridSearcher, queries: list[str], *, image: bool = True) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode in ("vector", "hybrid"):
        def fn(q: str, mode: str = mode) -> object:
            return searcher.search(SearchRequest(q, mode=mode, fusion_path="client"))  # type: ignore[arg-type]
        for concurrency in (1, 8):
            p50, p99 = _latency(fn, queries, concurrency)
            out[f"{mode} c{concurrency} p50"], out[f"{mode} c{concurrency} p99"] = p50, p99
    if not image:
        return out
    # The image mode searches mm_image: a graph with modality_index hnsw, a scan of every document with exact.
    p50, p99 = _latency(lambda q: searcher.search(SearchRequest(q, mode="vector", vector="image", fusion_path="client")),
                        queries, 1)
    out["image c1 p50"], out["image c1 p99"] = p50, p99
    return out


# --- the run -----------------------------------------------------------------------------------------

def _sweep(default: VectorOptions, *, faiss: bool = False) -> list[tuple[VectorOptions, list[int | None]]]:
    """Options built at the sweep sizes, each with the ef_search values measured on it.

    ``faiss`` adds the faiss engine, float and fp16 (``sq``): only on a node with the k-NN native
    libraries (the dev node has none; its first faiss segment closes the shard's IndexWriter).
    """
    def efs(*values: int | None) -> list[int | None]:  # the default's own first, then the engine's (None)
        return list(dict.fromkeys([default.ef_search, *values]))

    native = [(replace(default, engine="faiss", modality_index="hnsw"), efs(None, 256)),
              (replace(default, engine="faiss", encoder="sq", modality_index="hnsw"), efs(None, 256))] if faiss else []
    return [*native,
        (default, efs(None, 100, 256)),
        (replace(default, m=8, ef_construction=64), efs(None, 256)),
        (replace(default, m=32, ef_construction=256), efs(None, 256)),
        (replace(default, encoder="sq"), efs(None, 256)),
        (replace(default, modality_index="hnsw" if default.modality_fields == "exact" else "exact"), efs()),
    ]


def check_disk(client: OpenSearch, sizes: list[int], n_options: int, keep: bool) -> None:
    fs = client.nodes.stats(metric="fs")["nodes"]
    free = min(node["fs"]["total"]["available_in_bytes"] for node in fs.values())
    largest = max(sizes) * BYTES_PER_PRODUCT
    need = MERGE_HEADROOM * (sum(sizes) * BYTES_PER_PRODUCT * n_options if keep else largest)
    console.print(f"disk: the largest index is about {largest / 1e9:.1f} GB ({BYTES_PER_PRODUCT} B a product), "
                  f"the run needs about {need / 1e9:.1f} GB free with merge headroom; the node has {free / 1e9:.1f} GB")
    if free < need:
        raise SystemExit(f"not enough free disk on the node: {free / 1e9:.1f} GB, the run needs {need / 1e9:.1f} GB; "
                         "free some, or pass smaller --sizes")


def run_option(
    client: OpenSearch, settings: Settings, model: MultimodalModel, seeds: Seeds, size: int,
    options: VectorOptions, efs: list[int | None], queries: list[str], qvectors: np.ndarray,
    truth: Truth | None, budget: Budget, noise_scale: float,
) -> tuple[list[Row], Truth | None]:
    index = _index_name(size, options)
    rows = [Row(size, replace(options, ef_search=ef).label()) for ef in efs]
    head = rows[0]
    if budget.left() <= 0:
        for row in rows:
            row.stopped = "not started (budget spent)"
        return rows, truth
    if client.indices.exists(index=index):
        client.indices.delete(index=index)
    create_product_index(client, index, CatalogSchema.from_settings(settings), sample=seeds.products[0].source,
                         model=model, modalities=True, vector_options=options,
                         index_settings={"refresh_interval": "-1"})
    started = time.perf_counter()
    written = _write(client, index, model.model_id, seeds, size, noise_scale, budget)
    head.bulk_s = time.perf_counter() - started
    head.docs_per_s = written / head.bulk_s
    if written < size:
        for row in rows:
            row.stopped = f"bulk stopped at {written:,} products by the budget ({budget.seconds:.0f} s)"
        return rows, truth
    started = time.perf_counter()
    client.indices.refresh(index=index, request_timeout=3600)
    head.refresh_s = time.perf_counter() - started
    head.merge_s = _wait_merge(client, index, budget)
    if head.merge_s is None:
        for row in rows:
            row.stopped = f"force-merge still running after the budget ({budget.seconds:.0f} s)"
        return rows, truth
    client.indices.refresh(index=index)
    client.indices.put_settings(index=index, body={"index": {"refresh_interval": "1s"}})
    head.disk_bytes = client.indices.stats(index=index, metric="store")["indices"][index]["primaries"]["store"]["size_in_bytes"]
    head.vector_files = _vector_files(settings, client, index)
    if truth is None:
        truth = exact_truth(client, index, qvectors, size, budget)
    for row, ef in zip(rows, efs, strict=True):
        if budget.left() <= 0:
            row.stopped = "not measured (budget spent)"
            continue
        row.filter_selectivity = truth.selectivity
        row.recall_queries = len(truth.top)
        row.recall = measure_recall(client, index, qvectors, truth, ef)
        searcher = HybridSearcher(create_client(settings), settings.model_copy(update={"knn_ef_search": ef}),
                                  index=index, tower=model)
        row.latency = measure_latency(searcher, queries, image=row is rows[0])  # the image field ignores ef_search
        searcher.close()
        row.knn_graph_memory_kb = _knn_graph_memory_kb(client)
    return rows, truth


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    table = Table(title="bench/scale.py (lucene unless the option says; latency in ms incl. query encoding)")
    for name in ("size", "option", "docs/s", "refresh s", "merge s", "disk MB", "vec+graph MB", "knn mem KB",
                 "vec c1 p50/p99", "vec c8 p50/p99", "hyb c1 p50/p99", "hyb c8 p50/p99", "img c1 p50/p99",
                 "R@10", "R@100", "R@10 filt", "R@100 filt", "queries"):
        table.add_column(name, justify="right" if name != "option" else "left")
    for row in rows:
        lat = row.latency
        pair = lambda key: "-" if f"{key} p50" not in lat else f"{lat[key + ' p50']:.1f}/{lat[key + ' p99']:.1f}"  # noqa: E731
        rec = lambda key: _fmt(row.recall.get(key), ".3f")  # noqa: E731
        files = sum(row.vector_files.values()) / 1e6 if row.vector_files else None
        table.add_row(
            f"{row.size:,}", row.option + (" [stopped]" if row.stopped else ""), _fmt(row.docs_per_s),
            _fmt(row.refresh_s, ".1f"), _fmt(row.merge_s, ".1f"),
            _fmt(row.disk_bytes / 1e6 if row.disk_bytes else None), _fmt(files),
            _fmt(row.knn_graph_memory_kb), pair("vector c1"), pair("vector c8"), pair("hybrid c1"), pair("hybrid c8"),
            pair("image c1"), rec("@10"), rec("@100"), rec("@10 filtered"), rec("@100 filtered"), str(row.recall_queries or "-"),
        )
    console.print(table)
    for row in rows:
        if row.stopped:
            console.print(f"stopped: {row.size:,} {row.option}: {row.stopped}")


def _queries(data_dir: Path, n: int) -> list[str]:
    with (data_dir / "queries.tsv").open(encoding="utf-8") as handle:
        texts = list(dict.fromkeys(row["query"] for row in csv.DictReader(handle, delimiter="\t")))
    return texts[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated product counts")
    parser.add_argument("--queries", type=int, default=200, help="real queries for recall and latency")
    parser.add_argument("--sweep", action="store_true", help="measure the vector options at --sweep-at sizes")
    parser.add_argument("--sweep-at", default="100000", help="sizes at which --sweep runs every option")
    parser.add_argument("--budget-s", type=float, default=3600.0,
                        help="wall-clock bound of each size (its options, merges and searches); what is left undone "
                        "when it ends is marked in the table")
    parser.add_argument("--with-faiss", action="store_true",
                        help="sweep the faiss engine too (a node with the k-NN native libraries; not the dev node)")
    parser.add_argument("--ef-search", default=None,
                        help="ef_search values measured on the default at sizes not swept, e.g. --ef-search=-,100 ('-': the "
                        "engine's default); default: MMOS_KNN_EF_SEARCH alone")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed-products", type=int, default=None, help="real products to copy (default: all)")
    parser.add_argument("--noise-scale", type=float, default=1.0, help="copies' angle / real nearest-neighbour angle")
    parser.add_argument("--keep", action="store_true", help="keep the indices (default: each deleted once measured)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    sweep_at = {int(s) for s in args.sweep_at.split(",")} if args.sweep else set()
    settings = serving_settings(Settings())
    data_dir = args.data_dir or settings.data_dir
    model_dir = settings.model_dir or REPO / "models" / "default"
    model = MultimodalModel.load(model_dir, settings=settings, query_cache_size=0)
    client = create_client(settings, timeout=600)
    default = VectorOptions.from_settings(settings)
    efs_default: list[int | None] = ([None if ef.strip() == "-" else int(ef) for ef in args.ef_search.split(",")]
                                     if args.ef_search else [default.ef_search])
    n_options = max(len(_sweep(default, faiss=args.with_faiss)) if sweep_at else 1, 1)
    check_disk(client, sizes, n_options, args.keep)
    seeds = load_seeds(settings, model, data_dir, args.seed_products)
    queries = _queries(data_dir, args.queries)
    qvectors = model.encode_queries(queries)
    console.print(f"model {model.model_id} ({model_dir}); {len(seeds.products)} real products; {len(queries)} queries; "
                  f"median nearest-neighbour angle of the real fused vectors {np.median(seeds.nn_angle['fused']):.3f} rad")
    rows: list[Row] = []
    started = time.monotonic()
    try:
        for size in sizes:
            if size > len(seeds.products):
                console.print(f"{size:,}: median nearest-neighbour angle of the synthetic fused vectors "
                              f"{synthetic_nn_angle(seeds, size):.3f} rad")
            truth, budget = None, Budget(args.budget_s)
            plan = _sweep(default, faiss=args.with_faiss) if size in sweep_at else [(default, efs_default)]
            for options, efs in plan:
                step = time.monotonic()
                done, truth = run_option(client, settings, model, seeds, size, options, efs, queries, qvectors,
                                         truth, budget, args.noise_scale)
                rows += done
                console.print(f"{size:,} {options.label()}: {time.monotonic() - step:.0f} s "
                              f"({args.budget_s - budget.left():.0f} s of this size's {args.budget_s:.0f} s budget, "
                              f"{time.monotonic() - started:.0f} s in all)")
                if not args.keep:  # one still merging too: deleting it ends the merge
                    client.indices.delete(index=_index_name(size, options), ignore_unavailable=True)
    finally:
        print_table(rows)
        if args.json:
            machine = {"cpus": os.cpu_count(), "node": client.info()["version"]["number"],
                       "heap_max_bytes": _node_heap(client), "load_avg_at_end": os.getloadavg()}
            args.json.write_text(json.dumps({"machine": machine, "seed_products": len(seeds.products),
                                             "queries": len(queries), "noise_scale": args.noise_scale,
                                             "rows": [asdict(row) for row in rows]}, indent=2))
            console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
