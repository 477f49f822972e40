"""The sweep of orphaned upload folders: no job, or an ended job, and quiet for the grace period."""

import os
import time

import pytest

from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Job, JobState
from shared.storage import Spool
from shared.sweeps import orphan_uploads


@pytest.fixture
def spool(db_scope):
    return Spool(get_settings().spool)


def upload(spool: Spool, job_id: str, age_s: float) -> None:
    folder = spool.uploads(job_id)
    (folder / "a.wav").write_bytes(b"RIFF")
    then = time.time() - age_s
    for p in (folder / "a.wav", folder):
        os.utime(p, (then, then))


def test_sweep_removes_only_quiet_folders_without_a_live_job(spool):
    with session_scope() as db:
        db.add_all([Job(id="running", state=JobState.running), Job(id="ended", state=JobState.done),
                    Job(id="queued", state=JobState.queued)])
    for job_id in ("running", "ended", "queued", "nojob"):
        upload(spool, job_id, age_s=7200)
    upload(spool, "copying", age_s=5)  # an upload still being copied: no job row yet
    with session_scope() as db:
        removed = orphan_uploads(db, spool.root, grace_seconds=3600)
    assert sorted(removed) == ["ended", "nojob"]
    assert sorted(p.name for p in (spool.root / "uploads").iterdir()) == ["copying", "queued", "running"]


def test_a_recent_file_keeps_an_old_folder(spool):
    upload(spool, "nojob", age_s=7200)
    (spool.uploads("nojob") / "b.wav").write_bytes(b"RIFF")  # written now: the copy goes on
    os.utime(spool.uploads("nojob"), (time.time() - 7200,) * 2)
    with session_scope() as db:
        assert orphan_uploads(db, spool.root, grace_seconds=3600) == []
        assert orphan_uploads(db, spool.root, grace_seconds=3600, now=time.time() + 3601) == ["nojob"]


def test_no_uploads_folder_is_fine(spool):
    with session_scope() as db:
        assert orphan_uploads(db, spool.root, grace_seconds=0) == []
