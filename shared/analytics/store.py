"""Call analytics in the database, read back by the API and the exports.

Computed per file, in the transaction that marks the file done (`settled`, called by shared/progress.settle
when the file's last segment is stored): the cost is spread over the job's batches, and a file is never done
without its analytics unless computing them failed. The transaction that ends a job (shared/endings.py)
computes those of any done file that still has none (`compute`): the files whose analytics failed, and
files marked done elsewhere (no speech at all). docs/METRICS.md says when each is visible.

Metrics go to `call_metrics` (one JSON row per file). With the job option `redact`, every result's text is
replaced by its redacted text and each replaced span is stored in `redactions` with the time it covers: the raw
texts of a file stay in the database only until the file settles.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from shared.analytics import metrics as m
from shared.analytics import redaction
from shared.analytics.conversation import Utterance
from shared.config import get_settings
from shared.schema import CallMetrics, Channel, File, FileState, Job, Redaction, Result, Segment

log = logging.getLogger(__name__)
FILES_PER_STEP = 200


def _words_column():
    return getattr(Result, "words", None)  # word timings (issue 15, item 1), where that migration has landed


WORD_KEYS = ("w", "word", "text", "token")  # "w": as the GPU worker stores them (workers/gpu/results.file_words)


def _word_text(w: dict):
    return next((w[k] for k in WORD_KEYS if k in w), None)


def _word_list(words) -> list[dict] | None:
    """Word timings as [{text, start_s, end_s}], or None where the stored value has another shape."""
    if not isinstance(words, list) or not words:
        return None
    out = []
    for w in words:
        if not isinstance(w, dict):
            return None
        text = _word_text(w)
        start, end = w.get("start_s"), w.get("end_s")
        if not isinstance(text, str) or not isinstance(start, (int, float)) or not isinstance(end, (int, float)):
            return None
        out.append({"text": text, "start_s": float(start), "end_s": float(end)})
    return out


def utterances(db: Session, file_ids: list[str]) -> tuple[dict[str, list[Utterance]], dict[str, dict[int, str]]]:
    """Each file's segments with their results, and each file's channels (index -> label)."""
    labels: dict[str, dict[int, str]] = defaultdict(dict)
    for fid, index, label in db.execute(select(Channel.file_id, Channel.index, Channel.label)
                                        .where(Channel.file_id.in_(file_ids))):
        labels[fid][index] = label
    words_col = _words_column()
    extra = [words_col] if words_col is not None else []
    rows = db.execute(
        select(Segment.file_id, Segment.id, Segment.start_ms, Segment.end_ms, Segment.loudness_lufs, Channel.index,
               Channel.label, Result.text, Result.language, Result.emotion, Result.emotion2vec_label,
               Result.emotion2vec_scores, *extra)
        .join(Channel, Channel.id == Segment.channel_id)
        .outerjoin(Result, Result.segment_id == Segment.id)
        .where(Segment.file_id.in_(file_ids))
        .order_by(Segment.file_id, Segment.start_ms, Channel.index)).all()
    out: dict[str, list[Utterance]] = defaultdict(list)
    for r in rows:
        words = _word_list(r[12]) if extra else None
        out[r[0]].append(Utterance(
            channel=r[5], label=r[6], start_ms=r[2], end_ms=r[3], text=r[7] or "", language=r[8], emotion=r[9],
            emotion2vec_label=r[10], emotion2vec_scores=r[11], loudness_lufs=r[4],
            words=len(words) if words is not None else None, segment_id=r[1]))
    return out, labels


def thresholds() -> m.Thresholds:
    s = get_settings()
    return m.Thresholds(silence_s=s.silence_threshold_seconds, interruption_s=s.interruption_min_seconds)


def settled(db: Session, file_ids) -> None:
    """Metrics (and redaction, for the files of a job that asked for it) of files that became done in the
    caller's transaction, inside a savepoint: an error is logged and rolls back only the analytics, never the
    files' state; the job's ending computes them again (`compute`)."""
    file_ids = sorted(set(file_ids))
    if not file_ids:
        return
    try:
        with db.begin_nested():
            t0 = time.perf_counter()
            files = db.execute(select(File.id, File.duration_s, File.job_id, Job.redact)
                               .join(Job, Job.id == File.job_id)
                               .where(File.id.in_(file_ids), File.duplicate_of.is_(None))).all()
            redacted = _files(db, [(fid, duration, job_id, bool(redact)) for fid, duration, job_id, redact in files])
            log.debug("call metrics of %d settled file(s)%s in %.3f s", len(files),
                      f", {redacted} PII span(s) redacted" if redacted else "", time.perf_counter() - t0)
    except Exception:  # noqa: BLE001 - the files are done whatever happens to their analytics
        log.exception("call metrics or PII redaction of %d settled file(s) failed; their job computes them again "
                      "when it ends", len(file_ids))


def compute(db: Session, job: Job) -> None:
    """At the end of a job, in its ending transaction: the analytics of its done files that have none yet
    (their files settled with an error in `settled`, or became done without segments), inside a savepoint:
    an error here is logged and rolls back only the analytics, never the job's ending."""
    try:
        with db.begin_nested():
            _compute(db, job)
    except Exception:  # noqa: BLE001 - the job ends whatever happens to its analytics
        log.exception("job %s: call metrics%s failed; the job ends without them", job.id,
                      " and PII redaction" if job.redact else "")


