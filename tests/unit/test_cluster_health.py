"""The start-up line about the cluster's health: silent (INFO) when green, one WARNING with the numbers otherwise."""

from __future__ import annotations

import logging

import pytest
from opensearchpy import AuthorizationException

from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.health import health_message, log_cluster_health

YELLOW = {"cluster_name": "prod", "status": "yellow", "number_of_nodes": 2, "unassigned_shards": 4,
          "initializing_shards": 0}


def test_green_has_no_message() -> None:
    assert health_message(YELLOW | {"status": "green", "unassigned_shards": 0}) is None


@pytest.mark.parametrize(("status", "meaning"), [("yellow", "replicas"), ("red", "primary shards are unassigned")])
def test_yellow_and_red_say_the_numbers_what_it_means_and_where_to_look(status: str, meaning: str) -> None:
    message = health_message(YELLOW | {"status": status})
    assert message is not None
    assert f"'prod' is {status.upper()}: 2 nodes, 4 unassigned" in message
    assert meaning in message and "_cluster/allocation/explain" in message


class _Forbidden:
    """A client whose user lacks the monitor privilege (the only fake: the 403 of a least-privilege user)."""

    class cluster:  # noqa: N801 - mirrors OpenSearch.cluster
        @staticmethod
        def health(**_: object) -> dict:
            raise AuthorizationException(403, "security_exception", {})


def test_a_user_without_the_monitor_privilege_gets_a_line_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mm_opensearch.health"):
        assert log_cluster_health(_Forbidden()) is None  # type: ignore[arg-type]
    assert "cluster:monitor/health" in caplog.text


def test_an_unreachable_cluster_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    client = create_client(Settings(opensearch_hosts=["http://127.0.0.1:9"]), max_retries=0, timeout=1)
    with caplog.at_level(logging.INFO, logger="mm_opensearch.health"):
        assert log_cluster_health(client) is None
    assert "cluster health not checked" in caplog.text


def test_every_host_is_used_sniffing_is_off_and_a_dead_host_is_left_out_for_the_setting() -> None:
    settings = Settings(opensearch_hosts=["http://a:9200", "http://b:9200", "http://c:9200"],
                        opensearch_dead_timeout_s=7.0)
    transport = create_client(settings).transport
    assert len(transport.connection_pool.connections) == 3
    assert (transport.sniff_on_start, transport.sniff_on_connection_fail) == (False, False)
    assert transport.connection_pool.dead_timeout == 7.0
    assert transport.max_retries == settings.opensearch_max_retries and transport.retry_on_timeout
