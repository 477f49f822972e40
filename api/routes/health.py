"""/v1/health: is the database reachable, and the broker?"""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response, status
from sqlalchemy import text

from api.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["health"])


@router.get("/health", summary="Database and broker checks")
def health(db: SessionDep, settings: SettingsDep, response: Response):
    checks = {}
    try:
        db.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - report any failure to the caller
        checks["database"] = f"error: {exc.__class__.__name__}: {exc}"[:300]
    try:
        client = redis.Redis.from_url(settings.broker, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {exc.__class__.__name__}: {exc}"[:300]
    ok = all(v == "ok" for v in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ok" if ok else "degraded", **checks}
