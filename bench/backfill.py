"""Benchmark backfill: products/s end to end (OpenSearch + Redis + Celery workers) beside encode-only.

Encode-only = ``product_vectors`` in this process on the same products and batch size, with as many
torch threads as the worker gets. End to end = ``run_backfill`` of an index holding the products
without vectors, until every vector is written (scan, queue, mget, encode, bulk update). Also
compares two 1-thread worker processes with one 2-thread process. Needs `mm-opensearch dev up`.

    PYTHONPATH=. python bench/backfill.py --model tiny --n 2000
    PYTHONPATH=. python bench/backfill.py --model default --n 1000   # MiniLM + EfficientNet-Lite0
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import torch

from mm_opensearch.backfill import JobStore, run_backfill
from mm_opensearch.catalog import CatalogSchema, Product, read_catalog
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.indexing.load import create_product_index, load_products, product_vectors
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch_workers.app import IO_QUEUE, MODEL_QUEUE, CeleryJobQueue, app

REPO = Path(__file__).resolve().parents[1]


def _encode_only(model_dir: Path, settings: Settings, products: list[Product], batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    model = MultimodalModel.load(model_dir, settings=settings, use_feature_cache=False)
    product_vectors(model, products[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(products), batch):
        product_vectors(model, products[i : i + batch])
    return len(products) / (time.perf_counter() - start)


def _start_worker(model_dir: Path, concurrency: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MMOS_MODEL_DIR": str(model_dir), "MMOS_TORCH_THREADS": str(threads),
           "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "celery", "-A", "mm_opensearch_workers.app", "worker", "-Q", f"{MODEL_QUEUE},{IO_QUEUE}",
            "--concurrency", str(concurrency), "--pool", "prefork", "--loglevel", "warning",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,  # noqa: S603
                                   start_new_session=True)
    time.sleep(3 + 2 * concurrency)  # model load after fork; a warm-up batch follows below
    return process


def _end_to_end(settings: Settings, products: list[Product], schema: CatalogSchema, model_dir: Path, *,
                concurrency: int, threads: int, batch: int, work: Path) -> float:
    client = create_client(settings)
    store = JobStore.from_settings(settings)
    dim_model = MultimodalModel.load(model_dir, settings=settings, use_feature_cache=False)
    index = f"bench-{uuid.uuid4().hex[:8]}"
    create_product_index(client, index, schema, sample=products[0].source, model=dim_model)
    load_products(client, index, products)
    worker = _start_worker(model_dir, concurrency, threads, work / f"worker-{concurrency}x{threads}.log")
    try:
        warm = f"{index}-warm"
        create_product_index(client, warm, schema, sample=products[0].source, model=dim_model)
        load_products(client, warm, products[: batch * concurrency])
        run_backfill(client, store, CeleryJobQueue(app), warm, schema=schema, batch_size=batch, timeout_s=300)
        start = time.perf_counter()
        counts = run_backfill(client, store, CeleryJobQueue(app), index, schema=schema, batch_size=batch,
                              slices=2, timeout_s=1800, restart=True)
        elapsed = time.perf_counter() - start
        assert counts.written == len(products), counts
        return len(products) / elapsed
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
        client.indices.delete(index=f"{index}*")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    settings = Settings()
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(settings.data_dir / "products_without_images.jsonl.gz", schema, limit=args.n))
    r = redis.Redis.from_url(settings.redis_url.get_secret_value())
    r.delete(MODEL_QUEUE, IO_QUEUE)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = ModelConfig.tiny() if args.model == "tiny" else ModelConfig()
        MultimodalModel.from_config(config, settings=settings, use_feature_cache=False).save(work / "model")
        encode = _encode_only(work / "model", settings, products, args.batch, threads=2)
        one = _end_to_end(settings, products, schema, work / "model", concurrency=1, threads=2, batch=args.batch,
                          work=work)
        two = _end_to_end(settings, products, schema, work / "model", concurrency=2, threads=1, batch=args.batch,
                          work=work)
    print(f"model={args.model} n={len(products)} batch={args.batch} cores={os.cpu_count()}")
    print(f"encode-only (2 threads)              {encode:9.1f} products/s")
    print(f"end to end, 1 worker x 2 threads     {one:9.1f} products/s  ({one / encode:.2f}x encode-only)")
    print(f"end to end, 2 workers x 1 thread     {two:9.1f} products/s  ({two / one:.2f}x one 2-thread worker)")


if __name__ == "__main__":
    main()
