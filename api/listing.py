"""Finding jobs: filters (state, name, created between) and keyset pagination with an opaque cursor.

Jobs are listed newest first, by (created_at, id); the cursor names the last job of a page, so a page is
the same whatever is created meanwhile, and a deep page costs what the first does.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

from sqlalchemy import Select, tuple_

from shared.schema import Job, JobState

MAX_LIMIT = 500


class BadFilter(ValueError):
    """A filter or cursor the API cannot use: the answer is 422 with this message."""


class BadCursor(BadFilter):
    pass


def utc(value: datetime) -> datetime:
    """A datetime in UTC, aware (a naive input is taken as UTC): PostgreSQL compares it with timestamptz
    whatever the session's time zone, and SQLite's stored UTC text compares with its UTC digits."""
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError as exc:
        raise BadFilter(f"{value.isoformat()} is out of range") from exc


def encode(job: Job) -> str:
    raw = json.dumps([utc(job.created_at).isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError) as exc:
        raise BadCursor("cursor is not one that this API returned (X-Next-Cursor)") from exc


def filtered(stmt: Select, states: list[JobState] | None = None, name: str | None = None,
             created_after: datetime | None = None, created_before: datetime | None = None,
             cursor: str | None = None) -> Select:
    """`stmt` over jobs, narrowed by the filters and placed after `cursor`, newest first."""
    if states:
        stmt = stmt.where(Job.state.in_(states))
    if name:
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(Job.name.ilike(f"%{escaped}%", escape="\\"))
    if created_after is not None:
        stmt = stmt.where(Job.created_at >= utc(created_after))
    if created_before is not None:
        stmt = stmt.where(Job.created_at < utc(created_before))
    if cursor:
        created, job_id = decode(cursor)
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(utc(created), job_id))
    return stmt.order_by(Job.created_at.desc(), Job.id.desc())
