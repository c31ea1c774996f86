"""``mm-opensearch search``: one query from the terminal, as a table (with ``--explain``, per leg)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mm_opensearch.config import get_settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.hybrid import FusionOptions, SearchRequest, SearchResponse, open_searcher, parse_filter_expressions
from mm_opensearch.preflight import check_opensearch


def _table(response: SearchResponse, title_field: str, explain: bool) -> Table:
    fusion = f" · {response.fusion_path}-side {response.fusion.method}" if response.fusion else ""
    degraded = f" · [bold yellow]degraded[/]: {response.degraded_reason}" if response.degraded else ""
    table = Table(title=f"{response.mode}{fusion} · {response.timings_ms['total']:.0f} ms{degraded}")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    table.add_column(title_field)
    legs = ("lexical", "vector") if explain else ()
    for leg in legs:
        table.add_column(f"{leg} rank · score", justify="right")
    for position, hit in enumerate(response.hits, start=1):
        cells = [str(position), hit.id, f"{hit.score:.6g}", str(hit.source.get(title_field, ""))]
        for leg in legs:
            where = (hit.legs or {}).get(leg)
            cells.append("—" if where is None else f"{where.rank} · {where.score:.4g}")
        table.add_row(*cells)
    return table


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError as e:
        msg = f"--weights '{text}' is malformed; write two numbers, e.g. --weights 0.3,0.7"
        raise ConfigError(msg) from e


def search(
    query: Annotated[str, typer.Argument(help="What to search for.")],
    mode: Annotated[str, typer.Option(help="bm25, vector or hybrid.")] = "hybrid",
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="field=value, field=v1,v2, field>=number (repeatable).")
    ] = None,
    size: Annotated[int, typer.Option(help="Hits per page.")] = 10,
    from_: Annotated[int, typer.Option("--from", help="Offset of the page.")] = 0,
    k: Annotated[int | None, typer.Option(help="Candidates per leg before fusion.")] = None,
    vector: Annotated[str, typer.Option(help="fused, text or image vectors.")] = "fused",
    fusion: Annotated[str | None, typer.Option(help="rrf or linear (default: the configured fusion).")] = None,
    normalization: Annotated[str | None, typer.Option(help="linear fusion: min_max, l2 or z_score.")] = None,
    weights: Annotated[str | None, typer.Option(help="lexical,vector weights, e.g. 0.3,0.7.")] = None,
    rank_constant: Annotated[int | None, typer.Option(help="rrf: k in 1/(k + rank).")] = None,
    client_side: Annotated[bool, typer.Option(help="Fuse on the client even when the cluster could.")] = False,
    explain: Annotated[bool, typer.Option(help="Show each leg's rank and score.")] = False,
    index: Annotated[
        str | None, typer.Option(help="Index or alias, e.g. mmos-demo (default MMOS_READ_ALIAS or MMOS_INDEX_NAME).")
    ] = None,
) -> None:
    """Search the configured index (or --index) and print the hits."""
    settings = get_settings()
    check_opensearch(settings)  # a wrong MMOS_OPENSEARCH_HOSTS fails here, before the model loads
    searcher = open_searcher(settings, index=index)
    default = searcher.fusion_for(fusion)  # type: ignore[arg-type]  # the fields of the method named
    options = FusionOptions(
        method=fusion or default.method,  # type: ignore[arg-type]
        normalization=normalization or default.normalization,  # type: ignore[arg-type]
        weights=_weights(weights) if weights else default.weights,
        rank_constant=rank_constant or default.rank_constant,
    )
    response = searcher.search(
        SearchRequest(
            query=query,
            mode=mode,  # type: ignore[arg-type]
            filters=parse_filter_expressions(filter_ or []),
            size=size,
            from_=from_,
            depth=k,
            vector=vector,  # type: ignore[arg-type]
            fusion=options,
            explain=explain,
            fusion_path="client" if client_side else "auto",
        )
    )
    title_field = next(iter(searcher.schema.text_fields), searcher.schema.id_field)
    Console().print(_table(response, title_field, explain))
