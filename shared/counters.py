"""Counters kept in the broker's Redis, for what no table records (Prometheus reads them at /metrics).

A counter is a hash `speechq:counters:{name}` of integer fields, increased with HINCRBY, so that every
process adds to the same total and the total outlives restarts of the processes (as the broker's data does).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import redis

from shared.config import Settings

log = logging.getLogger(__name__)

PREFIX = "speechq:counters:"
REENQUEUED = "reenqueued"  # work the reconciler sent again: archives, files, batches


@lru_cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def add(settings: Settings, name: str, **amounts: int) -> None:
    """Add to the fields of counter `name`; a broker that cannot be reached costs the count, not the caller."""
    amounts = {k: v for k, v in amounts.items() if v}
    if not amounts:
        return
    try:
        pipe = _client(settings.broker).pipeline(transaction=False)
        for field, amount in amounts.items():
            pipe.hincrby(PREFIX + name, field, amount)
        pipe.execute()
    except (redis.RedisError, OSError) as exc:
        log.warning("counter %s not updated (broker unreachable: %s)", name, exc)


def read(settings: Settings, name: str) -> dict[str, int]:
    raw = _client(settings.broker).hgetall(PREFIX + name)
    return {k.decode(): int(v) for k, v in raw.items()}
