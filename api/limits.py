"""Limits on what a client may send before a route sees it: a body that trickles in slower than a stated rate
is cut off (408), oversized headers are refused (431), and a NUL byte anywhere in the URL is refused (422)
naming where it was; an API key with too many jobs in flight is refused (429).

Request heads are bounded below the ASGI app, in uvicorn's HTTP protocol (`HeaderDeadline`): uvicorn times a
connection out only while it is idle between requests (--timeout-keep-alive), never while a request line and its
headers trickle in, nor on a fresh connection that sends nothing.

Multipart forms are bounded while Starlette parses them (`form_limits`); form fields, file names and paths are
checked by the request schemas (api/schemas.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import parse_qsl, unquote_to_bytes

import anyio
from fastapi import HTTPException, status
from sqlalchemy import func, select
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.schema import Job, JobState

log = logging.getLogger(__name__)


class BodyTooSlow(HTTPException):
    """Raised from `receive`: FastAPI passes an HTTPException through its body parsing unchanged."""

    def __init__(self, seen: int, seconds: float, rate: float):
        super().__init__(status.HTTP_408_REQUEST_TIMEOUT,
                         f"request body too slow: {seen} bytes in {seconds:.0f} s, under the minimum of "
                         f"{rate:.0f} bytes/s (SPEECHQ_BODY_MIN_BYTES_PER_SECOND); the connection is closed",
                         headers={"Connection": "close"})


class RequestLimits:
    """ASGI middleware. A body must arrive at `min_rate` bytes/s on average once `grace` seconds have passed:
    the next piece is awaited only until start + grace + received / min_rate, then the request is answered
    408 and the connection closed. `min_rate` 0 disables the deadline."""

    def __init__(self, app, min_rate: float, grace: float, max_header_bytes: int):
        self.app, self.min_rate, self.grace, self.max_header_bytes = app, min_rate, grace, max_header_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header_bytes = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
            len(k) + len(v) + 4 for k, v in scope.get("headers") or [])
        if header_bytes > self.max_header_bytes:
            return await _answer(send, 431, f"request line and headers of {header_bytes} bytes, over the limit of "
                                            f"{self.max_header_bytes} (SPEECHQ_MAX_HEADER_BYTES)")
        if where := nul_in_url(scope):
            return await _answer(send, 422, f"NUL byte (%00) in {where}: not allowed")
        if not self.min_rate:
            return await self.app(scope, receive, send)
        start, seen, done = time.monotonic(), 0, False
        started = False

        async def timed_receive():
            nonlocal seen, done
            if done:  # the body is complete: what follows (a disconnect) has no deadline
                return await receive()
            left = start + self.grace + seen / self.min_rate - time.monotonic()
            with anyio.move_on_after(max(left, 0)) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                log.warning("%s %s: body cut off after %d bytes in %.0f s (client %s)", scope["method"],
                            scope["path"], seen, time.monotonic() - start, (scope.get("client") or ("?",))[0])
                raise BodyTooSlow(seen, time.monotonic() - start, self.min_rate)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTooSlow as exc:  # raised where no exception handler answers it (e.g. a route reading the body)
            if not started:
                await _answer(send, exc.status_code, exc.detail)


FORM_MAX_FIELDS = 32  # the upload form has 6 fields besides its files
FORM_MAX_PART_BYTES = 64 * 1024  # the longest field, callback_url, holds 2,048 characters
FORM_FIELDS = "name, channel_labels, language, use_itn, redact, callback_url"


def form_limits(settings: Settings) -> dict[str, int]:
    """What multipart parsing (Starlette, before a route runs) accepts: files as a job may hold, a few fields,
    and small non-file parts. A file part is bounded by SPEECHQ_MAX_UPLOAD_BYTES while it streams (api/uploads.py);
    python-multipart bounds each part's headers (8 headers of 4,224 bytes at most)."""
    return {"max_files": settings.max_job_files, "max_fields": FORM_MAX_FIELDS, "max_part_size": FORM_MAX_PART_BYTES}


