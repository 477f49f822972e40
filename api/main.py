"""The FastAPI application: thin; it writes rows and enqueues messages, nothing heavier."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api.routes import health, jobs
from api.uploads import BodyLimit
from shared import logs
from shared.config import get_settings
from shared.db import migrate


@asynccontextmanager
async def lifespan(_app: FastAPI):
    logs.setup()
    migrate()
    yield


def create_app() -> FastAPI:
    settings = get_settings()
    # /docs and /redoc from files in the fastapi-offline wheel, not a CDN: they work without internet.
    app = FastAPIOffline(title="speechq", version="0.1.0", lifespan=lifespan,
                         description="Speech-to-text, language, emotion and audio events for call-center archives. "
                                     "Times and durations are in seconds (`_s`); timestamps are UTC.")
    app.include_router(jobs.router)
    app.include_router(health.router)
    # Multipart overhead on top of the per-file limit.
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + (1 << 20))
    return app


app = create_app()