def _compute(db: Session, job: Job) -> None:
    t0 = time.perf_counter()
    has_metrics = select(CallMetrics.file_id).where(CallMetrics.file_id == File.id).exists()
    files = db.execute(select(File.id, File.duration_s).where(
        File.job_id == job.id, File.state == FileState.done, File.duplicate_of.is_(None), ~has_metrics)
        .order_by(File.id)).all()
    if not files:
        return
    redacted = _files(db, [(fid, duration, job.id, bool(job.redact)) for fid, duration in files])
    log.info("job %s: call metrics of %d file(s) left without them as they settled%s, in %.2f s", job.id,
             len(files), f", {redacted} PII span(s) redacted" if job.redact else "", time.perf_counter() - t0)


def _files(db: Session, files: list[tuple[str, float | None, str, bool]]) -> int:
    """Metrics of (file id, duration, job id, redact) files, replacing any stored ones, and redaction of
    those whose job asked for it; FILES_PER_STEP files are read at a time. Returns the spans redacted."""
    limits = thresholds()
    redacted = 0
    for at in range(0, len(files), FILES_PER_STEP):
        step = files[at:at + FILES_PER_STEP]
        ids = [fid for fid, *_ in step]
        per_file, labels = utterances(db, ids)
        rows = [{"file_id": fid, "job_id": job_id, "version": m.VERSION,
                 "metrics": m.call_metrics(per_file.get(fid, []), duration or 0.0, labels.get(fid, {}), limits)}
                for fid, duration, job_id, _ in step]
        db.execute(delete(CallMetrics).where(CallMetrics.file_id.in_(ids)))
        db.execute(insert(CallMetrics), rows)
        by_job: dict[str, list[str]] = defaultdict(list)
        for fid, _, job_id, redact in step:
            if redact:
                by_job[job_id].append(fid)
        for job_id, redact_ids in by_job.items():
            redacted += redact_files(db, job_id, redact_ids, per_file)
    return redacted


def _span_times(u: Utterance, words: list[dict] | None, text: str, span: redaction.Span) -> tuple[int, int, str]:
    """(start_ms, end_ms, timing) of a span: from the words that hold its characters, else the segment."""
    if words:
        at, hit = 0, []
        for w in words:
            found = text.find(w["text"].strip(), at) if w["text"].strip() else -1
            if found < 0:
                hit = []
                break
            end = found + len(w["text"].strip())
            if found < span.end and end > span.start:
                hit.append(w)
            at = end
        if hit:
            return (int(round(min(w["start_s"] for w in hit) * 1000)),
                    int(round(max(w["end_s"] for w in hit) * 1000)), "words")
    return u.start_ms, u.end_ms, "segment"


def _redact_words(words, kinds: dict[int, str]):
    """The stored word timings with every word inside a redacted span replaced by its placeholder."""
    out = []
    for i, w in enumerate(words):
        w = dict(w)
        key = next(k for k in WORD_KEYS if k in w)
        if i in kinds:
            w[key] = f"[{kinds[i]}]"
        else:
            w[key] = redaction.redact(w[key])[0]
        out.append(w)
    return out


