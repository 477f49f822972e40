"""Deleting a job leaves nothing of it, on SQLite and PostgreSQL; retention deletes only old finished jobs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import String, Text, select, text

from shared import retention
from shared.config import Settings
from shared.db import migrate, session_scope
from shared.schema import (Archive, Base, Batch, Channel, File, FileState, Job, JobState, Result, Segment,
                           utcnow)
from shared.storage import Spool


@pytest.fixture(scope="module")
def db_url(database_url):
    migrate(database_url)
    return database_url


def _job(db, spool: Spool, state=JobState.done, ended_days_ago: float | None = 0.0, shared_batch: Batch | None = None):
    """A job with an archive, a file, a channel, two segments and their results, and its audio in the spool:
    one segment in a batch of its own, the other in `shared_batch` when given."""
    job = Job(state=state, finished_at=None if ended_days_ago is None else utcnow() - timedelta(days=ended_days_ago))
    db.add(job)
    db.flush()
    uploads = spool.uploads(job.id)
    (uploads / "calls.zip").write_bytes(b"PK")
    archive = Archive(job_id=job.id, name="calls.zip", path=str(uploads / "calls.zip"))
    db.add(archive)
    db.flush()
    (uploads / "a.wav").write_bytes(b"RIFF")
    f = File(job_id=job.id, archive_id=archive.id, name="calls.zip/a.wav", path=str(uploads / "a.wav"),
             state=FileState.done)
    db.add(f)
    db.flush()
    ch = Channel(file_id=f.id, index=0, label="agent", audio_path=str(spool.channel_audio(job.id, "c0")))
    Path(ch.audio_path).write_bytes(b"\0" * 16)
    exports = spool.root / "exports" / job.id
    exports.mkdir(parents=True)
    (exports / "results.csv").write_text("text\n")
    db.add(ch)
    db.flush()
    own = Batch(path=str(spool.batch(f"own{job.id[:8]}")), num_segments=1, audio_seconds=1, padded_seconds=1)
    db.add(own)
    db.flush()
    spool.write_batch(Path(own.path), np.zeros(4))
    for batch in (own, shared_batch or own):
        seg = Segment(job_id=job.id, file_id=f.id, channel_id=ch.id, start_ms=0, end_ms=1000, batch_id=batch.id)
        db.add(seg)
        db.flush()
        db.add(Result(segment_id=seg.id, job_id=job.id, text="my card number is four four"))
    db.flush()
    return job.id, own


def _leftovers(db, spool: Spool, job_id: str) -> list[str]:
    """Every row that mentions the job (in any column of any table) and every spool path that names it."""
    found = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if type(column.type) in (String, Text):
                n = db.execute(select(text("count(*)")).select_from(table).where(column == job_id)).scalar()
                if n:
                    found.append(f"{table.name}.{column.name}: {n}")
    found += [str(p) for p in spool.root.rglob("*") if job_id in str(p)]
    return found


def test_delete_leaves_nothing_of_the_job(db_url, tmp_path):
    spool = Spool(tmp_path / "spool")
    with session_scope(db_url) as db:
        shared = Batch(path=str(spool.batch("shared")), num_segments=2, audio_seconds=2, padded_seconds=2)
        db.add(shared)
        db.flush()
        spool.write_batch(Path(shared.path), np.zeros(4))
        victim, victim_batch = _job(db, spool, shared_batch=shared)
        other, _ = _job(db, spool, shared_batch=shared)
        file_ids = list(db.scalars(select(File.id).where(File.job_id == victim)))
        before = _leftovers(db, spool, victim)  # the check sees the job's rows and folders before the delete
        assert {"jobs.id: 1", "files.job_id: 1", "results.job_id: 2"} <= set(before)
        assert any("/exports/" in p for p in before) and any("/audio/" in p for p in before)
    with session_scope(db_url) as db:
        batch_files = retention.delete_rows(db, victim)
    retention.remove_audio(spool, victim, batch_files)
    with session_scope(db_url) as db:
        assert _leftovers(db, spool, victim) == []
        assert not db.scalar(select(text("count(*)")).select_from(Channel).where(Channel.file_id.in_(file_ids)))
        assert db.get(Batch, victim_batch.id) is None and not Path(victim_batch.path).exists()
        assert not Path(victim_batch.path).with_suffix(".f32").exists()
        # what the other job still uses stays: the batch they shared, its own rows and audio
        assert db.get(Batch, shared.id) is not None and Path(shared.path).exists()
        assert db.get(Job, other) is not None and (spool.root / "uploads" / other / "a.wav").exists()
        assert db.scalar(select(text("count(*)")).select_from(Result).where(Result.job_id == other)) == 2


def test_retention_deletes_only_jobs_that_ended_long_enough_ago(db_url, tmp_path):
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    with session_scope(db_url) as db:
        old_done, _ = _job(db, spool, JobState.done, ended_days_ago=10)
        old_cancelled, _ = _job(db, spool, JobState.cancelled, ended_days_ago=8)
        recent, _ = _job(db, spool, JobState.failed, ended_days_ago=1)
        running, _ = _job(db, spool, JobState.running, ended_days_ago=None)
    off = Settings(spool_dir=spool_dir)
    assert retention.sweep(off, lambda: session_scope(db_url)) == 0
    on = Settings(spool_dir=spool_dir, retention_days=7)
    assert retention.sweep(on, lambda: session_scope(db_url)) == 2
    with session_scope(db_url) as db:
        for gone in (old_done, old_cancelled):
            assert _leftovers(db, spool, gone) == []
        for kept in (recent, running):
            assert db.get(Job, kept) is not None and (spool_dir / "uploads" / kept / "a.wav").exists()
