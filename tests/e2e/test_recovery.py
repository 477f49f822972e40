"""Contract 1 and 3: the database is the source of truth; lost messages delay work but lose none,
and poison work stops after the redelivery cap."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from shared import samples
from shared.schema import File, FileState, Job, utcnow
from tests.conftest import need_espeak

pytestmark = pytest.mark.e2e


def _insert(api, tmp_path, *, state: FileState, attempts: int) -> str:
    """Rows as the API writes them, but no message on the broker: as if Redis lost it."""
    call = samples.mono_call(tmp_path / f"lost-{state.value}.wav", [(0, "This message was lost on the way.")])
    engine = create_engine(api.database_url)
    with Session(engine) as db:
        job = Job(name="lost", channel_labels="agent,customer", files_total=1)
        db.add(job)
        db.flush()
        db.add(File(job_id=job.id, name=call.name, path=str(call), size_bytes=call.stat().st_size, state=state,
                    attempts=attempts, updated_at=utcnow() - timedelta(hours=1)))
        db.commit()
        job_id = job.id
    engine.dispose()
    return job_id


def test_lost_message_is_recovered_by_the_reconciler(api, tmp_path):
    need_espeak()
    job_id = _insert(api, tmp_path, state=FileState.queued, attempts=0)
    st = api.wait(job_id, timeout=120)
    assert st["state"] == "done" and st["files_done"] == 1
    (f,) = api.results(job_id)["files"]
    assert f["channels"][0]["segments"] and all(s["state"] == "done" for s in f["channels"][0]["segments"])


def test_poison_file_stops_after_the_redelivery_cap(api, tmp_path):
    need_espeak()
    # Stuck 'ingesting' for an hour after three tries: a worker died on it each time.
    job_id = _insert(api, tmp_path, state=FileState.ingesting, attempts=3)
    st = api.wait(job_id, timeout=120)
    assert st["state"] == "failed" and st["files_failed"] == 1
    assert "gave up after 3 attempts" in st["errors"][0]["error"]
