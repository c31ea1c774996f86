"""A search response missing shards is a failure (503 upstream), never a partial page passed off as whole."""

from __future__ import annotations

from typing import Any

import pytest

from mm_opensearch.config import Settings
from mm_opensearch.errors import SearchUnavailableError
from mm_opensearch.hybrid.search import HybridSearcher, _Deadline, check_shards

NODE_LEFT = {"shard": 0, "index": "products", "node": "n2",
             "reason": {"type": "node_disconnected_exception", "reason": "[n2] disconnected"}}


def _response(total: int, successful: int, failed: int, failures: list[dict[str, Any]] | None = None,
              skipped: int = 0) -> dict[str, Any]:
    shards: dict[str, Any] = {"total": total, "successful": successful, "skipped": skipped, "failed": failed}
    if failures is not None:
        shards["failures"] = failures
    return {"took": 3, "timed_out": False, "_shards": shards, "hits": {"total": {"value": 1}, "hits": []}}


@pytest.mark.parametrize("response", [
    _response(2, 2, 0),
    _response(3, 3, 0, skipped=2),  # skipped shards (nothing could match) are counted as successful
    _response(0, 0, 0),  # an alias over no shards
    {"took": 1, "hits": {"hits": []}},  # a shape without _shards (e.g. a test double): nothing to check
])
def test_a_response_from_every_shard_passes(response: dict[str, Any]) -> None:
    assert check_shards(response, "products") is response


def test_a_failed_shard_is_unavailable_and_names_the_index_and_reason() -> None:
    with pytest.raises(SearchUnavailableError) as caught:
        check_shards(_response(2, 1, 1, [NODE_LEFT]), "products")
    message = str(caught.value)
    assert "1 of 2 shards of 'products'" in message and "node_disconnected_exception" in message
    assert "retry in a few seconds" in message


def test_shards_neither_successful_nor_failed_are_missing_too() -> None:
    with pytest.raises(SearchUnavailableError, match="1 of 3 shards"):
        check_shards(_response(3, 2, 0), "products")


def test_a_failure_without_a_reason_object_still_gives_a_line() -> None:
    with pytest.raises(SearchUnavailableError, match="shards of 'p' did not answer \\(no reason given\\)"):
        check_shards(_response(1, 0, 1), "p")
    with pytest.raises(SearchUnavailableError, match="boom"):
        check_shards(_response(1, 0, 1, [{"reason": "boom"}]), "p")


class _Client:
    """Answers ``search`` from a list of responses, recording each call."""

    def __init__(self, *responses: dict[str, Any]) -> None:
        self.responses, self.calls = list(responses), 0

    def search(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        return self.responses.pop(0)


def _searcher(client: _Client) -> HybridSearcher:
    return HybridSearcher(client, Settings(opensearch_hosts=["http://a:9200"]), index="products")  # type: ignore[arg-type]


def test_the_searcher_asks_once_more_when_a_shard_failed_and_returns_the_whole_answer() -> None:
    whole = _response(2, 2, 0)
    client = _Client(_response(2, 1, 1, [NODE_LEFT]), whole)
    assert _searcher(client)._search({"query": {"match_all": {}}}, _Deadline(2.0)) is whole
    assert client.calls == 2


def test_the_searcher_refuses_a_partial_answer_given_twice() -> None:
    client = _Client(_response(2, 1, 1, [NODE_LEFT]), _response(2, 1, 1, [NODE_LEFT]))
    with pytest.raises(SearchUnavailableError, match="1 of 2 shards"):
        _searcher(client)._search({"query": {"match_all": {}}}, _Deadline(2.0))
    assert client.calls == 2
