"""One claim for archives, files and batches: queued or stale work is taken, each claim is an attempt."""

from datetime import timedelta

from shared import claims
from shared.config import get_settings
from shared.schema import Batch, BatchState, utcnow


def _batch(db, state: BatchState, age_s: float = 0.0) -> Batch:
    batch = Batch(path="-", num_segments=1, audio_seconds=1.0, padded_seconds=1.0, state=state)
    db.add(batch)
    db.flush()
    batch.updated_at = utcnow() - timedelta(seconds=age_s)
    db.flush()
    return batch


def test_queued_work_is_claimed_once(db):
    batch = _batch(db, BatchState.queued)
    assert claims.claim(db, Batch, batch.id, BatchState.queued, BatchState.running, worker="gpu0")
    assert not claims.claim(db, Batch, batch.id, BatchState.queued, BatchState.running, worker="gpu1")
    db.refresh(batch)
    assert (batch.state, batch.attempts, batch.worker) == (BatchState.running, 1, "gpu0")


def test_running_work_is_taken_over_only_past_the_deadline(db):
    deadline = get_settings().task_deadline_seconds
    fresh, stale = _batch(db, BatchState.running, 1), _batch(db, BatchState.running, deadline + 1)
    assert not claims.claim(db, Batch, fresh.id, BatchState.queued, BatchState.running)
    assert claims.claim(db, Batch, stale.id, BatchState.queued, BatchState.running)
    done = _batch(db, BatchState.done, deadline + 1)
    assert not claims.claim(db, Batch, done.id, BatchState.queued, BatchState.running)


def test_attempts_beyond_the_cap_are_given_up(db):
    cap = get_settings().max_attempts
    batch = _batch(db, BatchState.queued)
    batch.attempts = cap
    assert claims.gave_up(batch) is None
    batch.attempts = cap + 1
    assert claims.gave_up(batch, "the worker died") == f"gave up after {cap} attempts (the worker died)"
