"""Which export formats there are, their media types, and the byte stream of each."""

from __future__ import annotations

from collections.abc import Iterator

from shared.exports import archive, rows, subtitles, tables
from shared.exports.rows import SessionFactory

FORMATS = ("jsonl", "csv", "srt", "vtt", "zip")
SUBTITLES = ("srt", "vtt")
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8",
               "srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8",
               "zip": "application/zip"}


def stream(fmt: str, session: SessionFactory, job_id: str, file_id: str | None = None, page_rows: int = 2000
           ) -> Iterator[bytes]:
    """The export as bytes, produced as it is read. Subtitles are per call: the caller passes `file_id`."""
    if fmt not in FORMATS:
        raise ValueError(f"format is one of {', '.join(FORMATS)}")
    if fmt in SUBTITLES and file_id is None:
        raise ValueError("subtitles are per call: pass file_id, or take format=zip for every call's")
    found = rows.rows(session, job_id, file_id, page_rows)
    just_rows = (r for _, r in found)
    if fmt == "jsonl":
        return tables.jsonl(just_rows)
    if fmt == "srt":
        return subtitles.srt(just_rows)
    if fmt == "vtt":
        return subtitles.vtt(just_rows)
    columns = rows.columns(session, job_id, file_id)
    if fmt == "csv":
        return tables.csv_rows(just_rows, columns)
    return archive.zip_calls(found, {"jsonl": tables.jsonl, "csv": lambda r: tables.csv_rows(r, columns),
                                     "srt": subtitles.srt, "vtt": subtitles.vtt})
