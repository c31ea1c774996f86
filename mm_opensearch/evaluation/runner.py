"""Offline evaluation: index a catalog through the library's indexing module, answer every judged
query in each mode through the hybrid searcher, and score the rankings with ranx.

Modes: ``bm25``; ``dense_text_zeroshot`` (untrained text encoder); ``dense_text`` (a text-only
tower trained the same way); ``image``, ``fused`` (the multimodal tower's vectors);
``hybrid_rrf``/``hybrid_linear`` (BM25 + fused); ``text_rrf_zeroshot`` (BM25 + zero-shot text, the
text-only hybrid reference).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch

from mm_opensearch.catalog import CatalogSchema, Product
from mm_opensearch.config import Settings
from mm_opensearch.evaluation.metrics import Ranking, paired_test, score_run
from mm_opensearch.evaluation.zeroshot import ZeroShotTextTower
from mm_opensearch.hybrid.capabilities import default_fusions, provision_index
from mm_opensearch.hybrid.fusion import FusionOptions
from mm_opensearch.hybrid.search import HybridSearcher, SearchRequest
from mm_opensearch.indexing.load import create_product_index, load_products, merge_to_one_segment
from mm_opensearch.indexing.mappings import VectorOptions
from mm_opensearch.judgments import JudgedQuery
from mm_opensearch.towers import MultimodalModel

__all__ = [
    "ALL_MODES", "REPRODUCIBLE_INDEX_SETTINGS", "EvalResult", "ModeSpec", "eval_index_name", "rank_queries",
    "run_evaluation",
]

ALL_MODES = (
    "bm25", "dense_text_zeroshot", "dense_text", "image", "fused", "hybrid_rrf", "hybrid_linear", "text_rrf_zeroshot",
)


# No timed refreshes and order-preserving merges: segments (and so score ties and HNSW graphs) come
# out the same in every evaluation of the same catalog.
REPRODUCIBLE_INDEX_SETTINGS = {"refresh_interval": "-1", "merge.policy": "log_byte_size"}


@dataclass(frozen=True)
class ModeSpec:
    """Which index (by tower) and which request parameters a mode runs with."""

    tower: str  # "multimodal" | "text" | "zeroshot"
    mode: str  # SearchRequest mode
    vector: str = "fused"
    fusion: FusionOptions | None = None


def mode_specs(linear: FusionOptions, rrf: FusionOptions) -> dict[str, ModeSpec]:
    return {
        "bm25": ModeSpec("multimodal", "bm25"),
        "dense_text_zeroshot": ModeSpec("zeroshot", "vector"),
        "dense_text": ModeSpec("text", "vector"),
        "image": ModeSpec("multimodal", "vector", vector="image"),
        "fused": ModeSpec("multimodal", "vector"),
        "hybrid_rrf": ModeSpec("multimodal", "hybrid", fusion=rrf),
        "hybrid_linear": ModeSpec("multimodal", "hybrid", fusion=linear),
        "text_rrf_zeroshot": ModeSpec("zeroshot", "hybrid", fusion=FusionOptions(method="rrf", rank_constant=60)),
    }


@dataclass
class EvalResult:
    modes: dict[str, dict[str, float]]
    per_template: dict[str, dict[str, dict[str, float]]]
    p_values: dict[str, float]
    runs: dict[str, dict[str, dict[str, float]]] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    # template -> "fused_vs_dense_text" (and the hybrids vs BM25) -> paired p-value: where a mode
    # wins or loses for one kind of query, not only on average.
    per_template_p_values: dict[str, dict[str, float]] = field(default_factory=dict)


def eval_index_name(prefix: str, tower: str, model_id: str) -> str:
    """The index that holds one tower's vectors of the catalog (reused while the model is the same)."""
    return f"{prefix}-{tower}-{model_id}".lower()


def rank_queries(searcher: HybridSearcher, queries: Sequence[JudgedQuery], spec: ModeSpec, *, depth: int = 100) -> dict[str, dict[str, float]]:
    """Top ``depth`` of every query in one mode (fused scores as run scores)."""
    run: dict[str, dict[str, float]] = {}
    for query in queries:
        request = SearchRequest(query=query.text, mode=spec.mode, size=depth, depth=depth,  # type: ignore[arg-type]
                                vector=spec.vector, fusion=spec.fusion, with_source=False)  # type: ignore[arg-type]
        response = searcher.search(request)
        if response.degraded:
            msg = f"mode {spec.mode}/{spec.vector} ran degraded ({response.degraded_reason}); fix the index or model"
            raise RuntimeError(msg)
        # Ties broken by rank, so ranx (which sorts by score) keeps the engine's order.
        run[query.id] = {hit.id: hit.score - i * 1e-9 for i, hit in enumerate(response.hits)}
    return run


@contextmanager
def _untracked(_title: str, _total: int) -> Iterator[Callable[[int], None]]:
    yield lambda _n: None


