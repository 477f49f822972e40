"""Uploads: request bodies are capped while they stream, and files are copied to the spool."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from api.submit import Incoming
from shared.schema import new_id

CHUNK = 1 << 20


class TooLarge(HTTPException):
    """An HTTPException, so that FastAPI's body parsing passes it on as a 413 instead of turning it into a 400."""

    def __init__(self, limit: int | None = None):
        super().__init__(413, f"upload larger than the limit of {limit} bytes (SPEECHQ_MAX_UPLOAD_BYTES)"
                         if limit is not None else "upload larger than the limit (SPEECHQ_MAX_UPLOAD_BYTES)")


class BodyLimit:
    """ASGI middleware: reject a request body larger than `limit` bytes, chunked or not, with 413."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and int(declared) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(self.limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except TooLarge:
            if not started:
                await _too_large(send, self.limit)


async def _too_large(send, limit: int) -> None:
    body = f'{{"detail":"upload larger than the limit of {limit} bytes (SPEECHQ_MAX_UPLOAD_BYTES)"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def save_upload(upload: UploadFile, directory: Path, limit: int) -> Incoming:
    """Copy one uploaded part to the spool in chunks, hashing as it goes, on a worker thread: the event loop
    keeps answering other requests while large files are copied."""
    name = Path(upload.filename or "upload").name or "upload"
    dst = directory / f"{new_id()}-{_disk_name(name)}"
    size, digest = await run_in_threadpool(_copy, upload.file, dst, limit)
    return Incoming(name=upload.filename or name, path=dst, size=size, sha256=digest)


def _disk_name(name: str, max_bytes: int = 120) -> str:
    """The end of the name, short enough for any file system (255 bytes a name); the row keeps the name whole."""
    raw = name.encode("utf-8", "surrogateescape")[-max_bytes:]
    return raw.decode("utf-8", "ignore").replace("\0", "") or "upload"


def _copy(src: BinaryIO, dst: Path, limit: int) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    src.seek(0)
    try:
        with open(dst, "wb") as out:
            while chunk := src.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(limit)
                h.update(chunk)
                out.write(chunk)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return size, h.hexdigest()
