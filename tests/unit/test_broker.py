"""Reading the batch id out of kombu messages (the layout the Redis transport stores)."""

from __future__ import annotations

import base64
import json

import pytest

from mm_opensearch_workers.broker import message_batch_id


def _message(task: str, args: list, *, encoding: str | None = "base64") -> dict:
    body = json.dumps([args, {}, {"callbacks": None}])
    return {"body": base64.b64encode(body.encode()).decode() if encoding else body,
            "content-type": "application/json", "headers": {"task": task, "id": "t1"},
            "properties": {"body_encoding": encoding, "delivery_tag": "d1"} if encoding else {}}


def test_the_batch_id_of_an_embed_or_write_task_is_read_from_the_body() -> None:
    job = {"index": "products", "ids": ["1", "2"], "job_id": "j", "batch_id": "j.c.0"}
    assert message_batch_id(_message("mmos.embed_batch", [job])) == "j.c.0"
    assert message_batch_id(_message("mmos.write_batch", [job], encoding=None)) == "j.c.0"


@pytest.mark.parametrize("message", [
    _message("other.task", [{"batch_id": "x"}]),  # somebody else's task on a shared broker
    _message("mmos.embed_batch", []),
    {"headers": {"task": "mmos.embed_batch"}, "body": "not base64!", "properties": {"body_encoding": "base64"}},
    {"headers": {"task": "mmos.embed_batch"}},
])
def test_anything_else_has_no_batch_id(message: dict) -> None:
    assert message_batch_id(message) is None
