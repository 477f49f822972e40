"""Errors the API answers with a status a client can act on: an unreachable database is a 503 with Retry-After,
not a bare 500; a multipart form over its limits is a 413 or 422 that names the part, not a bare 400."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.limits import multipart_refusal
from shared.config import get_settings
from shared.db import unavailable

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    if not unavailable(exc):
        log.error("%s %s: database error", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
    reason = ("every database connection is busy" if isinstance(exc, sa_exc.TimeoutError)
              else "the database cannot be reached (restarting or down)")
    log.warning("%s %s: 503, %s: %s", request.method, request.url.path, reason,
                str(getattr(exc, "orig", None) or exc).splitlines()[0][:200])
    return JSONResponse({"detail": f"service unavailable: {reason}; retry in {RETRY_AFTER_S} s", "reason": reason},
                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def http_error(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 400 and isinstance(exc.detail, str) and (
            named := multipart_refusal(exc.detail, get_settings())):
        code, detail = named
        log.info("%s %s: %d, %s", request.method, request.url.path, code, exc.detail)
        return JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    for kind in (sa_exc.DBAPIError, sa_exc.TimeoutError):
        app.add_exception_handler(kind, database_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
