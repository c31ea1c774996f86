"""Root Typer app; each command group lives in its own module and registers here."""

from __future__ import annotations

import json
import os

import typer
from pydantic import ValidationError
from rich.console import Console

from mm_opensearch.cli import demo, dev, evaluate, index, jobs, search, serve, train
from mm_opensearch.config import get_settings
from mm_opensearch.errors import MMOpenSearchError
from mm_opensearch.logs import configure_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = typer.Typer(
    name="mm-opensearch",
    help="Multimodal (image + text) product retrieval for OpenSearch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _logging() -> None:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


app.add_typer(dev.app, name="dev")
app.command("demo")(demo.demo)
app.add_typer(index.app, name="index")
jobs.register(app)
app.command("train")(train.train)
app.command("eval")(evaluate.evaluate)
app.command("search")(search.search)
app.command("serve")(serve.serve)

config_app = typer.Typer(help="Inspect the configuration (MMOS_* environment variables).", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings; secrets are masked."""
    Console().print_json(json.dumps(get_settings().redacted(), default=str))


def main() -> None:
    """Entry point that turns library errors into a one-line message and exit code 1."""
    try:
        app()
    except MMOpenSearchError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}")
        raise SystemExit(1) from e
    except ValidationError as e:  # MMOS_* settings
        errors = "; ".join(
            f"{'MMOS_' + '_'.join(map(str, err['loc'])).upper() if err['loc'] else 'MMOS_*'}: {err['msg']}"
            for err in e.errors()
        )
        Console(stderr=True).print(f"[bold red]error:[/] invalid configuration: {errors}")
        raise SystemExit(1) from e
