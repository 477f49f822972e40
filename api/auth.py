"""Who is calling: the API key in `Authorization: Bearer <key>`, and what that caller may see.

Every /v1 router except health declares `dependencies=[Depends(require)]`; a handler that needs the
caller asks for `principal: PrincipalDep` (FastAPI resolves it once per request). A key sees only
the jobs it created; an admin key sees all. A job that is not the caller's is answered exactly as a
job that does not exist (404), so ids of other callers' jobs cannot be probed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select
from sqlalchemy.exc import SQLAlchemyError

from api import keys
from api.deps import SettingsDep
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


def caller(settings: SettingsDep,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal | None:
    """The caller, or None when anonymous (no key, or a key that is unknown or revoked).

    Its own short transaction, closed before the handler runs: an upload streams with no transaction open."""
    with session_scope() as db:
        if credentials is not None:
            row = keys.verify(db, credentials.credentials)
            if row is not None:
                return Principal(row.id, row.name, row.admin)
            log.info("request with an unknown or revoked API key (id %s)",
                     keys.key_id(credentials.credentials) or "not a speechq key")
            return None
        if keys.is_loopback(settings.api_host) and not keys.any_created(db):
            return KEYLESS
    return None


def require(who: Annotated[Principal | None, Depends(caller)]) -> Principal:
    """The caller; 401 when anonymous."""
    if who is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid API key is required (Authorization: Bearer "
                            "<key>; an operator creates one with `speechq keys create`)",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def caller_if_known(settings: SettingsDep,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal | None:
    """As `caller`, but None when the database cannot say (health must answer while it is down)."""
    try:
        return caller(settings, credentials)
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
