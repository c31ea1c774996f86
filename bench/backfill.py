"""Benchmark backfill: products/s end to end (OpenSearch + Redis + Celery workers) beside encode-only.

Products are the catalog's with images (``products.jsonl.gz``) and without (``products_without_images``,
which take the text path), drawn with the same mix at every size: ``--sizes 1000,all`` compares a
1k draw with the whole catalog (44,441 products of Myntra), so a rate that falls with size shows.
Encode-only = ``product_vectors`` in this process on the smallest draw, same batch size, as many
torch threads as one worker process gets in all. End to end = ``run_backfill`` of an index holding
the products without vectors until every vector is written (scan, queue, mget, encode, bulk
update), for each ``--workers`` shape (``1x2`` = one process of two threads, ``2x1`` = two processes
of one). Redis is sampled every half second meanwhile: its memory over the level before the job (the
job's whole footprint, peak) and the bytes of the broker's keys beside the batches in them (queued
or unacknowledged), so the table gives bytes per in-flight batch.
Needs `mm-opensearch dev up`.

    PYTHONPATH=. python bench/backfill.py --model tiny --sizes 2000
    PYTHONPATH=. MMOS_PRODUCT_RUNTIME=onnx python bench/backfill.py --model default --sizes 1000,all
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
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

UNACKED = "unacked"  # kombu's redis transport: delivered, not yet acknowledged

REPO = Path(__file__).resolve().parents[1]


def _encode_only(model_dir: Path, settings: Settings, products: list[Product], batch: int, threads: int) -> float:
    torch.set_num_threads(threads)
    model = MultimodalModel.load(model_dir, settings=settings, use_feature_cache=False)
    roots = settings.image_roots_or(settings.data_dir)  # what the workers read images from
    product_vectors(model, products[:batch], image_roots=roots)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(products), batch):
        failed = [d for d in product_vectors(model, products[i : i + batch], image_roots=roots) if d["mm_embedding_error"]]
        if failed:  # a refused or broken image takes the text path: the rate would not be the catalog's
            raise SystemExit(f"encode-only: {len(failed)} products failed, e.g. {failed[0]['mm_embedding_error']}")
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


@dataclass
class RedisSampler:
    """Redis memory over its level before the job, and the broker's keys beside the batches they hold.

    Every ``every_s``: ``used_memory`` over the baseline (the job's whole footprint: messages, the job
    store's checkpoints, allocator slack), and ``MEMORY USAGE`` of the two queues and kombu's
    unacknowledged hash with the number of batches in them. The bytes of a batch in flight come from
    the latter: ``used_memory`` moves by more than a batch's message between samples.
    """

    client: redis.Redis
    every_s: float = 0.5
    baseline: int = 0
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (over baseline, broker key bytes, batches)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _broker(self) -> tuple[int, int]:
        with self.client.pipeline(transaction=True) as pipe:
            for key in (MODEL_QUEUE, IO_QUEUE, UNACKED):
                (pipe.hlen if key == UNACKED else pipe.llen)(key)
                pipe.memory_usage(key, samples=0)  # samples=0: every element, not an estimate
            replies = pipe.execute()
        return sum(b or 0 for b in replies[1::2]), sum(replies[0::2])

    def _used(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def __enter__(self) -> RedisSampler:
        self.baseline = self._used()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append((self._used() - self.baseline, *self._broker()))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, float]:
        busy = [(over, held, n) for over, held, n in self.samples if n > 0]
        if not busy:
            return {"peak_over_baseline_bytes": 0, "max_in_flight": 0, "bytes_per_in_flight_batch": 0}
        per_batch = sorted(held / n for _, held, n in busy)
        return {
            "peak_over_baseline_bytes": max(over for over, _, _ in busy),
            "max_in_flight": max(n for _, _, n in busy),
            "bytes_per_in_flight_batch": per_batch[len(per_batch) // 2],  # the median over the samples
        }


def _end_to_end(settings: Settings, products: list[Product], schema: CatalogSchema, model_dir: Path, *,
                concurrency: int, threads: int, batch: int, work: Path) -> tuple[float, dict[str, float]]:
    """Products/s of a backfill of ``products`` by one worker of ``concurrency`` x ``threads``, and Redis's memory."""
    client = create_client(settings, timeout=120)
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
        with RedisSampler(redis.Redis.from_url(settings.redis_url.get_secret_value())) as sampler:
            start = time.perf_counter()
            counts = run_backfill(client, store, CeleryJobQueue(app), index, schema=schema, batch_size=batch,
                                  slices=2, timeout_s=7200, restart=True)
            elapsed = time.perf_counter() - start
        if counts.written != len(products):
            raise SystemExit(f"backfill of {index} wrote {counts.written} of {len(products)}: {counts}")
        client.indices.refresh(index=index)
        failed = client.count(index=index, body={"query": {"exists": {"field": "mm_embedding_error"}}})["count"]
        if failed:
            raise SystemExit(f"backfill of {index}: {failed} products recorded an embedding error (image refused?)")
        return len(products) / elapsed, sampler.summary()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
        client.indices.delete(index=f"{index}*")


def draw(with_images: list[Product], without: list[Product], n: int | None, seed: int = 0) -> list[Product]:
    """``n`` products (all when None) with the catalog's share of products with images, shuffled together."""
    rng = random.Random(seed)
    total = len(with_images) + len(without)
    n = total if n is None else min(n, total)
    k = round(n * len(with_images) / total)
    picked = rng.sample(with_images, k) + rng.sample(without, n - k)
    rng.shuffle(picked)
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny",
                        help="tiny = a random-init tiny model; default = models/default (or MMOS_MODEL_DIR)")
    parser.add_argument("--sizes", default="1000", help="comma-separated product counts, 'all' for the whole catalog")
    parser.add_argument("--workers", default="1x2,2x1", help="worker shapes, processes x torch threads")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    settings = Settings()
    schema = CatalogSchema.from_settings(settings)
    with_images = list(read_catalog(settings.data_dir / "products.jsonl.gz", schema))
    without = list(read_catalog(settings.data_dir / "products_without_images.jsonl.gz", schema))
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",")]
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.workers.split(",")]
    r = redis.Redis.from_url(settings.redis_url.get_secret_value())
    r.delete(MODEL_QUEUE, IO_QUEUE)
    runtime = settings.product_runtime
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model == "tiny":
            model_dir = work / "model"
            MultimodalModel.from_config(ModelConfig.tiny(), settings=settings, use_feature_cache=False).save(model_dir)
        else:
            model_dir = settings.model_dir or REPO / "models" / "default"
        smallest = draw(with_images, without, min(s or 10**9 for s in sizes))
        encode = _encode_only(model_dir, settings, smallest, args.batch, threads=2)
        rows.append(f"encode-only, {len(smallest):,} products, 2 threads: {encode:9.1f} products/s")
        first: dict[tuple[int, ...], float] = {}
        for size in sizes:
            products = draw(with_images, without, size)
            share = sum(p.image is not None for p in products) / len(products)
            for shape in shapes:
                rate, mem = _end_to_end(settings, products, schema, model_dir, concurrency=shape[0], threads=shape[1],
                                        batch=args.batch, work=work)
                base = first.setdefault(shape, rate)
                rows.append(
                    f"{len(products):>6,} products ({share:.1%} with images), {shape[0]} worker(s) x {shape[1]} thread(s): "
                    f"{rate:7.1f} products/s ({rate / encode:.2f}x encode-only, {rate / base:.2f}x the first size); "
                    f"Redis +{mem['peak_over_baseline_bytes'] / 1e6:.1f} MB at peak, up to {mem['max_in_flight']} "
                    f"batches in flight, {mem['bytes_per_in_flight_batch'] / 1e3:.1f} KB per in-flight batch"
                )
                print(rows[-1], flush=True)
    print(f"model={args.model} ({model_dir}) runtime={runtime} batch={args.batch} cores={os.cpu_count()}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
