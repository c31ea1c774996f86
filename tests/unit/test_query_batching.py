"""Concurrent queries encoded together: batches, results to the right caller, errors to the right callers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mm_opensearch.hybrid.batching import QueryBatcher


class GatedEncoder:
    """Encodes ``text`` as [len(text)]; the first call waits until ``release`` so others can queue."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.first_started = threading.Event()
        self.fail_on = fail_on

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        if len(self.batches) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        if self.fail_on in texts:
            msg = f"cannot encode {self.fail_on!r}"
            raise RuntimeError(msg)
        return np.array([[float(len(text))] for text in texts])


def _queue_behind_first(batcher: QueryBatcher, encoder: GatedEncoder, texts: list[str], pool: ThreadPoolExecutor):
    """Start 'first' (it encodes alone and blocks), queue ``texts`` behind it, then let it finish."""
    first = pool.submit(batcher.encode, "first")
    assert encoder.first_started.wait(10)
    rest = [pool.submit(batcher.encode, text) for text in texts]
    deadline = time.monotonic() + 10
    while len(batcher._pending) < len(texts) and time.monotonic() < deadline:
        time.sleep(0.001)
    encoder.release.set()
    return first, rest


def test_a_lone_query_is_encoded_at_once_and_alone() -> None:
    encoder = GatedEncoder()
    encoder.release.set()
    assert QueryBatcher(encoder).encode("red dress")[0] == 9.0
    assert encoder.batches == [["red dress"]]


def test_queries_arriving_during_an_encoding_go_in_the_next_batch_each_getting_its_own_vector() -> None:
    encoder = GatedEncoder()
    batcher = QueryBatcher(encoder)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    with ThreadPoolExecutor(8) as pool:
        first, rest = _queue_behind_first(batcher, encoder, texts, pool)
        assert first.result(10)[0] == 5.0
        assert [future.result(10)[0] for future in rest] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert encoder.batches[0] == ["first"]
    assert sorted(encoder.batches[1]) == sorted(texts) and len(encoder.batches) == 2


def test_batches_are_capped_and_the_rest_follow() -> None:
    encoder = GatedEncoder()
    batcher = QueryBatcher(encoder, max_batch=2)
    texts = [f"q{i}" for i in range(5)]
    with ThreadPoolExecutor(8) as pool:
        _, rest = _queue_behind_first(batcher, encoder, texts, pool)
        assert all(future.result(10)[0] == 2.0 for future in rest)
    assert [len(batch) for batch in encoder.batches] == [1, 2, 2, 1]


def test_a_failed_batch_fails_its_callers_only() -> None:
    encoder = GatedEncoder(fail_on="bad")
    batcher = QueryBatcher(encoder, max_batch=2)
    with ThreadPoolExecutor(8) as pool:
        first, rest = _queue_behind_first(batcher, encoder, ["bad", "x", "fine"], pool)
        assert first.result(10)[0] == 5.0
        with pytest.raises(RuntimeError, match="cannot encode 'bad'"):
            rest[0].result(10)
        with pytest.raises(RuntimeError, match="cannot encode 'bad'"):
            rest[1].result(10)  # in the same batch as "bad"
        assert rest[2].result(10)[0] == 4.0
    assert batcher.encode("later")[0] == 5.0  # the batcher goes on after a failure


def test_many_concurrent_callers_all_get_their_vectors() -> None:
    def encode(texts: Sequence[str]) -> np.ndarray:
        time.sleep(0.001)
        return np.array([[float(text)] for text in texts])

    batcher = QueryBatcher(encode, max_batch=4)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: batcher.encode(str(i))[0], range(400)))
    assert results == [float(i) for i in range(400)]
    assert not batcher._pending and not batcher._busy
