"""Uploads: request bodies are capped while they stream, and files are copied to the spool."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import UploadFile

from api.submit import Incoming
from shared.schema import new_id

CHUNK = 1 << 20


class TooLarge(Exception):
    pass


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
                    raise TooLarge()
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
    """Copy one uploaded part to the spool in chunks, hashing as it goes."""
    name = Path(upload.filename or "upload").name or "upload"
    dst = directory / f"{new_id()}-{name}"
    h = hashlib.sha256()
    size = 0
    with open(dst, "wb") as out:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                out.close()
                dst.unlink(missing_ok=True)
                raise TooLarge()
            h.update(chunk)
            out.write(chunk)
    return Incoming(name=upload.filename or name, path=dst, size=size, sha256=h.hexdigest())
