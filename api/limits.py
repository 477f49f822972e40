"""Limits on what a client may send before a route sees it: a body that trickles in slower than a stated rate
is cut off (408), oversized headers are refused (431), and a NUL byte anywhere in the URL is refused (422)
naming where it was. Form fields, file names and paths are checked by the request schemas (api/schemas.py)."""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import parse_qsl, unquote_to_bytes

import anyio
from fastapi import HTTPException, status

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
