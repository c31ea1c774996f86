"""``mm-opensearch demo``: the main job end to end on the sample catalog.

Starts the local services if needed, indexes the whole catalog (BM25 fields + fused and
per-modality vectors from the default model), shows hybrid results beside BM25's for a few
queries, and prints offline metrics on the judged validation queries. It runs on the local dev
node only (``--yes`` for another cluster) and serves its index under its own alias, ``mmos-demo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mm_opensearch.cli.evaluate import metrics_table
from mm_opensearch.cli.progress import tracker
from mm_opensearch.config import Settings, get_settings
from mm_opensearch.demo import DEMO_ALIAS, DEMO_PREFIX, check_demo_alias, not_the_dev_node, serve_demo_index
from mm_opensearch.errors import ConfigError

console = Console()

SAMPLE_QUERIES = ("navy blue casual shirts for men", "women red floral dress", "puma sports shoes", "black leather wallet")


def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Catalog folder (default MMOS_DATA_DIR).")] = None,
    limit: Annotated[int | None, typer.Option(help="Index only the first N products (quick look).")] = None,
    index: Annotated[str, typer.Option(help="Alias to serve the demo index under (only a free or demo alias).")] = DEMO_ALIAS,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Run on a cluster other than the local dev node.")] = False,
) -> None:
    """Bring services up, index the sample catalog, answer hybrid queries and print metrics."""
    from mm_opensearch.devservices import OpenSearchNode, RedisServer  # noqa: PLC0415
    from mm_opensearch.preflight import connect_opensearch  # noqa: PLC0415

    settings = get_settings()
    folder = data_dir or settings.data_dir
    alias = index
    local = not_the_dev_node(settings.opensearch_hosts, dev_port=settings.dev_opensearch_port) is None
    if not local:
        _refuse_unless(yes, settings, alias, None)  # before anything starts (or torch loads)
    else:
        with console.status("starting OpenSearch and Redis (harmless when they already run)"):
            OpenSearchNode(settings).start()
            RedisServer(settings).start()
    client = connect_opensearch(settings)
    if local:  # a local port may be a tunnel to a team's cluster: its name tells
        _refuse_unless(yes, settings, alias, str(client.info().get("cluster_name")))
    check_demo_alias(client, alias)  # before minutes of indexing, not after

    from mm_opensearch.catalog import CatalogSchema, read_catalog  # noqa: PLC0415 - torch loads only here
    from mm_opensearch.evaluation.runner import eval_index_name, run_evaluation  # noqa: PLC0415
    from mm_opensearch.evaluation.tuning import stored_fusion  # noqa: PLC0415
    from mm_opensearch.hybrid import HybridSearcher, SearchRequest  # noqa: PLC0415
    from mm_opensearch.hybrid.fusion import tuned_fusion  # noqa: PLC0415
    from mm_opensearch.judgments import load_qrels, load_queries  # noqa: PLC0415
    from mm_opensearch.towers import load_default_model  # noqa: PLC0415

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
        on_stage=lambda msg: console.print(f"[dim]{msg}[/]"), track=tracker(console),
    )
    demo_index = eval_index_name(DEMO_PREFIX, "multimodal", model.model_id)
    serve_demo_index(client, alias, demo_index)
    from mm_opensearch.hybrid.capabilities import default_fusions, provision_index  # noqa: PLC0415
    from mm_opensearch.hybrid.fusion import tuned_fusions  # noqa: PLC0415

    # Serving then picks server or client fusion from the index mapping, with no cluster-level call.
    provision_index(client, demo_index, default_fusions(tuned_fusions(model.config.hybrid).values()))
    console.print(f"index {demo_index} is served as '{alias}' (try: mm-opensearch search \"red dress\" --index {alias} --explain)")

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

    indexed = "whole catalog" if limit is None else f"first {len(products)} products"
    title = f"validation queries ({len(result.runs['bm25'])}), {indexed} indexed"
    console.print(metrics_table(result.modes, title=title))


def _refuse_unless(yes: bool, settings: Settings, alias: str, cluster_name: str | None) -> None:
    """Stop before anything is written on a cluster that is not the dev node, unless ``--yes``."""
    reason = not_the_dev_node(settings.opensearch_hosts, dev_port=settings.dev_opensearch_port, cluster_name=cluster_name)
    if reason and not yes:
        msg = (
            f"{reason}; the demo creates {DEMO_PREFIX}-* indices and the '{alias}' alias there. Point "
            "MMOS_OPENSEARCH_HOSTS at the dev node (`mm-opensearch dev up`), or pass --yes to run it on this cluster"
        )
        raise ConfigError(msg)
