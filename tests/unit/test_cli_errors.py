"""The CLI's last-resort error line and the demo's dev-node guard (pure logic, no services)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from mm_opensearch.config import get_settings
from mm_opensearch.demo import not_the_dev_node

cli_app = importlib.import_module("mm_opensearch.cli.app")  # the module; mm_opensearch.cli.app is also the Typer app


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """main() reads MMOS_LOG_LEVEL through the cached settings: each test sees its own environment."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _boom() -> None:
    msg = "the first line\nand a second one"
    raise RuntimeError(msg)


def test_an_unexpected_error_is_one_line_with_the_debug_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_app, "app", _boom)
    monkeypatch.delenv("MMOS_LOG_LEVEL", raising=False)
    with pytest.raises(SystemExit) as caught:
        cli_app.main()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: unexpected RuntimeError: the first line (rerun with MMOS_LOG_LEVEL=DEBUG for the traceback)"
    ]


def test_at_debug_level_the_traceback_comes_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_app, "app", _boom)
    monkeypatch.setenv("MMOS_LOG_LEVEL", "DEBUG")
    with pytest.raises(SystemExit):
        cli_app.main()
    err = capsys.readouterr().err
    assert "Traceback" in err and "and a second one" in err


def test_a_message_with_brackets_is_printed_verbatim(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mm_opensearch.errors import ConfigError  # noqa: PLC0415

    def fail() -> None:
        msg = "image 'http://[::1/x' is malformed [/]"
        raise ConfigError(msg)

    monkeypatch.setattr(cli_app, "app", fail)
    with pytest.raises(SystemExit):
        cli_app.main()
    assert capsys.readouterr().err.strip() == "error: image 'http://[::1/x' is malformed [/]"


@pytest.mark.parametrize(
    ("hosts", "cluster", "refused"),
    [
        (["http://127.0.0.1:9200"], "mm-opensearch-dev", False),
        (["http://localhost:9200"], None, False),
        (["127.0.0.1:9200"], None, False),
        (["http://127.0.0.1:9201"], None, True),  # another port than MMOS_DEV_OPENSEARCH_PORT
        (["https://search-1.team:9200"], None, True),
        (["http://127.0.0.1:9200", "https://search-1.team:9200"], None, True),
        (["http://127.0.0.1:9200"], "team-prod", True),  # a tunnel to another cluster
    ],
)
def test_the_demo_runs_only_on_the_dev_node(hosts: list[str], cluster: str | None, refused: bool) -> None:
    reason = not_the_dev_node(hosts, dev_port=9200, cluster_name=cluster)
    assert (reason is not None) is refused
    if cluster == "team-prod":
        assert reason is not None and "team-prod" in reason


def test_a_task_that_cannot_reach_the_broker_gets_the_redis_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """kombu's OperationalError (a real publish to a port nobody listens on) reads like a lost Redis, not 'unexpected'."""
    celery = pytest.importorskip("celery")
    url = "redis://:s3cret@127.0.0.1:1/0"
    monkeypatch.setenv("MMOS_REDIS_URL", url)
    broker = celery.Celery("t", broker=url)
    broker.conf.broker_connection_timeout = 1

    def publish() -> None:
        broker.send_task("mmos.embed_batch", args=[{}], queue="mmos.model", retry=False)

    monkeypatch.setattr(cli_app, "app", publish)
    with pytest.raises(SystemExit) as caught:
        cli_app.main()
    assert caught.value.code == 1
    assert type(caught.value.__cause__).__module__.startswith("kombu")
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach Redis at redis://") and "(MMOS_REDIS_URL)" in err
    assert "s3cret" not in err and "unexpected" not in err and len(err.splitlines()) == 1
