"""/v1/health: the database, the broker, and the workers alive by role (from their heartbeats).

HTTP 503 when the API itself cannot work (database or broker unreachable); 200 otherwise, with
status "degraded" and the reasons when jobs would be accepted but not processed. The details (database
errors, reasons, the worker list) go to admin callers only (an admin key, or keyless loopback mode);
anyone else gets the status alone.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from api.auth import CallerDep
from api.deps import SessionDep, SettingsDep
from shared import broker, heartbeat

router = APIRouter(prefix="/v1", tags=["health"])
log = logging.getLogger(__name__)
UNREACHABLE = "error: unreachable"


@router.get("/health", summary="Database, broker and workers")
def health(db: SessionDep, settings: SettingsDep, response: Response, who: CallerDep):
    checks = {"database": "ok", "broker": "ok"}
    try:
        db.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - the detail goes to the log, not to the caller
        log.warning("health: the database is unreachable: %s: %s", exc.__class__.__name__, exc)
        checks["database"] = UNREACHABLE
        db.rollback()
    workers: list[dict] = []
    try:
        broker.ping(settings.broker)
        workers = heartbeat.alive(settings)
    except Exception as exc:  # noqa: BLE001
        log.warning("health: the broker is unreachable: %s: %s", exc.__class__.__name__, exc)
        checks["broker"] = UNREACHABLE
    by_role = {role: [w for w in workers if w.get("role") == role] for role in heartbeat.ROLES}
    reasons = [f"{name} unreachable" for name, value in checks.items() if value != "ok"]
    if checks["broker"] == "ok":
        reasons += _worker_reasons(by_role)
    if checks["database"] != "ok" or checks["broker"] != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    if who is None or not who.admin:
        return {"status": "degraded" if reasons else "ok"}
    return {"status": "degraded" if reasons else "ok", "reason": "; ".join(reasons) or None, **checks,
            "workers": by_role}


def _worker_reasons(by_role: dict[str, list[dict]]) -> list[str]:
    reasons = []
    if not by_role["ingest"]:
        reasons.append("no ingest worker is alive")
    gpu = by_role["gpu"]
    if not gpu:
        reasons.append("no GPU worker is alive")
    elif not any(w.get("state") == "ready" for w in gpu):
        states = ", ".join(f"{w.get('hostname')}: {w.get('error') or w.get('state')}" for w in gpu)
        reasons.append(f"no GPU worker is ready ({states})")
    return reasons
