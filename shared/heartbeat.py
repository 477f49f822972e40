"""Worker heartbeats in the broker's Redis: which workers are alive, in which role, with which models.

Each worker process writes `speechq:worker:{hostname}` every INTERVAL seconds with a TTL of three
intervals, so a worker that dies (or hangs) drops out of `alive()` within TTL seconds. The record:

    {"hostname": "gpu0@host", "role": "gpu", "pid": 123, "seen_at": "2026-12-01T20:50:34+00:00",
     "state": "loading" | "ready" | "error", "error": None, "models": [{"name", "sha256", "random_weights"}]}
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from functools import lru_cache

import redis

from shared.config import Settings

log = logging.getLogger(__name__)

INTERVAL = 5.0
TTL = int(3 * INTERVAL)
PREFIX = "speechq:worker:"
ROLES = ("ingest", "gpu")


@lru_cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def beat(settings: Settings, role: str, hostname: str, info: dict) -> None:
    """Say that `hostname` is alive now; `info` holds state, error, models (and may override pid)."""
    if role not in ROLES:
        raise ValueError(f"role is one of {ROLES}, not {role!r}")
    record = {"hostname": hostname, "role": role, "pid": os.getpid(), "state": "ready", "error": None,
              "models": [], **info, "seen_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _client(settings.broker).set(PREFIX + hostname, json.dumps(record), ex=TTL)


def alive(settings: Settings) -> list[dict]:
    """The workers whose last beat is younger than the TTL, by role and hostname."""
    client = _client(settings.broker)
    keys = sorted(client.scan_iter(match=PREFIX + "*", count=200))
    records = [json.loads(v) for v in client.mget(keys) if v] if keys else []  # None: expired meanwhile
    return sorted(records, key=lambda r: (r.get("role", ""), r.get("hostname", "")))


def forget(settings: Settings, hostname: str) -> None:
    """A worker that stops cleanly leaves at once rather than after the TTL."""
    _client(settings.broker).delete(PREFIX + hostname)


class Heartbeat:
    """Beats on a daemon thread every INTERVAL seconds; `update()` changes what it says and beats at once."""

    def __init__(self, settings: Settings, role: str, hostname: str, **info):
        self.settings, self.role, self.hostname = settings, role, hostname
        self.info = {"state": "ready", "error": None, "models": [], **info}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="speechq-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def update(self, **info) -> None:
        self.info.update(info)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        try:
            forget(self.settings, self.hostname)
        except (redis.RedisError, OSError):
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                beat(self.settings, self.role, self.hostname, dict(self.info))
                if self._failing:
                    log.info("heartbeat of %s reaches the broker again", self.hostname)
                self._failing = False
            except (redis.RedisError, OSError) as exc:
                if not self._failing:  # once per outage, not every few seconds
                    log.warning("heartbeat of %s cannot reach the broker: %s", self.hostname, exc)
                self._failing = True
            self._wake.wait(INTERVAL)
            self._wake.clear()
