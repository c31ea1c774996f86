"""``mm-opensearch index``: create, inspect, augment, provision, swap, roll back and clean up product indices."""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from mm_opensearch.augment import (
    AugmentPlan,
    IndexStatus,
    cleanup_previous,
    index_status,
    inspect_index,
    plan_augment,
    rollback,
    run_augment,
    swap_aliases,
)
from mm_opensearch.augment.inspect import resolve_index
from mm_opensearch.backfill import InlineQueue, JobStore, QueueEmbedder
from mm_opensearch.backfill.pipeline import EmbedContext
from mm_opensearch.catalog import CatalogSchema, read_catalog
from mm_opensearch.cli.jobs import progress_display
from mm_opensearch.cli.progress import tracker
from mm_opensearch.config import Settings, get_settings
from mm_opensearch.errors import ConfigError, ModelError
from mm_opensearch.hybrid.capabilities import ClusterCapabilities, default_fusions, provision_index
from mm_opensearch.hybrid.fusion import FusionOptions, tuned_fusion, tuned_fusions
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.indexing.mappings import VectorOptions
from mm_opensearch.preflight import check_redis, connect_opensearch

if TYPE_CHECKING:
    from opensearchpy import OpenSearch

    from mm_opensearch.towers import MultimodalModel

__all__ = ["app"]

app = typer.Typer(help="Product indices: create, inspect, augment with vectors, swap, roll back.", no_args_is_help=True)
console = Console()

class Engine(str, Enum):
    lucene = "lucene"
    faiss = "faiss"


Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]


def _model() -> MultimodalModel:
    settings = get_settings()
    if settings.model_dir is None:
        msg = "this command needs a model; set MMOS_MODEL_DIR to a model folder (written by MultimodalModel.save)"
        raise ModelError(msg)
    from mm_opensearch.towers import MultimodalModel  # noqa: PLC0415 - torch loads only when needed

    return MultimodalModel.load(settings.model_dir, settings=settings, use_feature_cache=False)


def _tuned(model: MultimodalModel | None) -> list[FusionOptions]:
    """The model's tuned fusions, the ones a serving searcher defaults to (none without a model)."""
    if model is None:
        return []
    hybrid = model.config.hybrid or {}
    return [tuned_fusion(hybrid), *tuned_fusions(hybrid).values()]


def _describe(capabilities: ClusterCapabilities) -> dict[str, str]:
    """Rows for the capabilities recorded in an index's _meta."""
    if not capabilities.neural_search:
        server = "no (neural-search not installed): client fusion"
    else:
        techniques = ", ".join(capabilities.normalization) + (", rrf" if capabilities.rrf else "")
        untested = "" if capabilities.server_path_tested else "; untested here, auto fuses on the client"
        server = f"neural-search ({techniques}){untested}"
    return {
        "cluster (recorded)": f"OpenSearch {capabilities.version}, detected {capabilities.detected_at}",
        "k-NN plugin": "yes" if capabilities.knn else "no",
        "server fusion": server,
        "search pipelines": ", ".join(capabilities.pipelines) or "-",
        **({"refused pipelines": "; ".join(f"{k}: {v}" for k, v in capabilities.refused.items())}
           if capabilities.refused else {}),
    }


def _print_capabilities(index: str, capabilities: ClusterCapabilities) -> None:
    console.print(f"recorded in '{index}' _meta: OpenSearch {capabilities.version}, "
                  f"neural-search {'yes' if capabilities.neural_search else 'no'}, "
                  f"pipelines {list(capabilities.pipelines)}", markup=False)


def _confirm(question: str, yes: bool) -> None:
    if not yes and not typer.confirm(question):
        raise typer.Abort


def _vector_options(settings: Settings, engine: Engine | None = None) -> VectorOptions:
    """``MMOS_KNN_*``, with ``--engine`` (when given) in place of ``MMOS_KNN_ENGINE``."""
    options = VectorOptions.from_settings(settings)
    if engine is None or engine.value == options.engine:
        return options
    if options.modality_index == "exact" and engine is Engine.faiss:
        msg = (
            "--engine faiss cannot be used with MMOS_KNN_MODALITY_INDEX=exact: exact-only fields turn native graph "
            "building off for the whole index, so the fused vector would get no faiss graph either; "
            "drop --engine faiss, or set MMOS_KNN_MODALITY_INDEX=hnsw"
        )
        raise ConfigError(msg)
    return replace(options, engine=engine.value)