def multipart_refusal(detail: str, settings: Settings) -> tuple[int, str] | None:
    """(status, detail naming the part and the limit) for Starlette's refusal of a multipart form over
    `form_limits`, which it answers as a bare 400; None for any other error."""
    if detail.startswith("Part exceeded maximum size"):
        return 413, (f"form field larger than {FORM_MAX_PART_BYTES} bytes: a part without a file name (one of "
                     f"{FORM_FIELDS}) is a form field, and fields hold at most 2,048 characters; audio goes in "
                     "`files` parts, which carry a filename")
    if detail.startswith("Too many files"):
        return 422, (f"files: more than {settings.max_job_files} files, over the limit per job "
                     "(SPEECHQ_MAX_JOB_FILES)")
    if detail.startswith("Too many fields"):
        return 422, f"form: more than {FORM_MAX_FIELDS} fields; the form's fields are {FORM_FIELDS} and files"
    return None


def nul_in_url(scope) -> str | None:
    """Where a NUL byte hides in the URL (the path: a job id; or a query parameter), None if nowhere."""
    raw_path = scope.get("raw_path") or scope.get("path", "").encode()
    if b"\0" in unquote_to_bytes(raw_path) or "\0" in scope.get("path", ""):
        return "the URL path (job id)"
    query = (scope.get("query_string") or b"").decode("latin-1")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if "\0" in key or "\0" in value:
            return f"query parameter {key.replace(chr(0), '%00')!r}"
    return None


async def _answer(send, code: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def check_uploads(files, max_files: int, max_name: int = 1024) -> None:
    """422 naming the field for too many files, or a file name that holds a NUL byte or is longer than the
    database keeps (`max_name` characters); before any byte of them is copied to the spool."""
    if len(files) > max_files:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"files: {len(files)} files, over the limit of {max_files} per job "
                            "(SPEECHQ_MAX_JOB_FILES)")
    for i, upload in enumerate(files):
        name = upload.filename or ""
        if "\0" in name:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"files[{i}]: file name holds a NUL byte")
        if len(name) > max_name:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"files[{i}]: file name of {len(name)} characters, over the limit of {max_name}")


IN_FLIGHT_RETRY_AFTER_S = 30


def check_in_flight(settings: Settings, owner_key_id: str | None) -> None:
    """429 with Retry-After when the owner (an API key; None: keyless mode, one owner) already has
    settings.max_jobs_in_flight jobs that have not ended. Checked before any upload is copied to the spool.
    Concurrent submissions of one owner may pass the cap by the few that are checked at the same instant."""
    owner = Job.owner_key_id.is_(None) if owner_key_id is None else Job.owner_key_id == owner_key_id
    with session_scope() as db:
        open_jobs = db.scalar(select(func.count()).select_from(Job).where(
            owner, Job.state.in_((JobState.queued, JobState.running))))
    if open_jobs >= settings.max_jobs_in_flight:
        log.info("submission refused: key %s has %d jobs in flight (limit %d)", owner_key_id or "keyless",
                 open_jobs, settings.max_jobs_in_flight)
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"{open_jobs} jobs of this API key are queued or running, the limit of jobs in flight "
                            f"is {settings.max_jobs_in_flight} (SPEECHQ_MAX_JOBS_IN_FLIGHT): retry once some have "
                            "ended", headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)})


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on request heads: a connection that has not delivered a
    request's line and headers SPEECHQ_HEADER_TIMEOUT_SECONDS after it opened, or after that request's first
    byte, is answered 408 and closed. Served with `uvicorn --http api.limits:HeaderDeadline` (api/launcher.py)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout = get_settings().header_timeout_seconds
        self.head_deadline: asyncio.TimerHandle | None = None

    def _arm_head_deadline(self) -> None:
        if self.head_deadline is None:
            self.head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing():
            return
        log.warning("connection from %s closed: no complete request head within %.0f s "
                    "(SPEECHQ_HEADER_TIMEOUT_SECONDS)", (self.client or ("?",))[0], self.head_timeout)
        if self.cycle is None or self.cycle.response_complete:  # no response of an earlier request is under way
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        self.transport.close()
