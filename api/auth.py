"""Who is calling: the API key in `Authorization: Bearer <key>`, and what that caller may see.

Every /v1 router except health declares `dependencies=[Depends(require)]`; a handler that needs the
caller asks for `principal: PrincipalDep` (FastAPI resolves it once per request). A key sees only
the jobs it created; an admin key sees all. A job that is not the caller's is answered exactly as a
job that does not exist (404), so ids of other callers' jobs cannot be probed.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from api import keys
from api.deps import SettingsDep
from shared.config import Settings
from shared.db import session_scope
from shared.schema import Job

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="An API key from `speechq keys create` "
                                                  "(none needed in keyless loopback mode).")


@dataclass(frozen=True)
class Principal:
    key_id: str | None  # None: keyless loopback mode
    name: str
    admin: bool


KEYLESS = Principal(key_id=None, name="keyless loopback", admin=True)


async def caller(settings: SettingsDep,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal | None:
    """The caller, or None when anonymous (no key, or a key that is unknown or revoked).

    A key verified less than SPEECHQ_API_KEY_CACHE_SECONDS ago costs no database read, no hash and no worker
    thread: it is answered on the event loop (api/keys.py, `Verified`). Otherwise a worker thread runs its own
    short transaction, closed before the handler runs: an upload streams with no transaction open."""
    if credentials is not None:
        token = credentials.credentials
        if (known := _verified(settings.database, settings.api_key_cache_seconds).get(token)) is not None:
            return Principal(known.id, known.name, known.admin)
        return await run_in_threadpool(_checked, settings, token)
    if not keys.is_loopback(settings.api_host) or settings.database in _KEYS_EXIST:
        return None
    return await run_in_threadpool(_keyless, settings)


def _checked(settings: Settings, token: str) -> Principal | None:
    with session_scope() as db:
        row = keys.verify(db, token)
        if row is not None:
            known = _verified(settings.database, settings.api_key_cache_seconds).put(token, row)
            return Principal(known.id, known.name, known.admin)
    log.info("request with an unknown or revoked API key (id %s)", keys.key_id(token) or "not a speechq key")
    return None


def _keyless(settings: Settings) -> Principal | None:
    with session_scope() as db:
        if keys.any_created(db):
            _KEYS_EXIST.add(settings.database)  # for good: keyless mode never comes back (api/keys.py)
            return None
    return KEYLESS


_KEYS_EXIST: set[str] = set()  # databases known to hold a key


@functools.lru_cache(maxsize=8)
def _verified(database: str, ttl: float) -> keys.Verified:
    """One cache of verified keys per database (tests run several in one process)."""
    return keys.Verified(ttl)


async def require(who: Annotated[Principal | None, Depends(caller)]) -> Principal:
    """The caller; 401 when anonymous."""
    if who is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid API key is required (Authorization: Bearer "
                            "<key>; an operator creates one with `speechq keys create`)",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


async def caller_if_known(settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                                         Depends(bearer)]) -> Principal | None:
    """As `caller`, but None when the database cannot say (health must answer while it is down)."""
    try:
        return await caller(settings, credentials)
    except SQLAlchemyError:
        return None


UNAUTHORIZED = {401: {"description": "No valid API key: send `Authorization: Bearer <key>`"}}
PrincipalDep = Annotated[Principal, Depends(require)]
CallerDep = Annotated[Principal | None, Depends(caller_if_known)]


def visible(stmt: Select, principal: Principal) -> Select:
    """`stmt` over jobs narrowed to those `principal` may see."""
    return stmt if principal.admin else stmt.where(Job.owner_key_id == principal.key_id)


def owned_job(db, principal: Principal, job_id: str) -> Job:
    """The job if `principal` may see it; 404 for a missing job and for another key's job alike."""
    job = db.get(Job, job_id)
    if job is None or not (principal.admin or job.owner_key_id == principal.key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job
