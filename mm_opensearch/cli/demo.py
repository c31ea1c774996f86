"""``mm-opensearch demo``: the main job end to end on the sample catalog.

Starts the local services if needed, indexes the whole catalog (BM25 fields + fused and
per-modality vectors from the default model), shows hybrid results beside BM25's for a few
queries, prints offline metrics on the judged validation queries, and leaves the search page
running in the background (``mm-opensearch serve``), printing its address. It runs on the local dev
node only (``--yes`` for another cluster) and serves its index under its own alias, ``mmos-demo``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
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

PAGE_START_S = 180  # the page's process loads the model before it answers
SAMPLE_QUERIES = ("navy blue casual shirts for men", "women red floral dress", "puma sports shoes", "black leather wallet")


def demo(
    data_dir: Annotated[Path | None, typer.Option(help="Catalog folder (default MMOS_DATA_DIR).")] = None,
    limit: Annotated[int | None, typer.Option(help="Index only the first N products (quick look).")] = None,
    index: Annotated[str, typer.Option(help="Alias to serve the demo index under (only a free or demo alias).")] = DEMO_ALIAS,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Run on a cluster other than the local dev node.")] = False,
    serve_page: Annotated[bool, typer.Option("--serve/--no-serve", help="End by starting the search page in the background.")] = True,
    port: Annotated[int, typer.Option(help="Port of the search page (127.0.0.1).")] = 8000,
) -> None:
    """Bring services up, index the sample catalog, answer hybrid queries, print metrics, start the search page."""
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
    if serve_page:
        url, pid = _start_page(settings, alias, folder, port)
        stop = f"; stop it with: kill {pid}" if pid else ""
        console.print(f"[bold]search page: {url}[/] (BM25 beside hybrid; judged view of the eval queries{stop})")


def _page_answers(url: str, alias: str) -> bool | None:
    """True: a page serving ``alias`` answers at ``url``; False: something else does; None: nothing."""
    import httpx  # noqa: PLC0415

    try:
        response = httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return None
    try:
        return response.json().get("index") == alias
    except ValueError:
        return False


def _start_page(settings: Settings, alias: str, folder: Path, port: int) -> tuple[str, int | None]:
    """``mm-opensearch serve`` on 127.0.0.1:``port`` in its own session (it outlives the demo), once it answers.

    A page already serving the demo alias there is left running; its log is ``MMOS_DEV_DIR/page.log``.
    """
    url = f"http://127.0.0.1:{port}"
    answers = _page_answers(url, alias)
    if answers:
        return url, None
    if answers is False:
        msg = f"port {port} is taken by another server; pass --port to start the search page elsewhere (or --no-serve)"
        raise ConfigError(msg)
    settings.dev_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.dev_dir / "page.log"
    env = {**os.environ, "MMOS_INDEX_NAME": alias, "MMOS_DATA_DIR": str(folder.resolve())}
    command = [sys.executable, "-m", "mm_opensearch.cli.app", "serve", "--port", str(port),
               "--queries", str(folder / "queries.tsv"), "--qrels", str(folder / "qrels.tsv.gz")]
    with log_path.open("ab") as log, console.status(f"starting the search page on {url}"):
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        deadline = time.monotonic() + PAGE_START_S
        while not _page_answers(url, alias):
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.terminate()
                tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
                msg = f"the search page did not start (log {log_path}: {tail[-400:]}); `mm-opensearch serve` shows why"
                raise ConfigError(msg)
            time.sleep(0.5)
    return url, process.pid


def _refuse_unless(yes: bool, settings: Settings, alias: str, cluster_name: str | None) -> None:
    """Stop before anything is written on a cluster that is not the dev node, unless ``--yes``."""
    reason = not_the_dev_node(settings.opensearch_hosts, dev_port=settings.dev_opensearch_port, cluster_name=cluster_name)
    if reason and not yes:
        msg = (
            f"{reason}; the demo creates {DEMO_PREFIX}-* indices and the '{alias}' alias there. Point "
            "MMOS_OPENSEARCH_HOSTS at the dev node (`mm-opensearch dev up`), or pass --yes to run it on this cluster"
        )
        raise ConfigError(msg)
