"""Root Typer app; each command group lives in its own module and registers here."""

from __future__ import annotations

import json
import os
import traceback

import redis
import typer
from opensearchpy import ConnectionError as OSConnectionError
from opensearchpy import TransportError
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from mm_opensearch.cli import demo, dev, doctor, evaluate, index, jobs, search, serve, train
from mm_opensearch.config import get_settings
from mm_opensearch.errors import MMOpenSearchError, permission_denied
from mm_opensearch.logs import configure_logging
from mm_opensearch.preflight import opensearch_error_message, redis_error_message

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = typer.Typer(
    name="mm-opensearch",
    help="Multimodal (image + text) product retrieval for OpenSearch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


_SERVICES = frozenset({"serve", "worker"})


@app.callback()
def _logging(ctx: typer.Context) -> None:
    settings = get_settings()
    # Services keep their logs; a command's output is what it prints (see mm_opensearch.logs).
    configure_logging(settings.log_format, settings.log_level, console=ctx.invoked_subcommand not in _SERVICES)


app.add_typer(dev.app, name="dev")
app.command("demo")(demo.demo)
app.add_typer(index.app, name="index")
jobs.register(app)
app.command("train")(train.train)
app.command("export-query-graph")(train.export_query_graph)
app.command("eval")(evaluate.evaluate)
app.command("search")(search.search)
app.command("serve")(serve.serve)
app.command("doctor")(doctor.doctor)

config_app = typer.Typer(help="Inspect the configuration (MMOS_* environment variables).", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings; secrets are masked."""
    Console().print_json(json.dumps(get_settings().redacted(), default=str))


def _debug() -> bool:
    try:
        return get_settings().log_level == "DEBUG"
    except ValidationError:  # the settings themselves are what failed
        return os.environ.get("MMOS_LOG_LEVEL", "").upper() == "DEBUG"


def _fail(message: str) -> None:
    """Print one ``error:`` line on stderr (never wrapped, never read as markup), the traceback at DEBUG."""
    if _debug():
        traceback.print_exc()
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")


def _settings_error(e: ValidationError) -> str:
    errors = "; ".join(
        f"{'MMOS_' + '_'.join(map(str, err['loc'])).upper() if err['loc'] else 'MMOS_*'}: {err['msg']}"
        for err in e.errors()
    )
    return f"invalid configuration: {errors}"


def _transport_error(e: TransportError) -> str:
    """An HTTP error OpenSearch answered: its status, type and reason (no request body, no traceback)."""
    info = e.info if isinstance(e.info, dict) else {}
    error = info.get("error") if isinstance(info.get("error"), dict) else {}
    reason = error.get("reason") or e.error or ""
    if e.status_code == 403:  # the plugin's reason names the privilege; say it once, with where to grant it
        return str(permission_denied(e.info, "do this"))
    hint = {401: "; check MMOS_OPENSEARCH_USER and MMOS_OPENSEARCH_PASSWORD"}.get(e.status_code, "")
    return f"OpenSearch answered {e.status_code} {error.get('type') or e.error}: {str(reason)[:300]}{hint}"


def _redis_connection_error(error: BaseException) -> BaseException | None:
    """The redis-py connection error behind ``error`` (its cause or context, however deep), if any.

    Celery's broker (kombu) re-raises a lost Redis as its own OperationalError, with redis-py's
    error as the context; the message should be the same as when the CLI reaches Redis itself.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (redis.ConnectionError, redis.TimeoutError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def main() -> None:
    """Entry point: every failure is one ``error:`` line (naming the setting or file) and exit code 1.

    Library errors, invalid settings and connection errors of opensearch-py and redis are expected
    and get their own message; anything else gets a short line and how to see the traceback.
    """
    try:
        app()
    except MMOpenSearchError as e:
        _fail(str(e))
        raise SystemExit(1) from e
    except ValidationError as e:  # MMOS_* settings
        _fail(_settings_error(e))
        raise SystemExit(1) from e
    except OSConnectionError as e:  # also timeouts and TLS; before TransportError, its base class
        _fail(opensearch_error_message(get_settings().opensearch_hosts, e))
        raise SystemExit(1) from e
    except TransportError as e:
        _fail(_transport_error(e))
        raise SystemExit(1) from e
    except Exception as e:  # noqa: BLE001 - the last resort: a line, not a traceback
        lost = _redis_connection_error(e)  # redis-py's own, or kombu's OperationalError around it
        if lost is not None:
            _fail(redis_error_message(get_settings().redis_url.get_secret_value(), lost))
            raise SystemExit(1) from e
        first = (str(e).strip().splitlines() or [""])[0][:300]
        _fail(f"unexpected {type(e).__name__}: {first} (rerun with MMOS_LOG_LEVEL=DEBUG for the traceback)")
        raise SystemExit(1) from e


if __name__ == "__main__":
    main()
