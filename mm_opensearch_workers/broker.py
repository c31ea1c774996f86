"""Which batches the broker still holds, read from kombu's Redis structures.

The stall guard (:mod:`mm_opensearch.backfill.recovery`) presumes a batch lost when it stays
unsettled too long; a batch merely queued behind slow workers looks the same from the job store.
Kombu's Redis transport keeps a queue as a list (``LPUSH`` to send, ``BRPOP`` from the other end,
one list per priority step) and a message a worker has taken, until it is acknowledged, in the
``unacked`` hash (delivery tag -> ``[message, exchange, routing_key]``). Each message is JSON whose
``body`` is base64 JSON ``[args, kwargs, embed]``; our tasks' one argument is the job dict with its
``batch_id``. A message in neither place was lost (or has been acknowledged, i.e. its batch settled).

Reading a long queue costs transfer and decoding, so the guard asks only about overdue batches,
the oldest end of each list (where a message that waited longest sits) is read first, and no more
than ``limit`` messages per list are read; what lies beyond is presumed still queued.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Collection, Iterable
from typing import Any

import redis
from kombu.transport.redis import Channel

__all__ = ["TASK_NAMES", "message_batch_id", "pending_batch_ids"]

log = logging.getLogger(__name__)

TASK_NAMES = frozenset({"mmos.embed_batch", "mmos.write_batch"})
FIRST_LOOK = 256  # messages per list read first: an overdue batch still queued is near the oldest end


def message_batch_id(message: dict[str, Any]) -> str | None:
    """The ``batch_id`` carried by one of our tasks' kombu messages; None for anything else."""
    try:
        if message.get("headers", {}).get("task") not in TASK_NAMES:
            return None
        body: str | bytes = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        args = decoded[0] if isinstance(decoded, list) else decoded["args"]  # protocol 2, or 1
        return str(args[0]["batch_id"])
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        return None


def _batch_ids(raws: Iterable[bytes], *, unacked: bool) -> set[str]:
    found = set()
    for raw in raws:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if unacked:  # [message, exchange, routing_key]
            message = message[0] if isinstance(message, list) and message else {}
        if isinstance(message, dict) and (batch_id := message_batch_id(message)) is not None:
            found.add(batch_id)
    return found


def pending_batch_ids(channel: Channel, queues: Iterable[str], batch_ids: Collection[str], *, limit: int) -> set[str]:
    """Those of ``batch_ids`` whose message is queued in ``queues`` or taken and not acknowledged.

    Each look is one MULTI transaction over the lists and the unacked hash, so a message moving
    between them (taken by a worker, or restored after the visibility timeout) is seen in one of
    them. Batches that could not be ruled out (a list longer than ``limit``) are returned too.
    """
    wanted = set(batch_ids)
    if not wanted:
        return set()
    prefix = channel.global_keyprefix or ""
    lists = [prefix + channel._q_for_pri(queue, pri) for queue in queues for pri in channel.priority_steps]  # noqa: SLF001
    lists = list(dict.fromkeys(lists))  # priority steps that map to the same list
    client = redis.Redis(connection_pool=channel.pool)  # unprefixed: the keys carry the prefix already
    found: set[str] = set()
    complete = False
    for window in dict.fromkeys((min(FIRST_LOOK, limit), limit)):
        with client.pipeline(transaction=True) as pipe:
            for key in lists:
                pipe.llen(key)
                pipe.lrange(key, -window, -1)  # the oldest end: BRPOP takes from the right
            pipe.hvals(prefix + channel.unacked_key)
            replies = pipe.execute()
        lengths, chunks, unacked = replies[0:-1:2], replies[1:-1:2], replies[-1]
        found = _batch_ids((raw for chunk in chunks for raw in chunk), unacked=False)
        found |= _batch_ids(unacked, unacked=True)
        complete = all(length <= window for length in lengths)
        if wanted <= found or complete:
            break
    if not complete:
        unknown = wanted - found
        if unknown:
            log.info("%d overdue batches are not among the %d oldest messages of each queue; presumed still queued",
                     len(unknown), limit, extra={"batches": sorted(unknown)})
            found |= unknown
    return found & wanted
