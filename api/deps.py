"""FastAPI dependencies: settings and a database session per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings
from shared.db import READS_ONLY, session_scope


def get_db() -> Iterator[Session]:
    with session_scope() as session:
        yield session


async def settings() -> Settings:
    """The settings, on the event loop: a sync dependency would cost every request a hop to a worker thread."""
    return get_settings()


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(settings)]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=255,
    description="Any unique string per job you mean to create (a UUID): a retry of the request with the same key "
                "returns the job the first one created, with 200 instead of 201, and never makes a second job.")]


class ReadsOnly:
    """ASGI middleware: a GET or HEAD request only reads the database (shared.db.READS_ONLY), so that on SQLite it
    never waits for the write lock behind the workers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        token = READS_ONLY.set(True)
        try:
            await self.app(scope, receive, send)
        finally:
            READS_ONLY.reset(token)
