"""What the vector options cost in ranking quality: nDCG@10 on the judged val queries per option, beside exact search.

bench/scale.py measures recall and cost; this measures what a user sees. The catalog
(``MMOS_DATA_DIR``, all of it, as the evaluation indexes it) is encoded once per product runtime
(bench/scale.py's cache of real vectors), then indexed once per option of ``bench/scale.py
--sweep`` and scored through the library's evaluation (same searcher, same tuned fusion as ``eval``)
in the vector modes (``fused``, ``image``) and the hybrids. The reference is exact search: float
vectors, ``ef_search`` 10,000, more than the catalog holds, so every graph node is visited.
``--runtime onnx-int8`` adds the int8 product encoder's vectors (exact search and the default),
for its nDCG beside float's.

    PYTHONPATH=. python bench/knn_quality.py --runtime onnx-int8
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rich.table import Table  # noqa: E402

from opensearchpy import OpenSearch  # noqa: E402

from bench.scale import _sweep, console, real_vectors, send_vectors  # noqa: E402
from mm_opensearch.catalog import CatalogSchema, Product, read_catalog  # noqa: E402
from mm_opensearch.client import create_client  # noqa: E402
from mm_opensearch.config import Settings  # noqa: E402
from mm_opensearch.evaluation.runner import REPRODUCIBLE_INDEX_SETTINGS, eval_index_name, run_evaluation  # noqa: E402
from mm_opensearch.evaluation.tuning import stored_fusion  # noqa: E402
from mm_opensearch.indexing.load import create_product_index, merge_to_one_segment  # noqa: E402
from mm_opensearch.indexing.mappings import VectorOptions  # noqa: E402
from mm_opensearch.judgments import load_qrels, load_queries  # noqa: E402
from mm_opensearch.towers import MultimodalModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PREFIX = "mmos-bench-knnq"  # the only indices this bench creates and deletes
MODES = ("fused", "image", "hybrid_linear", "hybrid_rrf")
EXHAUSTIVE_EF = 10_000  # > the catalog: the HNSW search visits every node, i.e. exact


def _index(client: OpenSearch, settings: Settings, model: MultimodalModel, products: list[Product],
           vectors: dict[str, np.ndarray], options: VectorOptions) -> None:
    """The catalog with these vectors, as the evaluation would have indexed it (one segment)."""
    index = eval_index_name(PREFIX, "multimodal", model.model_id)
    create_product_index(client, index, CatalogSchema.from_settings(settings), sample=products[0].source, model=model,
                         modalities=True, replace=True, vector_options=options,
                         index_settings=REPRODUCIBLE_INDEX_SETTINGS)
    for start in range(0, len(products), 500):
        rows = slice(start, start + 500)
        batch = products[rows]
        send_vectors(client, index, model.model_id, [p.id for p in batch], batch,
                     {kind: v[rows] for kind, v in vectors.items()})
    merge_to_one_segment(client, index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", action="append", default=[], choices=["onnx-int8"],
                        help="also score this product runtime's vectors (exact and default options)")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    base = Settings()  # not serving_settings: encoding the catalog wants every core, and no latency is measured
    data_dir = base.data_dir
    model_dir = base.model_dir or REPO / "models" / "default"
    schema = CatalogSchema.from_settings(base)
    products = list(read_catalog(data_dir / "products.jsonl.gz", schema))
    queries = load_queries(data_dir / "queries.tsv", split=args.split)
    qrels = load_qrels(data_dir / "qrels.tsv.gz")
    client = create_client(base, timeout=600)
    default = VectorOptions.from_settings(base)
    plan: list[tuple[str, str, VectorOptions, int | None]] = [("onnx", "exact", default, EXHAUSTIVE_EF)]
    plan += [("onnx", replace(o, ef_search=ef).label(), o, ef) for o, efs in _sweep(default) for ef in efs]
    for runtime in args.runtime:
        plan += [(runtime, "exact", default, EXHAUSTIVE_EF), (runtime, default.label(), default, default.ef_search)]
    rows: list[tuple[str, str, dict[str, float]]] = []
    built: tuple[str, VectorOptions] | None = None
    loaded: dict[str, tuple[MultimodalModel, dict[str, np.ndarray]]] = {}
    try:
        for runtime, label, options, ef in plan:
            settings = base.model_copy(update={"product_runtime": runtime, "knn_ef_search": ef})
            if runtime not in loaded:  # the model and its vectors depend on the runtime alone
                model = MultimodalModel.load(model_dir, settings=settings, query_cache_size=0)
                loaded[runtime] = (model, real_vectors(settings, model, products, data_dir)[0])
            model, vectors = loaded[runtime]
            if built != (runtime, replace(options, ef_search=None)):  # ef_search is read at query time only
                _index(client, settings, model, products, vectors, options)
                built = (runtime, replace(options, ef_search=None))
            linear, rrf = stored_fusion(model)
            result = run_evaluation(client, settings, products, queries, qrels, model=model, modes=MODES,
                                    index_prefix=PREFIX, linear=linear, rrf=rrf, reuse_indices=True)
            rows.append((runtime, label, {mode: result.modes[mode]["ndcg@10"] for mode in MODES}))
            console.print(f"{runtime} {label}: " + ", ".join(f"{m} {v:.4f}" for m, v in rows[-1][2].items()))
    finally:
        client.indices.delete(index=f"{PREFIX}-*", ignore_unavailable=True)
    exact = {runtime: scores for runtime, label, scores in rows if label == "exact"}
    table = Table(title=f"bench/knn_quality.py: nDCG@10 on {len(queries)} {args.split} queries, "
                  f"{len(products):,} products (difference from float exact search)")
    for name in ("vectors", "option", *MODES):
        table.add_column(name, justify="left" if name in ("vectors", "option") else "right")
    for runtime, label, scores in rows:
        table.add_row("float" if runtime == "onnx" else runtime, label,
                      *(f"{scores[m]:.4f} ({scores[m] - exact['onnx'][m]:+.4f})" for m in MODES))
    console.print(table)


if __name__ == "__main__":
    main()
