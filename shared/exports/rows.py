"""Segment rows of a job, read page by page (keyset pagination): an export holds one page, never the job.

Each page is read in its own short transaction, so a slow client reading an export keeps no database
lock or snapshot open. Rows come in the order of the results: file name, then time, then channel.
A file with the same audio as an earlier one (`duplicate_of`) gets its original's segments, under its name.

The columns of a row are built in one place, `row()`: the segment's own fields, then what other parts of
speechq add (word timings from results.words, and the file's call metrics from shared.analytics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session, aliased

from api.mapping import emotion_label, emotion_scores, seconds
from shared.analytics import flat_metrics
from shared.schema import Channel, File, Result, Segment

log = logging.getLogger(__name__)

BASE_COLUMNS = ["file", "file_id", "channel", "channel_index", "segment_id", "start_s", "end_s", "text",
                "language", "emotion", "event", "emotion2vec_label", "emotion2vec_score", "emotion2vec_scores"]
FILES_PER_PAGE = 500
SessionFactory = Callable[[], Session]


@dataclass(frozen=True)
class Call:
    """A file as exported: its own id and name, and the file whose segments it shows."""
    id: str
    name: str
    source_id: str


def _metrics(db: Session, file_ids: list[str]) -> dict[str, dict]:
    """Per-file call metrics as flat {column: value} dicts (shared.analytics); files without any are absent."""
    return flat_metrics(db, file_ids)


def columns(session: SessionFactory, job_id: str, file_id: str | None = None) -> list[str]:
    """The columns of every row of this export, fixed before the first row (a CSV header needs them): the
    call metrics' names differ between calls (channel labels, languages), so every call's are read first,
    a page of files at a time (names only are kept)."""
    extra = {"words": None}
    group: list[str] = []
    for call in calls(session, job_id, file_id):
        group.append(call.source_id)
        if len(group) == FILES_PER_PAGE:
            extra.update(_metric_names(session, group))
            group = []
    if group:
        extra.update(_metric_names(session, group))
    return BASE_COLUMNS + list(extra)


def _metric_names(session: SessionFactory, file_ids: list[str]) -> dict[str, None]:
    with session() as db:
        return {k: None for m in _metrics(db, sorted(set(file_ids))).values() for k in m}


def row(call: Call, channel: tuple, segment: tuple, result: tuple | None,
        metrics: dict | None = None) -> dict:
    """One row: the segment's fields, then the optional columns (words, call metrics) at the end.
    channel: (label, index); segment: (id, start_ms, end_ms); result: its columns as selected in rows()."""
    label, index = channel
    seg_id, start_ms, end_ms = segment
    text = language = emotion = event = e2v = scores = words = None
    if result is not None:
        text, language, emotion, event, e2v, scores, words = result
    scores = emotion_scores(scores)
    out = {
        "file": call.name, "file_id": call.id, "channel": label, "channel_index": index, "segment_id": seg_id,
        "start_s": seconds(start_ms), "end_s": seconds(end_ms), "text": text, "language": language,
        "emotion": emotion, "event": event, "emotion2vec_label": emotion_label(e2v),
        "emotion2vec_score": round(max(scores.values()), 4) if scores else None, "emotion2vec_scores": scores,
    }
    out["words"] = words
    if metrics:
        out.update(metrics)
    return out


def _calls_page(db: Session, job_id: str, file_id: str | None, after: tuple[str, str] | None) -> list[Call]:
    q = select(File.id, File.name, File.duplicate_of).where(File.job_id == job_id)
    if file_id is not None:
        q = q.where(File.id == file_id)
    if after is not None:
        q = q.where(tuple_(File.name, File.id) > tuple_(*after))
    rows = db.execute(q.order_by(File.name, File.id).limit(FILES_PER_PAGE)).all()
    return [Call(i, n, dup or i) for i, n, dup in rows]


def calls(session: SessionFactory, job_id: str, file_id: str | None = None) -> Iterator[Call]:
    """The job's files in name order, a page at a time."""
    after = None
    while True:
        with session() as db:
            page = _calls_page(db, job_id, file_id, after)
        yield from page
        if len(page) < FILES_PER_PAGE:
            return
        after = (page[-1].name, page[-1].id)


def rows(session: SessionFactory, job_id: str, file_id: str | None = None, page_rows: int = 2000
         ) -> Iterator[tuple[Call, dict]]:
    """(call, row) for every segment of the job (or of one file), in results order."""
    result_cols = [Result.text, Result.language, Result.emotion, Result.event, Result.emotion2vec_label,
                   Result.emotion2vec_scores, Result.words]
    group: list[Call] = []
    for call in calls(session, job_id, file_id):
        group.append(call)
        if len(group) == FILES_PER_PAGE:
            yield from _group_rows(session, group, result_cols, page_rows)
            group = []
    if group:
        yield from _group_rows(session, group, result_cols, page_rows)


def _group_rows(session: SessionFactory, group: list[Call], result_cols: list, page_rows: int
                ) -> Iterator[tuple[Call, dict]]:
    by_id = {c.id: c for c in group}
    with session() as db:
        metrics = _metrics(db, sorted({c.source_id for c in group}))
    # The exported file shows the segments of its source: itself, or the original of a duplicate.
    out_file = aliased(File)
    key = (out_file.name, out_file.id, Segment.start_ms, Channel.index, Segment.id)
    base = (select(out_file.id, Channel.label, Channel.index, Segment.id, Segment.start_ms, Segment.end_ms,
                   Result.segment_id, *result_cols)
            .select_from(out_file)
            .join(Segment, Segment.file_id == func.coalesce(out_file.duplicate_of, out_file.id))
            .join(Channel, Channel.id == Segment.channel_id)
            .outerjoin(Result, Result.segment_id == Segment.id)
            .where(out_file.id.in_(list(by_id))))
    after = None
    while True:
        q = base if after is None else base.where(tuple_(*key) > tuple_(*after))
        with session() as db:
            page = db.execute(q.order_by(*key).limit(page_rows)).all()
        for r in page:
            call = by_id[r[0]]
            result = tuple(r[7:]) if r[6] is not None else None
            yield call, row(call, (r[1], r[2]), (r[3], r[4], r[5]), result, metrics.get(call.source_id))
        if len(page) < page_rows:
            return
        last = page[-1]
        after = (by_id[last[0]].name, last[0], last[4], last[2], last[3])
