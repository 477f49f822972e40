"""One zip of a job: per call, one file per format, written into the response as it is made.

zipfile writes to a stream that cannot seek by putting each member's sizes after its data (data
descriptors), so nothing of the archive is kept but the call being written and the central directory that
a zip ends with (its name, sizes, CRC and offset per member: about half a kilobyte per member in zipfile).
"""

from __future__ import annotations

import itertools
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath

from shared.exports.rows import Call

ZIP_FORMATS = ("jsonl", "csv", "srt", "vtt")
CHUNK_BYTES = 256 * 1024


class _Sink:
    """A write-only file whose bytes are taken out as they come (no seek, no tell)."""

    def __init__(self):
        self.buffer = bytearray()

    def write(self, data) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def member_name(call: Call, seen: set[str]) -> str:
    """The call's name as a safe relative path; a second file of the same name gets its id appended."""
    parts = [p for p in PurePosixPath(call.name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    name = "/".join(parts) or call.id
    if name in seen:
        name = f"{name}-{call.id[:8]}"
    seen.add(name)
    return name


def zip_calls(rows: Iterable[tuple[Call, dict]], writers: dict[str, Callable[[list[dict]], Iterable[bytes]]]
              ) -> Iterator[bytes]:
    """`rows` in call order; `writers` maps an extension to what writes one call's rows in that format."""
    sink = _Sink()
    seen: set[str] = set()
    stamp = time.gmtime()[:6]  # one tuple shared by every member's entry in the central directory
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for call, group in itertools.groupby(rows, key=lambda cr: cr[0]):
            call_rows = [r for _, r in group]  # one call at a time
            name = member_name(call, seen)
            for ext, write in writers.items():
                info = zipfile.ZipInfo(f"{name}.{ext}", date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as member:
                    for chunk in write(call_rows):
                        member.write(chunk)
                        if len(sink.buffer) > CHUNK_BYTES:
                            yield sink.take()
            if len(sink.buffer) > CHUNK_BYTES:
                yield sink.take()
    yield sink.take()
