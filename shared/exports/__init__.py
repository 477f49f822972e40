"""Exports of a job's results, streamed: rows paged from the database (rows.py), written as JSONL or CSV
(tables.py), SRT or WebVTT (subtitles.py), or one zip of every call in every format (archive.py)."""

from shared.exports.formats import FORMATS, MEDIA_TYPES, stream

__all__ = ["FORMATS", "MEDIA_TYPES", "stream"]
