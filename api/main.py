"""The FastAPI application: thin; it writes rows and enqueues messages, nothing heavier."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api import errors, limits, preflight
from api.routes import calls, exports, health, jobs, metrics
from api.limits import RequestLimits
from api.deps import ReadsOnly
from api.uploads import BodyLimit
from shared import logs
from shared.config import get_settings
from shared.db import migrate


@asynccontextmanager
async def lifespan(_app: FastAPI):
    logs.setup()
    migrate()
    keys = preflight.api_keys(get_settings())
    if not keys.ok:  # uvicorn prints this and exits: no public API without keys
        raise RuntimeError(f"speechq API refuses to start: {keys.message}. Fix: {keys.fix}")
    yield


def create_app() -> FastAPI:
    settings = get_settings()
    # /docs and /redoc from files in the fastapi-offline wheel, not a CDN: they work without internet.
    app = FastAPIOffline(title="speechq", version="0.1.0", lifespan=lifespan,
                         form_limits=limits.form_limits(settings),  # multipart: counts and part sizes
                         description="Speech-to-text, language, emotion and audio events for call-center archives. "
                                     "Times and durations are in seconds (`_s`); timestamps are UTC.")
    app.include_router(jobs.router)
    app.include_router(calls.router)
    app.include_router(exports.router)
    app.include_router(metrics.router)
    app.include_router(health.router)
    errors.install(app)  # an unreachable database: 503 with Retry-After
    app.add_middleware(ReadsOnly)
    # Multipart overhead on top of the per-file limit.
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + (1 << 20))
    # Outermost: slow bodies, huge headers and NUL bytes in URLs are refused before anything else runs.
    app.add_middleware(RequestLimits, min_rate=settings.body_min_bytes_per_second, grace=settings.body_grace_seconds,
                       max_header_bytes=settings.max_header_bytes)
    return app


app = create_app()
