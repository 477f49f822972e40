"""Database connections: reads that never queue behind a writer on SQLite; what counts as unavailable."""

import sqlite3
import threading
import time

from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text

from shared.db import READS_ONLY, migrate, session_scope, unavailable
from shared.schema import Job


def test_reads_do_not_wait_for_the_write_lock(tmp_path):
    url = f"sqlite:///{tmp_path / 'speechq.db'}"
    migrate(url)
    holding, done = threading.Event(), threading.Event()

    def writer():
        with session_scope(url) as db:  # BEGIN IMMEDIATE: holds the write lock until it commits
            db.add(Job(id="w"))
            db.flush()
            holding.set()
            done.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert holding.wait(10)
    token = READS_ONLY.set(True)
    try:
        started = time.monotonic()
        with session_scope(url) as db:
            assert db.scalars(select(Job.id)).all() == []  # the writer's row is not committed yet
            db.execute(text("SELECT 1"))
        assert time.monotonic() - started < 2
    finally:
        READS_ONLY.reset(token)
        done.set()
        t.join()


def test_unavailable_tells_a_down_database_from_a_bad_statement():
    assert unavailable(sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused")))
    assert unavailable(sa_exc.OperationalError("x", {}, sqlite3.OperationalError("database is locked")))
    assert not unavailable(sa_exc.OperationalError("x", {}, sqlite3.OperationalError("no such table: jobs")))
    assert not unavailable(sa_exc.ProgrammingError("x", {}, Exception("syntax error")))
    assert not unavailable(ValueError("x"))
