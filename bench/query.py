"""Benchmark query latency: p50/p99 and QPS for bm25, vector and hybrid at concurrency 1 and 8.

Every vector and hybrid request includes encoding the query (the model's query LRU is off, and
every query is distinct), as a live request would on a cache miss. Also reports the query tower's
encoding p50/p99 with the cache off, for the searched model and for the default-architecture query
tower (MiniLM text backbone) whose latency the issue's 5 ms target is about.

At concurrency 1 the scenarios (and encoding alone) take turns in blocks of 50 queries, so the
hybrid-vs-BM25 budget compares p99s taken over the same stretches of time (see ``_paired``). They
run twice: closed loop (each query sent as soon as the last one answered) and open loop (queries
arrive on a fixed schedule, ``--rate`` a second, as a service's requests do; see ``_timed``).
The closed loop also runs BM25 after the node idled as long as an encoding takes, so the hybrid
budget can be read against a BM25 that meets the node as a hybrid request does.

Without ``--index`` of an existing index it indexes the Myntra catalog itself (BM25 fields plus
vectors of the model in MMOS_MODEL_DIR, or of the tiny random-init model when none is set) into
``mmos-bench-myntra`` and says so. An existing index of another model is rebuilt only when its name
starts with ``mmos-bench``; any other (the demo index) is refused, never deleted.

    PYTHONPATH=. python bench/query.py --queries 1000
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mm_opensearch.catalog import CatalogSchema, read_catalog  # noqa: E402
from mm_opensearch.client import create_client  # noqa: E402
from mm_opensearch.config import Settings  # noqa: E402
from mm_opensearch.hybrid import HybridSearcher, SearchRequest, serving_settings  # noqa: E402
from mm_opensearch.indexing.load import create_product_index, load_products, merge_to_one_segment  # noqa: E402
from mm_opensearch.indexing.mappings import read_model_meta  # noqa: E402
from mm_opensearch.towers import ModelConfig, MultimodalModel  # noqa: E402


_WARM_UP = 100  # unmeasured queries per scenario before any run
_OWN_INDEX_PREFIX = "mmos-bench"  # indices the bench may delete and rebuild; it never touches others


def _model(settings: Settings) -> tuple[MultimodalModel, str]:
    if settings.model_dir is not None:
        return MultimodalModel.load(settings.model_dir, settings=settings, query_cache_size=0), str(settings.model_dir)
    return MultimodalModel.from_config(ModelConfig.tiny(), settings=settings, query_cache_size=0), "tiny random-init"


def _ensure_index(settings: Settings, index: str, model: MultimodalModel, data_dir: Path) -> str:
    client = create_client(settings, timeout=120)
    if client.indices.exists(index=index):
        mapping = next(iter(client.indices.get_mapping(index=index).values()))["mappings"]
        meta = read_model_meta(mapping)
        if meta is not None and meta["model_id"] == model.model_id:
            return f"existing index '{index}' ({client.count(index=index)['count']} docs)"
        if not index.startswith(_OWN_INDEX_PREFIX):  # e.g. the demo index, measured with another model
            found = meta["model_id"] if meta is not None else "no vectors"
            raise SystemExit(
                f"index '{index}' holds vectors of {found}, not of {model.model_id}: set MMOS_MODEL_DIR to the "
                f"model that built it, or pass an --index named {_OWN_INDEX_PREFIX}* for the bench to (re)build"
            )
        client.indices.delete(index=index)
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(data_dir / "products.jsonl.gz", schema))
    started = time.perf_counter()
    create_product_index(client, index, schema, sample=products[0].source, model=model)
    report = load_products(client, index, products, model=model, image_roots=settings.image_roots_or(data_dir))
    merge_to_one_segment(client, index)
    return (
        f"indexed {report.succeeded} products into '{index}' in {time.perf_counter() - started:.0f} s "
        f"({len(report.failed)} failed)"
    )


def _queries(data_dir: Path, n: int) -> list[str]:
    with (data_dir / "queries.tsv").open(encoding="utf-8") as handle:
        texts = list(dict.fromkeys(row["query"] for row in csv.DictReader(handle, delimiter="\t")))
    return texts[:n]


def _percentiles(latencies_ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(latencies_ms, 50)), float(np.percentile(latencies_ms, 99))


def _timed(
    fn: Callable[[str], object],
    queries: list[str],
    *,
    warm: int,
    concurrency: int = 1,
    interval_s: float = 0.0,
    idle_s: float = 0.0,
) -> tuple[list[float], float]:
    """Milliseconds of each query (after ``warm`` unmeasured ones) and the wall seconds of them all.

    ``interval_s`` > 0 (concurrency 1): an open loop, one query arriving every ``interval_s``, each
    latency counted from its arrival. A closed loop sends BM25 queries back to back, so the node
    never idles between them, while a hybrid request reaches the node only after the query was
    encoded. Measured on the demo index, any 3 ms gap before a request (a sleep, a busy loop or an
    encoding) costs 0.9-1.4 ms at p50, for BM25 and hybrid alike: the node's threads park when idle.
    Requests to a service arrive with gaps, so the open loop gives every scenario that cost.

    ``idle_s`` > 0 (closed loop): before each query, untimed, this thread spins ``idle_s`` while the
    node idles, as it does while a hybrid request's query is encoded.
    """
    def timed(query: str) -> float:
        _spin(idle_s)
        started = time.perf_counter()
        fn(query)
        return (time.perf_counter() - started) * 1000

    for query in queries[:warm]:  # JIT of the node, connection pool, caches
        fn(query)
    started = time.perf_counter()
    if interval_s > 0:
        latencies = []
        for i, query in enumerate(queries):
            arrival = started + i * interval_s
            time.sleep(max(0.0, arrival - time.perf_counter()))
            fn(query)
            latencies.append((time.perf_counter() - arrival) * 1000)
        return latencies, time.perf_counter() - started
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = list(pool.map(timed, queries))
    return latencies, time.perf_counter() - started


def _spin(seconds: float) -> None:
    """Keep this core busy for ``seconds`` (an encoding does; a sleep would let the whole machine idle)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _run(fn: Callable[[str], object], queries: list[str], concurrency: int) -> tuple[float, float, float]:
    latencies, elapsed = _timed(fn, queries, warm=10, concurrency=concurrency)
    return (*_percentiles(latencies), len(queries) / elapsed)