def redact_files(db: Session, job_id: str, file_ids: list[str], per_file: dict[str, list[Utterance]]) -> int:
    """Replace each result's text by its redacted text; store the spans. Returns the number of spans."""
    words_col = _words_column()
    raw_words = {}
    if words_col is not None:
        raw_words = dict(db.execute(select(Result.segment_id, words_col).join(Segment, Segment.id == Result.segment_id)
                                    .where(Segment.file_id.in_(file_ids))).all())
    texts, spans = [], []
    for fid in file_ids:
        for u in per_file.get(fid, []):
            new_text, found = redaction.redact(u.text)
            if not found:
                continue
            words = _word_list(raw_words.get(u.segment_id))
            change = {"segment_id": u.segment_id, "text": new_text}
            kinds: dict[int, str] = {}
            for s in found:
                start, end, timing = _span_times(u, words, u.text, s)
                spans.append({"job_id": job_id, "file_id": fid, "segment_id": u.segment_id, "channel_index": u.channel,
                              "kind": s.kind, "start_ms": start, "end_ms": end, "timing": timing})
            if words_col is not None and raw_words.get(u.segment_id):
                kinds = _word_kinds(words, u.text, found)
                change["words"] = _redact_words(raw_words[u.segment_id], kinds)
            texts.append(change)
    # A text redacted already has nothing left to find: only segments with new finds lose their old spans.
    changed = [c["segment_id"] for c in texts]
    for at in range(0, len(changed), 500):
        db.execute(delete(Redaction).where(Redaction.segment_id.in_(changed[at:at + 500])))
    table = Result.__table__
    for keys in ({"text"}, {"text", "words"}):  # one executemany per shape of change
        group = [{"sid": c["segment_id"], **{k: c[k] for k in keys}} for c in texts if set(c) - {"segment_id"} == keys]
        if group:
            db.execute(update(table).where(table.c.segment_id == bindparam("sid"))
                       .values(**{k: bindparam(k) for k in keys}), group)
    if spans:
        db.execute(insert(Redaction), spans)
    return len(spans)


def _word_kinds(words: list[dict] | None, text: str, found: list[redaction.Span]) -> dict[int, str]:
    """Index of each word inside a redacted span -> the span's kind."""
    if not words:
        return {}
    out, at = {}, 0
    for i, w in enumerate(words):
        t = w["text"].strip()
        pos = text.find(t, at) if t else -1
        if pos < 0:
            return {}
        for s in found:
            if pos < s.end and pos + len(t) > s.start:
                out[i] = s.kind
        at = pos + len(t)
    return out


def file_spans(db: Session, file_id: str) -> list[tuple[int, int, int, str]]:
    """(channel_index, start_ms, end_ms, kind) of the file's redacted spans: stored ones once the file has
    settled (a redact job), else found now in its results."""
    stored = db.execute(select(Redaction.channel_index, Redaction.start_ms, Redaction.end_ms, Redaction.kind)
                        .where(Redaction.file_id == file_id).order_by(Redaction.start_ms)).all()
    if stored:
        return [tuple(r) for r in stored]
    per_file, _ = utterances(db, [file_id])
    out = []
    words_col = _words_column()
    raw_words = {}
    if words_col is not None:
        raw_words = dict(db.execute(select(Result.segment_id, words_col).join(Segment, Segment.id == Result.segment_id)
                                    .where(Segment.file_id == file_id)).all())
    for u in per_file.get(file_id, []):
        for s in redaction.find(u.text):
            start, end, _ = _span_times(u, _word_list(raw_words.get(u.segment_id)), u.text, s)
            out.append((u.channel, start, end, s.kind))
    return sorted(out, key=lambda r: r[1])


def file_metrics(db: Session, file_ids: list[str]) -> dict[str, dict]:
    """Stored metrics of these files: {file id: nested metrics}."""
    if not file_ids:
        return {}
    return dict(db.execute(select(CallMetrics.file_id, CallMetrics.metrics)
                           .where(CallMetrics.file_id.in_(file_ids))).all())


def flat_metrics(db: Session, file_ids: list[str]) -> dict[str, dict]:
    """For exports: {file id: one flat dict of its metrics (metrics.flat)}; files without metrics are absent."""
    return {fid: m.flat(v) for fid, v in file_metrics(db, file_ids).items()}
