"""One way to claim work, for archives, files and batches alike: a row moves from queued to running
in one UPDATE, or is taken over when it has been running past the deadline (its worker died);
each claim counts an attempt, and work claimed more than SPEECHQ_MAX_ATTEMPTS times is given up
(poison work, ARCHITECTURE.md contract 3)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update

from shared.config import get_settings
from shared.schema import utcnow


def claim(db, table, row_id: str, queued, running, **values) -> bool:
    """Move the row `row_id` of `table` to `running` if it is `queued`, or `running` but stale;
    `values` are set with it. False if the row is not ours to run (done, or another worker's)."""
    stale = utcnow() - timedelta(seconds=get_settings().task_deadline_seconds)
    claimed = db.execute(
        update(table)
        .where(table.id == row_id, or_(table.state == queued, (table.state == running) & (table.updated_at < stale)))
        .values(state=running, attempts=table.attempts + 1, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    return claimed > 0


def gave_up(row, why: str = "") -> str | None:
    """The error of a claimed row that has used up its attempts; None while it may run again."""
    cap = get_settings().max_attempts
    if row.attempts <= cap:
        return None
    return f"gave up after {cap} attempts" + (f" ({why})" if why else "")