def _paired(
    fns: dict[str, Callable[[str], object]],
    queries: list[str],
    *,
    block: int = 50,
    warm: int = 3,
    interval_s: float = 0.0,
    idle_s: Mapping[str, float] | None = None,
) -> dict[str, tuple[float, float, float]]:
    """Concurrency 1, the scenarios taking turns in blocks of ``block`` queries, the order rotating.

    The p99 target compares scenarios with each other. Run one after the other, a burst of noise
    on this shared machine lands in one scenario only and moves the verdict either way; taking
    turns every fraction of a second, they share the same stretches of time. Each block starts
    with ``warm`` unmeasured queries, so every measured query runs as it would in a process
    serving only that scenario (caches warm for it), as a team's BM25-only service does today.
    """
    names = list(fns)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    for round_, start in enumerate(range(0, len(queries), block)):
        chunk = queries[start : start + block]
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            pause = (idle_s or {}).get(name, 0.0)
            latencies[name] += _timed(fns[name], chunk, warm=warm, interval_s=interval_s, idle_s=pause)[0]
    return {name: (*_percentiles(ms), 1000 * len(ms) / sum(ms)) for name, ms in latencies.items()}


def _encoding(model: MultimodalModel, queries: list[str]) -> tuple[float, float]:
    return _percentiles(_timed(lambda query: model.encode_queries([query]), queries, warm=5)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="mmos-bench-myntra")
    parser.add_argument("--queries", type=int, default=1000, help="distinct queries per scenario (p99 of 300 is the 3rd worst: noisy)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--rate", type=float, default=50.0, help="queries a second arriving in the open-loop run")
    args = parser.parse_args()
    settings = serving_settings(Settings())  # as `serve` runs: one torch thread unless MMOS_TORCH_THREADS
    data_dir = args.data_dir or settings.data_dir
    model, model_name = _model(settings)
    print(f"model: {model_name} ({model.model_id}, dim {model.dim})")
    print(_ensure_index(settings, args.index, model, data_dir))
    queries = _queries(data_dir, args.queries)
    searcher = HybridSearcher(create_client(settings), settings, index=args.index, tower=model)
    server = searcher.has_neural_search()
    print(f"{len(queries)} distinct queries; neural-search on the node: {server}")

    scenarios: list[tuple[str, dict[str, str]]] = [
        ("bm25", {"mode": "bm25"}),
        ("vector (+encode)", {"mode": "vector"}),
        *([("hybrid server rrf (+enc)", {"mode": "hybrid", "fusion_path": "server"})] if server else []),
        ("hybrid client rrf (+enc)", {"mode": "hybrid", "fusion_path": "client"}),
    ]  # no server path without neural-search (3.x here)
    search = {name: (lambda q, kw=kwargs: searcher.search(SearchRequest(q, **kw))) for name, kwargs in scenarios}  # type: ignore[arg-type, misc]
    in_turns = {**search, "encode only": lambda q: model.encode_queries([q])}
    for fn in in_turns.values():  # a node just started runs its first searches cold (c8 QPS halved, measured)
        for query in queries[:_WARM_UP]:
            fn(query)
    idle_ms = _encoding(model, queries[:200])[0]  # how long the node idles while a hybrid query is encoded
    idle = f"bm25, {idle_ms:.1f} ms idle before"
    loads = {
        "closed, c1": _paired({**in_turns, idle: search["bm25"]}, queries, idle_s={idle: idle_ms / 1000}),
        f"open {args.rate:g}/s, c1": _paired(in_turns, queries, interval_s=1 / args.rate),
    }
    loads["closed, c8"] = {name: _run(fn, queries, 8) for name, fn in search.items()}
    print(f"\n{'scenario':<28}{'load':>16}{'p50 ms':>9}{'p99 ms':>9}{'QPS':>8}")
    for name in [*in_turns, idle]:
        for load, results in loads.items():
            if name in results:
                p50, p99, qps = results[name]
                print(f"{name:<28}{load:>16}{p50:>9.1f}{p99:>9.1f}{qps:>8.1f}")
    print("(c1: the scenarios take turns in blocks of 50 queries; c8: one after the other; QPS of c1 = 1 / mean latency)")

    print(f"\nquery encoding, cache off, distinct queries, by {type(model.query_encoder()).__name__}: see 'encode only' above")
    default = MultimodalModel.from_config(ModelConfig(), settings=settings, use_feature_cache=False, query_cache_size=0)
    p50, p99 = _encoding(default, queries)
    print(f"  {'default architecture (MiniLM query tower), closed loop':<56} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")

    print(f"\ntargets: encoding p50 {p50:.2f} ms vs 5 ms -> {'met' if p50 <= 5 else 'MISSED'}")
    print("hybrid p99 <= 2 x bm25 p99 + encode p99, with bm25 and encode measured")
    budgets = [  # (load, bm25 scenario, what it means); the first is the target's load (README: Query latency)
        (f"open {args.rate:g}/s, c1", "bm25", "queries arriving on a schedule, as at a service (the target)"),
        ("closed, c1", idle, "back to back, bm25 after the same idle as an encoding"),
        ("closed, c1", "bm25", "back to back, bm25 never meets an idle node (reference)"),
    ]
    for load, bm25, meaning in budgets:
        results = loads[load]
        budget = 2 * results[bm25][1] + results["encode only"][1]
        print(f"  {load}, {meaning}: budget {budget:.1f} ms")
        for name, _ in scenarios[2:]:
            hybrid_p99 = results[name][1]
            verdict = "met" if hybrid_p99 <= budget else "MISSED"
            print(f"    {name}: p99 {hybrid_p99:.1f} ms = {hybrid_p99 / budget:.2f}x the budget -> {verdict}")
    print(f"torch threads: {__import__('torch').get_num_threads()}; cpu count: {os.cpu_count()}")


if __name__ == "__main__":
    main()
