"""What happens, inside the ending transaction, when a job reaches done, failed or cancelled.

Every path that ends a job (the last file settled, a cancel, a job with nothing to process) calls
`job_ended` in the same transaction that writes the final state, so that whatever it records
(outbox rows, metrics) commits or rolls back with the state itself.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from shared.schema import Job


def job_ended(db: Session, job: Job) -> None:
    """Called once per job, after `job.state` and `job.finished_at` are set, before the commit."""