def _print_plan(plan: AugmentPlan) -> None:
    console.print(f"[bold]augment plan[/] ({plan.strategy}): '{plan.source}' -> '{plan.target}', model {plan.model_id}")
    for number, step in enumerate(plan.steps, start=1):
        console.print(f"  {number}. {step}")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="New index name, e.g. products_v1.")],
    catalog: Annotated[Path | None, typer.Option(help="JSON Lines catalog to load into it.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Load only the first N products.")] = None,
    vectors: Annotated[bool, typer.Option(help="Add vector fields (needs MMOS_MODEL_DIR); --no-vectors = BM25 only.")] = True,
    modalities: Annotated[bool, typer.Option(help="Also per-modality vector fields.")] = False,
    alias: Annotated[list[str] | None, typer.Option(help="Aliases to point at the new index.")] = None,
    yes: Yes = False,
) -> None:
    """Create a product index from the mappings/ templates, optionally loading a catalog.

    Exits non-zero when the catalog holds no product or any product failed to load. Several lines
    with the same id are one product: each write replaces the last, so the last line wins (counted).
    """
    settings = get_settings()
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(catalog, schema, limit=limit)) if catalog else []
    if catalog and not products:
        msg = f"catalog {catalog} holds no products (no line with a product object); nothing to load into '{name}'"
        raise ConfigError(msg)
    client = connect_opensearch(settings)
    model = _model() if vectors else None
    if client.indices.exists(index=name):
        _confirm(f"index '{name}' exists; delete and recreate it?", yes)
    create_product_index(client, name, schema, sample=products[0].source if products else None, model=model,
                         modalities=modalities, replace=True, vector_options=VectorOptions.from_settings(settings))
    failed = 0
    if products:
        roots = settings.image_roots_or(catalog.parent) if catalog else ()
        with tracker(console)(f"loading '{name}'", len(products)) as on_batch:
            report = load_products(client, name, products, model=model, modalities=modalities, image_roots=roots,
                                   on_batch=on_batch)
        failed = len(report.failed)
        distinct = len({p.id for p in products})
        repeats = len(products) - distinct
        line = f"loaded {distinct - len({f.id for f in report.failed})} of {distinct} products into '{name}'"
        if repeats:
            line += f"; {repeats} duplicate ids ({len(products)} lines), the last one wins"
        console.print(line)
        for failure in report.failed[:5]:
            console.print(f"  {failure.id}: [{failure.status}] {failure.error}", markup=False)
    if model is not None:  # an index with vectors is searched hybrid: record what the cluster can fuse
        _print_capabilities(name, provision_index(client, name, default_fusions(_tuned(model))))
    if alias:
        swap_aliases(client, alias, to_index=name)
    console.print(f"created '{name}'" + (f" with aliases {alias}" if alias else ""))
    if failed:
        msg = f"{failed} products of {catalog} failed to load into '{name}' (the first are listed above); fix them and load again"
        raise ConfigError(msg)


@app.command()
def inspect(name: Annotated[str, typer.Argument(help="Index or alias.")]) -> None:
    """What the index has, and what augmenting it takes."""
    settings = get_settings()
    report = inspect_index(connect_opensearch(settings), name, CatalogSchema.from_settings(settings))
    table = Table("property", "value", show_header=False)
    rows = {
        "index": report.index, "aliases": ", ".join(report.aliases) or "-", "documents": str(report.docs),
        "index.knn": str(report.knn), "write blocked": str(report.write_blocked),
        "vector fields": ", ".join(report.vector_fields) or "-",
        "vectors kept in _source": ("yes" if report.vectors_in_source else "no (k-NN derived source)")
        if report.vector_fields else "-",
        "model": f"{report.model['model_id']} (dim {report.model['dim']})" if report.model else "-",
        "candidate ids": "mm_id doc values" if not report.docs_without_id else
        f"stored _id: {report.docs_without_id} documents lack mm_id (slower; `index augment` fills it)",
        f"{settings.updated_at_field} field": "yes" if report.has_updated_at else "missing",
        "missing text fields": ", ".join(report.missing_text_fields) or "-",
        "augment strategy": report.strategy,
    }
    recorded = ClusterCapabilities.from_mapping(report.mappings)
    rows.update(_describe(recorded) if recorded else
                {"cluster (recorded)": f"- (`mm-opensearch index provision {report.index}` records it)"})
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    if settings.model_dir is not None:
        model = _model()
        _print_plan(plan_augment(report, model_id=model.model_id, dim=model.dim, options=_vector_options(settings)))


