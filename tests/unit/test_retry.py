"""Which batch failures are retried, and for how long (pure logic, on error bodies as OpenSearch sends them)."""

from __future__ import annotations

import random
import time

import opensearchpy
import pytest
import redis

from mm_opensearch.backfill import RefusedItemsError, RetryPolicy, classify_error, is_transient
from mm_opensearch.backfill.pipeline import _raise_if_refused, _raise_if_unread
from mm_opensearch.backfill.retry import classify_response, missing_privilege
from mm_opensearch.errors import IndexCompatibilityError
from mm_opensearch.indexing.bulk import BulkFailure


def _body(status: int, kind: str, reason: str) -> dict:
    """An error response as OpenSearch 2.19 writes it (root_cause, type, reason, status)."""
    return {"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
            "status": status}


def _raised(status: int, kind: str, reason: str) -> opensearchpy.TransportError:
    """What opensearch-py raises for that response (its ``_raise_error``: type as ``error``, body as ``info``)."""
    cls = opensearchpy.exceptions.HTTP_EXCEPTIONS.get(status, opensearchpy.TransportError)
    return cls(status, kind, _body(status, kind, reason))


# Bodies copied from the dev node (index.blocks.write / read_only / read_only_allow_delete set on an index).
WRITE_BLOCK = (403, "cluster_block_exception", "index [products] blocked by: [FORBIDDEN/8/index write (api)];")
READ_ONLY = (403, "cluster_block_exception", "index [products] blocked by: [FORBIDDEN/5/index read-only (api)];")
FLOOD_STAGE = (429, "cluster_block_exception", "index [products] blocked by: [TOO_MANY_REQUESTS/12/disk usage "
               "exceeded flood-stage watermark, index has read-only-allow-delete block];")
# The security plugin's refusal (opensearch-project/security PrivilegesEvaluator), as in its issue reports.
NO_BULK_PRIVILEGE = (403, "security_exception", "no permissions for [indices:data/write/bulk[s]] and User "
                     "[name=embedder, backend_roles=[], requestedTenant=null]")
NO_PRIVILEGE_NEWER = (403, "security_exception", "no permissions for [indices:data/read/mget] and associated "
                      "roles [reader]")
NO_PRIVILEGE_UNNAMED = (403, "security_exception", "no permissions for [] and User [name=admin, "
                        "backend_roles=[admin], requestedTenant=null]")


@pytest.mark.parametrize("response", [WRITE_BLOCK, READ_ONLY, FLOOD_STAGE])
def test_a_write_block_is_transient_whatever_its_status(response: tuple[int, str, str]) -> None:
    verdict = classify_error(_raised(*response))
    assert verdict.kind == "transient"
    assert "blocked by" in verdict.reason


def test_missing_privileges_are_denied_at_once_with_the_privilege_named() -> None:
    verdict = classify_error(_raised(*NO_BULK_PRIVILEGE))
    assert verdict.kind == "denied" and not verdict.transient
    assert "missing privilege indices:data/write/bulk[s]" in verdict.reason
    assert "MMOS_OPENSEARCH_USER" in verdict.reason and "dead-letters --retry" in verdict.reason


@pytest.mark.parametrize(("response", "privilege"), [
    (NO_BULK_PRIVILEGE, "indices:data/write/bulk[s]"),
    (NO_PRIVILEGE_NEWER, "indices:data/read/mget"),
    (NO_PRIVILEGE_UNNAMED, None),
    ((403, "security_exception", "no permissions for [indices:data/write/index, indices:data/write/bulk[s]]"),
     "indices:data/write/index, indices:data/write/bulk[s]"),
])
def test_the_privilege_is_read_from_the_reason_when_it_names_one(
    response: tuple[int, str, str], privilege: str | None,
) -> None:
    assert missing_privilege(response[2]) == privilege
    verdict = classify_error(_raised(*response))
    assert verdict.kind == "denied"
    assert ("missing privilege" in verdict.reason) == (privilege is not None)


