"""Choose hybrid fusion weights on the training dev slice (never on val) and store them in the model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from opensearchpy import OpenSearch

from mm_opensearch.catalog import Product
from mm_opensearch.config import Settings
from mm_opensearch.hybrid.fusion import FusionOptions, tuned_fusion
from mm_opensearch.judgments import JudgedQuery
from mm_opensearch.towers import MultimodalModel
from mm_opensearch.training.data import split_dev

__all__ = ["stored_fusion", "tune_fusion"]

VECTOR_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def stored_fusion(model: MultimodalModel) -> tuple[FusionOptions, FusionOptions]:
    """The (linear, rrf) fusion options a model was tuned with, or the defaults."""
    return tuned_fusion(model.config.hybrid, "linear"), tuned_fusion(model.config.hybrid, "rrf")


def tune_fusion(
    client: OpenSearch,
    settings: Settings,
    products: Sequence[Product],
    train_queries: Sequence[JudgedQuery],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    model: MultimodalModel,
    model_dir: Path,
    index_prefix: str = "mmos-eval",
    image_roots: Sequence[Path] = (),
    on_stage: Callable[[str], None] | None = None,
) -> tuple[FusionOptions, FusionOptions]:
    """Grid-search the vector leg's weight for linear and RRF fusion on the dev slice; save the best."""
    from mm_opensearch.evaluation.runner import run_evaluation  # noqa: PLC0415 - avoids an import cycle

    provenance = model.config.provenance
    seed = int((provenance.get("train_config") or {}).get("seed", 0))
    fraction = float((provenance.get("data") or {}).get("dev_fraction", 0.1))
    _, dev = split_dev(list(train_queries), fraction, seed)
    best: dict[str, tuple[float, FusionOptions]] = {}
    for w in VECTOR_WEIGHTS:
        candidates = {
            "hybrid_linear": FusionOptions(method="linear", weights=(round(1 - w, 2), w)),
            "hybrid_rrf": FusionOptions(method="rrf", weights=(round(1 - w, 2), w)),
        }
        result = run_evaluation(client, settings, products, dev, qrels, model=model, modes=list(candidates),
                                linear=candidates["hybrid_linear"], rrf=candidates["hybrid_rrf"], reuse_indices=True,
                                index_prefix=index_prefix, image_roots=image_roots)
        for mode, options in candidates.items():
            score = result.modes[mode]["ndcg@10"]
            if on_stage:
                on_stage(f"dev nDCG@10 {mode} vector weight {w}: {score:.4f}")
            if mode not in best or score > best[mode][0]:
                best[mode] = (score, options)
    linear, rrf = best["hybrid_linear"][1], best["hybrid_rrf"][1]
    hybrid = {
        "linear": {"normalization": linear.normalization, "weights": list(linear.weights),
                   "dev_ndcg@10": best["hybrid_linear"][0]},
        "rrf": {"rank_constant": rrf.rank_constant, "weights": list(rrf.weights), "dev_ndcg@10": best["hybrid_rrf"][0]},
        "dev_queries": len(dev),
        "default": max(("linear", "rrf"), key=lambda m: best[f"hybrid_{m}"][0]),
    }
    model.config = model.config.model_copy(update={"hybrid": hybrid})
    model.save(model_dir)
    return linear, rrf
