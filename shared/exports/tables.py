"""JSONL and CSV: one row per segment, written a few hundred rows at a time."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator

FLUSH_ROWS = 500


def jsonl(rows: Iterable[dict]) -> Iterator[bytes]:
    lines: list[str] = []
    for r in rows:
        lines.append(json.dumps(r, ensure_ascii=False))
        if len(lines) >= FLUSH_ROWS:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()


def _cell(value):
    """Lists and dicts (word timings, emotion2vec scores) as JSON in their cell; None as empty."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def csv_rows(rows: Iterable[dict], columns: list[str]) -> Iterator[bytes]:
    """RFC 4180 CSV with a header row; the columns are fixed before the first row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    n = 0
    for r in rows:
        writer.writerow([_cell(r.get(c)) for c in columns])
        n += 1
        if n % FLUSH_ROWS == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()