def run_evaluation(
    client: OpenSearch,
    settings: Settings,
    products: Sequence[Product],
    queries: Sequence[JudgedQuery],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    model: MultimodalModel,
    text_model: MultimodalModel | None = None,
    modes: Sequence[str] = ALL_MODES,
    index_prefix: str = "mmos-eval",
    linear: FusionOptions | None = None,
    rrf: FusionOptions | None = None,
    reuse_indices: bool = False,
    image_roots: Sequence[Path] = (),
    on_stage: Callable[[str], None] | None = None,
    track: Callable[[str, int], AbstractContextManager[Callable[[int], None]]] | None = None,
) -> EvalResult:
    """Index ``products`` once per tower that the modes need, then score every mode.

    ``image_roots``: the folders local image paths may be read from (the catalog's folder).
    ``track(title, total)``: a context giving an ``on_batch(n)`` callback, for a progress display
    while products are encoded and indexed (the longest step).
    """
    notify = on_stage or (lambda _msg: None)
    specs = mode_specs(linear or FusionOptions(method="linear", weights=(0.5, 0.5)), rrf or FusionOptions())
    unknown = [m for m in modes if m not in specs]
    if unknown:
        msg = f"unknown eval mode(s) {unknown}; choose from {list(specs)}"
        raise ValueError(msg)
    towers: dict[str, Any] = {"multimodal": model, "zeroshot": ZeroShotTextTower(model)}
    if text_model is not None:
        towers["text"] = text_model
    needed = {specs[m].tower for m in modes}
    if "text" in needed and text_model is None:
        msg = "mode dense_text needs a text-only model (train one with `mm-opensearch train --text-only`)"
        raise ValueError(msg)
    schema = CatalogSchema.from_settings(settings)
    # The server path runs a fusion only where its search pipeline exists: without them, every
    # hybrid mode with tuned weights would be fused on the client (and say so in a warning).
    fusions = default_fusions(spec.fusion for m in modes if (spec := specs[m]).fusion is not None)
    seconds: dict[str, float] = {}
    searchers: dict[str, HybridSearcher] = {}
    for name in sorted(needed):
        tower = towers[name]
        index = eval_index_name(index_prefix, name, tower.model_id)
        started = time.monotonic()
        if not (reuse_indices and client.indices.exists(index=index)):
            notify(f"indexing {len(products)} products for the {name} tower into {index}")
            # The text-only tower sees no images; the others index per-modality vectors too.
            docs = [dataclasses.replace(p, image=None) for p in products] if name == "text" else products
            create_product_index(client, index, schema, sample=products[0].source, model=tower,
                                 modalities=name == "multimodal", replace=True,
                                 index_settings=REPRODUCIBLE_INDEX_SETTINGS,
                                 vector_options=VectorOptions.from_settings(settings))
            with (track or _untracked)(f"indexing ({name} tower)", len(docs)) as on_batch:
                report = load_products(client, index, docs, model=tower, modalities=name == "multimodal",
                                       image_roots=image_roots, on_batch=on_batch)
            if report.failed:
                msg = f"{len(report.failed)} products failed to index into {index}, e.g. {report.failed[0]}"
                raise RuntimeError(msg)
            merge_to_one_segment(client, index)
        provision_index(client, index, fusions)
        seconds[f"index_{name}"] = round(time.monotonic() - started, 1)
        searchers[name] = HybridSearcher(client, settings, index=index, tower=tower)
    judged = [q for q in queries if qrels.get(q.id)]
    runs: dict[str, dict[str, dict[str, float]]] = {}
    for mode in modes:
        notify(f"mode {mode}: {len(judged)} queries")
        started = time.monotonic()
        runs[mode] = rank_queries(searchers[specs[mode].tower], judged, specs[mode])
        seconds[f"search_{mode}"] = round(time.monotonic() - started, 1)
    labels = {q.id: dict(qrels[q.id]) for q in judged}
    scored = {mode: score_run(labels, run, mode) for mode, run in runs.items()}
    return EvalResult(
        modes={mode: means for mode, (means, _) in scored.items()},
        per_template=_per_template({mode: per_query for mode, (_, per_query) in scored.items()}, judged),
        p_values=_significance(labels, runs),
        runs=runs,
        seconds=seconds,
        per_template_p_values=_per_template_significance(labels, runs, judged),
    )


def _per_template(
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]], queries: Sequence[JudgedQuery]
) -> dict[str, dict[str, dict[str, float]]]:
    """template -> mode -> metric -> mean over that template's queries."""
    by_template: dict[str, list[str]] = {}
    for q in queries:
        by_template.setdefault(q.template, []).append(q.id)
    return {
        template: {
            mode: {metric: sum(scores[metric][i] for i in ids) / len(ids) for metric in scores}
            for mode, scores in per_query.items()
        }
        for template, ids in sorted(by_template.items())
    }


PER_TEMPLATE_PAIRS = (("fused", "dense_text"), ("image", "dense_text"), ("hybrid_rrf", "bm25"), ("hybrid_linear", "bm25"))


def _per_template_significance(
    labels: Mapping[str, Mapping[str, int]], runs: Mapping[str, Ranking], queries: Sequence[JudgedQuery]
) -> dict[str, dict[str, float]]:
    """template -> comparison -> paired p-value over that template's queries (2 or more of them)."""
    by_template: dict[str, list[str]] = {}
    for q in queries:
        by_template.setdefault(q.template, []).append(q.id)
    out: dict[str, dict[str, float]] = {}
    for template, ids in sorted(by_template.items()):
        if len(ids) < 2:
            continue
        subset = {qid: labels[qid] for qid in ids}
        out[template] = _significance(subset, {m: {qid: run.get(qid, {}) for qid in ids} for m, run in runs.items()},
                                      pairs=PER_TEMPLATE_PAIRS)
    return out


def _significance(labels: Mapping[str, Mapping[str, int]], runs: Mapping[str, Ranking],
                  pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, float]:
    """Paired t-test p-values (nDCG@10) of the comparisons the report makes."""
    pairs = pairs or [("fused", "dense_text"), ("fused", "bm25"), ("hybrid_rrf", "text_rrf_zeroshot"),
                      ("hybrid_linear", "text_rrf_zeroshot"), ("hybrid_rrf", "bm25"), ("hybrid_linear", "bm25")]
    out: dict[str, float] = {}
    for a, b in pairs:
        if a in runs and b in runs:
            out[f"{a}_vs_{b}"] = paired_test(labels, {a: runs[a], b: runs[b]})[(a, b)]
    return out