@pytest.mark.parametrize(("error", "kind"), [
    (opensearchpy.ConnectionError("N/A", "Connection refused", None), "transient"),
    (opensearchpy.ConnectionTimeout("TIMEOUT", "Read timed out", None), "transient"),
    (redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), "transient"),
    (redis.TimeoutError("Timeout reading from socket"), "transient"),
    (_raised(429, "rejected_execution_exception", "rejected execution of coordinating operation"), "transient"),
    (_raised(503, "cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered];"),
     "transient"),
    (opensearchpy.TransportError(502, "Bad Gateway", None), "transient"),
    (opensearchpy.TransportError(504, "Gateway Timeout", None), "transient"),
    (_raised(401, "security_exception", "Missing authentication information for REST request [/_bulk]"), "denied"),
    (_raised(404, "index_not_found_exception", "no such index [products]"), "permanent"),
    (_raised(400, "mapper_parsing_exception", "failed to parse field [mm_fused]"), "permanent"),
    # a rolling restart: the scan's shards were on the node that left, or its PIT went with it
    (_raised(500, "search_phase_execution_exception", "all shards failed"), "transient"),
    (_raised(404, "search_context_missing_exception", "No search context found for id [12]"), "transient"),
    (_raised(500, "node_disconnected_exception", "[node-1][127.0.0.1:9301] disconnected"), "transient"),
    (_raised(400, "search_phase_execution_exception", "all shards failed"), "permanent"),  # the query itself
    (opensearchpy.AuthorizationException(403, '{"Message":"not authorized to perform: es:ESHttpPost"}', None),
     "permanent"),
    (IndexCompatibilityError("index 'x' has no vector fields; run `mm-opensearch index augment x` first"),
     "permanent"),
    (ValueError("bad"), "permanent"),
])
def test_errors_are_classified_by_what_they_are(error: BaseException, kind: str) -> None:
    assert classify_error(error).kind == kind
    assert is_transient(error) == (kind == "transient")


def test_bulk_items_go_through_the_same_classifier() -> None:
    def item(status: int, kind: str, reason: str) -> BulkFailure:
        return BulkFailure("p1", status, reason, kind)

    assert classify_response(403, {"type": WRITE_BLOCK[1], "reason": WRITE_BLOCK[2]}).transient
    with pytest.raises(RefusedItemsError) as blocked:
        _raise_if_refused("products", [item(*WRITE_BLOCK), item(*WRITE_BLOCK)])
    assert classify_error(blocked.value).transient and "2 writes to 'products' were refused" in str(blocked.value)

    with pytest.raises(RefusedItemsError) as denied:  # a block and a refusal: no retry makes the refusal pass
        _raise_if_refused("products", [item(*WRITE_BLOCK), item(*NO_BULK_PRIVILEGE)])
    assert classify_error(denied.value).kind == "denied"
    assert "indices:data/write/bulk[s]" in str(denied.value)

    # a document the mapping refuses is that product's own failure, recorded with it: the batch goes on
    _raise_if_refused("products", [item(400, "mapper_parsing_exception", "failed to parse field [mm_fused]")])


def test_the_backoff_grows_to_its_cap_with_half_of_each_wait_fixed() -> None:
    policy = RetryPolicy(max_retries=100, budget_s=10_000, backoff_max_s=60)
    rng = random.Random(7)
    for retries, ceiling in [(0, 1), (1, 2), (3, 8), (5, 32), (6, 60), (40, 60)]:
        waits = [policy.delay(retries, 0.0, rng) for _ in range(200)]
        assert all(w is not None and ceiling / 2 <= w <= ceiling for w in waits), (retries, min(waits), max(waits))


def test_retries_stop_at_the_count_or_the_budget_whichever_comes_first() -> None:
    by_count = RetryPolicy(max_retries=5, budget_s=600, backoff_max_s=60)
    assert by_count.delay(4, 10.0) is not None and by_count.delay(5, 10.0) is None
    by_budget = RetryPolicy(max_retries=30, budget_s=100, backoff_max_s=60)
    assert by_budget.delay(3, 99.0) == pytest.approx(1.0)  # the last wait is cut to what is left of the budget
    assert by_budget.delay(3, 100.0) is None


