"""``mm-opensearch eval``: index a catalog, run every judged query in each mode, write a report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mm_opensearch.cli.progress import tracker
from mm_opensearch.config import get_settings

console = Console()

_COLUMNS = {"ndcg@10": "nDCG@10", "recall@100": "Recall@100", "mrr@10": "MRR@10"}


def metrics_table(modes: Mapping[str, Mapping[str, float]], *, title: str, baseline: str = "bm25") -> Table:
    """Metrics per mode, with the nDCG@10 ratio to ``baseline`` when it was run."""
    table = Table("mode", *_COLUMNS.values(), title=title)
    base = modes.get(baseline, {}).get("ndcg@10")
    if base:
        table.add_column(f"vs {baseline}")
    for mode, scores in modes.items():
        ratio = [f"{scores['ndcg@10'] / base:.2f}x"] if base else []
        table.add_row(mode, *(f"{scores[m]:.4f}" for m in _COLUMNS), *ratio)
    return table


def evaluate(
    catalog: Annotated[Path, typer.Option(help="Products, JSON Lines (.jsonl or .jsonl.gz); all are indexed.")],
    queries: Annotated[Path, typer.Option(help="TSV: query_id, query[, split, template].")],
    qrels: Annotated[Path, typer.Option(help="TSV: query_id, product_id, grade.")],
    model: Annotated[Path, typer.Option(help="Multimodal model artifact folder.")],
    text_model: Annotated[Path | None, typer.Option(help="Text-only model (for dense_text).")] = None,
    split: Annotated[str, typer.Option(help="Query split to evaluate on.")] = "val",
    modes: Annotated[str, typer.Option(help="Comma-separated modes (default: all).")] = "",
    out: Annotated[Path | None, typer.Option(help="Folder for report.json, report.md and report.png.")] = None,
    tune: Annotated[bool, typer.Option(help="Pick hybrid weights on the train dev slice; store them in the model.")] = False,
    reuse_indices: Annotated[bool, typer.Option(help="Reuse eval indices of the same model ids.")] = False,
) -> None:
    """Scores nDCG@10 (gain 2^grade-1), Recall@100 and MRR@10 (grade 2 relevant) per mode and template."""
    from mm_opensearch.catalog import CatalogSchema, read_catalog  # noqa: PLC0415 - torch loads only here
    from mm_opensearch.client import create_client  # noqa: PLC0415
    from mm_opensearch.evaluation.report import p_values_line, write_report  # noqa: PLC0415
    from mm_opensearch.evaluation.runner import ALL_MODES, run_evaluation  # noqa: PLC0415
    from mm_opensearch.evaluation.tuning import stored_fusion, tune_fusion  # noqa: PLC0415
    from mm_opensearch.judgments import load_qrels, load_queries  # noqa: PLC0415
    from mm_opensearch.towers import MultimodalModel  # noqa: PLC0415
    from mm_opensearch.provenance import command_line, git_commit  # noqa: PLC0415

    settings = get_settings()
    client = create_client(settings)
    products = list(read_catalog(catalog, CatalogSchema.from_settings(settings)))
    roots = settings.image_roots_or(catalog.parent)
    labels = load_qrels(qrels)
    multimodal = MultimodalModel.load(model, settings=settings)
    text = MultimodalModel.load(text_model, settings=settings) if text_model else None
    selected = [m.strip() for m in modes.split(",") if m.strip()] or [m for m in ALL_MODES if text or m != "dense_text"]
    say = lambda msg: console.print(f"[dim]{msg}[/]")  # noqa: E731
    if tune:
        linear, rrf = tune_fusion(client, settings, products, load_queries(queries, split="train"), labels,
                                  model=multimodal, model_dir=model, on_stage=say, image_roots=roots)
        console.print(f"tuned: linear {linear}, rrf {rrf}; stored in {model}/config.json")
    else:
        linear, rrf = stored_fusion(multimodal)
    result = run_evaluation(client, settings, products, load_queries(queries, split=split), labels,
                            model=multimodal, text_model=text, modes=selected, linear=linear, rrf=rrf, image_roots=roots,
                            reuse_indices=reuse_indices, on_stage=say, track=tracker(console))
    console.print(metrics_table(result.modes, title=f"{split} queries, {len(products)} products indexed"))
    console.print(p_values_line(result))
    if out is not None:
        header = {"command": command_line(), "commit": git_commit(),
                  "model_id": multimodal.model_id, "text_model_id": text.model_id if text else None,
                  "data": {"catalog": str(catalog), "queries": str(queries), "split": split,
                           "products": len(products)},
                  "fusion": {"linear": asdict(linear), "rrf": asdict(rrf)},
                  # The hybrid method the dev slice chose (`eval --tune`): the one a target reads.
                  "hybrid_default": f"hybrid_{multimodal.config.hybrid.get('default', 'rrf')}"}
        console.print(f"report written to {write_report(result, out, header=header)}")
