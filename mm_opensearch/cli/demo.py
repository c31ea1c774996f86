"""``mm-opensearch demo``: the main job end to end on the sample catalog.

Starts the local services if needed, indexes the whole catalog (BM25 fields + fused and
per-modality vectors from the default model), shows hybrid results beside BM25's for a few
queries, and prints offline metrics on the judged validation queries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mm_opensearch.cli.evaluate import metrics_table
from mm_opensearch.config import get_settings

console = Console()

DEMO_PREFIX = "mmos-demo"
SAMPLE_QUERIES = ("navy blue casual shirts for men", "women red floral dress", "puma sports shoes", "black leather wallet")


def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Catalog folder (default MMOS_DATA_DIR).")] = None,
    limit: Annotated[int | None, typer.Option(help="Index only the first N products (quick look).")] = None,
    index: Annotated[str | None, typer.Option(help="Alias to serve the demo index under (default MMOS_INDEX_NAME).")] = None,
) -> None:
    """Bring services up, index the sample catalog, answer hybrid queries and print metrics."""
    from mm_opensearch.catalog import CatalogSchema, read_catalog  # noqa: PLC0415 - torch loads only here
    from mm_opensearch.client import create_client  # noqa: PLC0415
    from mm_opensearch.devservices import OpenSearchNode, RedisServer  # noqa: PLC0415
    from mm_opensearch.augment import swap_aliases  # noqa: PLC0415
    from mm_opensearch.augment.inspect import resolve_index  # noqa: PLC0415
    from mm_opensearch.evaluation.runner import eval_index_name, run_evaluation  # noqa: PLC0415
    from mm_opensearch.evaluation.tuning import stored_fusion  # noqa: PLC0415
    from mm_opensearch.hybrid.fusion import tuned_fusion  # noqa: PLC0415
    from mm_opensearch.hybrid import HybridSearcher, SearchRequest  # noqa: PLC0415
    from mm_opensearch.judgments import load_qrels, load_queries  # noqa: PLC0415
    from mm_opensearch.towers import load_default_model  # noqa: PLC0415

    settings = get_settings()
    folder = data_dir or settings.data_dir
    with console.status("starting OpenSearch and Redis (harmless when they already run)"):
        OpenSearchNode(settings).start()
        RedisServer(settings).start()
    client = create_client(settings)
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(folder / "products.jsonl.gz", schema, limit=limit))
    with console.status("loading the model"):
        model = load_default_model(settings)
    console.print(f"model {model.model_id} ({model.config.fusion} fusion, {model.dim}-d); {len(products)} products")
    linear, rrf = stored_fusion(model)
    result = run_evaluation(
        client, settings, products, load_queries(folder / "queries.tsv", split="val"), load_qrels(folder / "qrels.tsv.gz"),
        model=model, modes=["bm25", "dense_text_zeroshot", "image", "fused", "hybrid_rrf", "hybrid_linear"],
        index_prefix=DEMO_PREFIX, linear=linear, rrf=rrf, reuse_indices=True,
        image_roots=settings.image_roots_or(folder),
        on_stage=lambda msg: console.print(f"[dim]{msg}[/]"),
    )
    demo_index = eval_index_name(DEMO_PREFIX, "multimodal", model.model_id)
    alias = index or settings.index_name
    current = resolve_index(client, alias) if client.indices.exists_alias(name=alias) else None
    swap_aliases(client, [alias], to_index=demo_index, from_index=current)
    console.print(f"index {demo_index} is served as '{alias}' (try: mm-opensearch search \"red dress\" --explain)")

    searcher = HybridSearcher(client, settings, index=alias, tower=model, default_fusion=tuned_fusion(model.config.hybrid))
    label = next(iter(schema.text_fields))
    for text in SAMPLE_QUERIES:
        table = Table(title=f"“{text}”", show_lines=False)
        table.add_column("#", justify="right")
        table.add_column("BM25")
        table.add_column("hybrid (BM25 + fused image/text)")
        bm25 = searcher.search(SearchRequest(query=text, mode="bm25", size=5)).hits
        hybrid = searcher.search(SearchRequest(query=text, mode="hybrid", size=5)).hits
        for i in range(5):
            cells = [str(h[i].source.get(label, h[i].id)) if i < len(h) else "" for h in (bm25, hybrid)]
            table.add_row(str(i + 1), *cells)
        console.print(table)

    title = f"validation queries ({len(result.runs['bm25'])}), whole catalog indexed"
    console.print(metrics_table(result.modes, title=title))