def test_the_default_retries_ride_out_a_ten_minute_outage() -> None:
    """With every jitter at its low end, the default settings keep a batch alive as long as their budget."""
    from mm_opensearch.config import Settings  # noqa: PLC0415

    class LowestJitter(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return a

    settings = Settings()
    policy = RetryPolicy(settings.worker_max_retries, settings.worker_retry_budget_s, settings.worker_retry_backoff_max_s)
    elapsed, retries = 0.0, 0
    while (wait := policy.delay(retries, elapsed, LowestJitter())) is not None:
        elapsed, retries = elapsed + wait, retries + 1
    assert elapsed >= settings.worker_retry_budget_s >= 300  # several minutes, not 1 + 2 + 4 s


def test_a_product_the_multi_get_could_not_read_is_retried_not_counted_missing() -> None:
    # what mget answers for each document of a shard not started yet (a node that is recovering)
    unread = {"_index": "products", "_id": "7", "error": {
        "root_cause": [{"type": "no_shard_available_action_exception",
                        "reason": "No shard available for [org.opensearch.action.get.MultiGetShardRequest@7bea7081]"}],
        "type": "no_shard_available_action_exception",
        "reason": "No shard available for [org.opensearch.action.get.MultiGetShardRequest@7bea7081]"}}
    with pytest.raises(RefusedItemsError) as failed:
        _raise_if_unread("products", [{"_index": "products", "_id": "6", "found": False}, unread])
    assert classify_error(failed.value).transient and "1 reads of 'products'" in str(failed.value)
    _raise_if_unread("products", [{"_index": "products", "_id": "6", "found": False}])  # deleted: really missing


def test_the_worker_refuses_a_visibility_timeout_a_waiting_retry_can_outlast() -> None:
    """A retry waits out its countdown unacknowledged in a worker, then runs up to the time limit."""
    from mm_opensearch.config import Settings  # noqa: PLC0415
    from mm_opensearch.errors import ConfigError  # noqa: PLC0415
    from mm_opensearch_workers.app import check_time_limits, create_app  # noqa: PLC0415

    fits = Settings(worker_task_time_limit_s=600, worker_visibility_timeout_s=700, worker_retry_backoff_max_s=60)
    check_time_limits(create_app(fits).conf)
    tight = fits.model_copy(update={"worker_retry_backoff_max_s": 100.0})
    with pytest.raises(ConfigError, match="plus the longest retry backoff .100 s.*MMOS_WORKER_RETRY_BACKOFF_MAX_S"):
        check_time_limits(create_app(tight).conf)


def test_the_unreachable_redis_is_named_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    from mm_opensearch.backfill.outage import RedisOutage  # noqa: PLC0415

    client = redis.Redis.from_url("redis://reader:hunter2@cache.internal:6380/3")
    outage = RedisOutage(client)
    with caplog.at_level("WARNING", logger="mm_opensearch.backfill.outage"):
        outage.failed(redis.ConnectionError("Error 111 connecting to cache.internal:6380. Connection refused."), time.monotonic())
        outage.answered()
    said = caplog.text
    assert "Redis at cache.internal:6380/3 is unreachable" in said and "answers again" in said
    assert "hunter2" not in said and "reader" not in said


def test_a_refused_items_error_keeps_its_verdict_through_celerys_pickling() -> None:
    """Celery hands on_failure a pickle-safe copy of the exception: without the verdict, a write block that
    outlasted the retry budget was dead-lettered as a permanent error ("after 3 retries"), its budget unnamed."""
    from celery.utils.serialization import get_pickleable_exception  # noqa: PLC0415 - only this test needs celery

    blocked = classify_response(403, {"type": "cluster_block_exception", "reason": "index [p] blocked"})
    error = RefusedItemsError(blocked, 20, "writes to 'p'")
    copy = get_pickleable_exception(error)
    assert type(copy) is RefusedItemsError and copy.verdict == blocked
    assert classify_error(copy).transient and str(copy) == str(error)
