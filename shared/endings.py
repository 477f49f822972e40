"""What happens, inside the ending transaction, when a job reaches done, failed or cancelled.

Every path that ends a job (the last file settled, a cancel, a job with nothing to process) calls
`job_ended` in the same transaction that writes the final state, so that whatever it records
(outbox rows, metrics) commits or rolls back with the state itself.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from shared import storage, webhooks
from shared.analytics import store as analytics_store
from shared.config import get_settings
from shared.schema import Job


def job_ended(db: Session, job: Job) -> None:
    """Called once per job, after `job.state` and `job.finished_at` are set, before the commit."""
    # The job's uploads and decoded audio leave the spool once this transaction commits (issue 13).
    storage.clean_after_commit(db, job.id, get_settings().spool)
    # Call metrics (and PII redaction, if the job asked for it) were stored as each file settled
    # (shared/progress.settle); those of any done file still without them are computed now (shared/analytics).
    analytics_store.compute(db, job)
    # The webhook outbox: a POST of the final status to the job's callback_url, sent by the reconciler.
    webhooks.enqueue(db, job)