@app.command()
def augment(
    name: Annotated[str, typer.Argument(help="Index or alias serving traffic.")],
    modalities: Annotated[bool, typer.Option(help="Also per-modality vector fields.")] = False,
    engine: Annotated[Engine | None, typer.Option(
        help="lucene, or faiss where the cluster has it (default: MMOS_KNN_ENGINE).")] = None,
    inline: Annotated[bool, typer.Option(help="Encode in this process instead of the workers.")] = False,
    slices: Annotated[int, typer.Option(min=1)] = 2,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the workers per phase.")] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Add vectors to an index without interrupting its queries (in place, or copy + alias swap).

    The vector fields are mapped as `index create` maps them, from MMOS_KNN_* (--engine overrides the engine).
    """
    settings = get_settings()
    client = connect_opensearch(settings)
    schema = CatalogSchema.from_settings(settings)
    model = _model()
    plan = plan_augment(inspect_index(client, name, schema), model_id=model.model_id, dim=model.dim,
                        modalities=modalities, options=_vector_options(settings, engine))
    _print_plan(plan)
    if dry_run:
        return
    _confirm("go ahead?", yes)
    check_redis(settings)  # a wrong MMOS_REDIS_URL fails in seconds, in one line
    store = JobStore.from_settings(settings)
    if inline:
        queue = InlineQueue(lambda q: EmbedContext(
            client, store, q, schema, model, image_dir=settings.data_dir,
            image_roots=settings.image_roots_or(settings.data_dir)))
    else:
        from mm_opensearch_workers.app import CeleryJobQueue, app as celery_app  # noqa: PLC0415 - adapter, not library

        queue = CeleryJobQueue(celery_app)
    with progress_display("embedding") as update:
        embedder = QueueEmbedder(client, store, queue, schema, image_dir=settings.data_dir,
                                 batch_size=settings.backfill_batch_size, slices=slices, timeout_s=timeout,
                                 resubmit_after_s=settings.backfill_resubmit_after_s, on_progress=update)
        result = run_augment(client, plan, embedder, schema=schema, image_dir=settings.data_dir,
                             on_step=lambda message: console.print(f"· {message}"), fusions=_tuned(model))
    if result.capabilities is not None:
        _print_capabilities(plan.target, result.capabilities)
    console.print(f"done: copied {result.copied}, replayed {len(result.replayed)}, deleted {len(result.deleted)}")


@app.command()
def provision(name: Annotated[str, typer.Argument(help="Index or alias (each index behind it is provisioned).")]) -> None:
    """Detect what the cluster can do, create the server fusion pipelines, and record both in the index _meta.

    Searches then choose server or client fusion from the index mapping alone, with no cluster-level
    call: run it once per index, and again after a cluster upgrade or a plugin change. With
    MMOS_MODEL_DIR set, the model's tuned fusions get pipelines too.
    """
    settings = get_settings()
    client = connect_opensearch(settings)
    model = _model() if settings.model_dir is not None else None
    index = resolve_index(client, name)
    _print_capabilities(index, provision_index(client, index, default_fusions(_tuned(model))))


@app.command()
def swap(
    alias: Annotated[list[str], typer.Option(help="Alias to move (repeat for read and write aliases).")],
    to: Annotated[str, typer.Option(help="Index the aliases will point to.")],
    from_index: Annotated[str | None, typer.Option("--from", help="Index they point to now.")] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Move aliases to another index in one atomic request."""
    console.print(f"move {alias} from {from_index or '(nowhere)'} to '{to}'")
    if dry_run:
        return
    _confirm("go ahead?", yes)
    swap_aliases(connect_opensearch(get_settings()), alias, to_index=to, from_index=from_index)
    console.print("done")


def _augmented(name: str) -> tuple[OpenSearch, CatalogSchema, IndexStatus]:
    """Client, schema and status of an index that augment made (for rollback and cleanup)."""
    settings = get_settings()
    client, schema = connect_opensearch(settings), CatalogSchema.from_settings(settings)
    return client, schema, index_status(client, name, schema)


@app.command("rollback")
def rollback_command(
    name: Annotated[str, typer.Argument(help="Index or alias made by augment.")],
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Point the aliases back at the index augment replaced (products written since are carried over)."""
    client, schema, status = _augmented(name)
    console.print(f"roll back '{status.report.index}' -> '{status.previous_index}' (aliases {list(status.report.aliases)})")
    if dry_run:
        return
    _confirm("go ahead?", yes)
    result = rollback(client, name, schema)
    console.print(f"aliases {result.aliases} now point to '{result.to_index}'; {result.replayed} products carried over")


@app.command()
def cleanup(
    name: Annotated[str, typer.Argument(help="Index or alias made by augment.")],
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Delete the previous index kept for rollback (rollback is impossible afterwards)."""
    client, schema, status = _augmented(name)
    console.print(f"delete '{status.previous_index}' (replaced by '{status.report.index}')")
    if dry_run:
        return
    _confirm("delete it for good?", yes)
    console.print(f"deleted '{cleanup_previous(client, name, schema)}'")


@app.command()
def status(name: Annotated[str, typer.Argument(help="Index or alias.")]) -> None:
    """Vector coverage, errors, aliases and the index kept for rollback."""
    settings = get_settings()
    state = index_status(connect_opensearch(settings), name, CatalogSchema.from_settings(settings))
    report = state.report
    console.print(f"'{report.index}' aliases {list(report.aliases)}: {report.docs} products, "
                  f"{state.with_vector} with vectors ({state.coverage:.1%}), {state.with_error} with embedding errors")
    if state.previous_index:
        kept = "kept for rollback" if state.previous_exists else "cleaned up"
        console.print(f"replaced '{state.previous_index}' ({kept})")
