"""The serving client: one deadline per call, timeouts never retried (a stuck node must not hold a request)."""

from __future__ import annotations

from mm_opensearch.client import create_client, create_serving_client
from mm_opensearch.config import Settings


def test_the_serving_client_has_the_deadline_as_timeout_and_never_retries_a_timeout() -> None:
    settings = Settings(opensearch_hosts=["http://a:9200", "http://b:9200"], search_timeout_s=2.0)
    transport = create_serving_client(settings).transport
    assert transport.retry_on_timeout is False
    assert transport.retry_on_status == ()
    assert transport.max_retries == 1  # a connection error is tried once on the other host
    assert [c.timeout for c in transport.connection_pool.connections] == [2.0, 2.0]

    workers = create_client(settings).transport  # what the searcher used before: 30 s, retried 3 times
    assert workers.retry_on_timeout is True
    assert [c.timeout for c in workers.connection_pool.connections] == [30.0, 30.0]


def test_the_serving_deadline_defaults_to_two_seconds_and_one_host_still_gets_a_retry() -> None:
    settings = Settings(opensearch_hosts=["http://a:9200"])
    assert settings.search_timeout_s == 2.0
    transport = create_serving_client(settings).transport
    assert transport.max_retries == 1  # a pooled connection the node closed
    assert transport.connection_pool.connections[0].timeout == 2.0
