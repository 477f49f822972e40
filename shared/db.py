"""Connections, sessions and migrations for SQLite (default) and PostgreSQL. ("Engine" in speechq
means the GPU engine, workers.gpu.engine; SQLAlchemy's engines are called databases here.)"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, retry_if_exception_type, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# True where the code only reads (the API's GET requests): SQLite then begins a deferred transaction, which in WAL
# mode never waits for the write lock, so status reads do not queue behind the workers' writes.
READS_ONLY: ContextVar[bool] = ContextVar("speechq_db_reads_only", default=False)


def connect(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **_pool())

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every SQLite test
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take over
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # writers queue up instead of failing on a stale snapshot
            conn.exec_driver_sql("BEGIN" if READS_ONLY.get() else "BEGIN IMMEDIATE")

        return engine
    # pre-ping: a connection the server dropped (a PostgreSQL restart) is replaced, not handed to a request.
    engine = create_engine(url, pool_pre_ping=True, **_pool())

    @event.listens_for(engine, "do_connect")
    def _patient_connect(dialect, _record, cargs, cparams):  # a restarting server: wait for it, briefly
        for attempt in retrying(retry_on=dialect.loaded_dbapi.OperationalError):
            with attempt:
                return dialect.connect(*cargs, **cparams)

    return engine


def _pool() -> dict:
    from shared.config import get_settings

    s = get_settings()
    return {"pool_size": s.db_pool_size, "max_overflow": s.db_max_overflow, "pool_timeout": s.db_pool_timeout_seconds}


def unavailable(exc: BaseException) -> bool:
    """True for a database that cannot be reached now (down, restarting, every pooled connection busy), as
    opposed to a bad statement: worth a retry, and a 503 rather than a 500 when retries run out."""
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no free connection in time
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if isinstance(exc.orig, sqlite3.OperationalError):  # SQLite says "no such table" with this class too
        return any(m in str(exc.orig) for m in ("database is locked", "unable to open database"))
    return isinstance(exc, sa_exc.OperationalError)


def retrying(seconds: float | None = None, retry_on: type[BaseException] | None = None) -> Retrying:
    """A tenacity loop for a whole transaction (or, `retry_on` a driver's error, a new connection) that meets an
    unreachable database: run again, with a short growing wait, for `seconds` (settings.db_retry_seconds);
    then the last error is raised."""
    if seconds is None:
        from shared.config import get_settings

        seconds = get_settings().db_retry_seconds
    retry = retry_if_exception(unavailable) if retry_on is None else retry_if_exception_type(retry_on)
    return Retrying(retry=retry, stop=stop_after_delay(seconds),
                    wait=wait_exponential(multiplier=0.2, max=2), reraise=True,
                    before_sleep=lambda state: log.warning(
                        "database unavailable (%s), retrying", state.outcome.exception().__class__.__name__))


@lru_cache
def database_for(url: str) -> Engine:
    return connect(url)


@lru_cache
def _factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=database_for(url), expire_on_commit=False)


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    if url is None:
        from shared.config import get_settings

        url = get_settings().database
    return _factory(url)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_scope(url: str | None = None) -> Iterator[Session]:
    """A session that only reads (READS_ONLY): on SQLite it neither waits for nor holds the write lock, so a
    worker's reads do not queue behind, or hold up, the other processes' writes."""
    token = READS_ONLY.set(True)
    try:
        with session_scope(url) as session:
            yield session
    finally:
        READS_ONLY.reset(token)


def migrate(url: str | None = None) -> None:
    """Apply Alembic migrations up to head (idempotent; run on every start)."""
    from alembic import command
    from alembic.config import Config

    if url is None:
        from shared.config import get_settings

        url = get_settings().database
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = database_for(url)
    command.upgrade(cfg, "heads")
    log.info("database at head: %s", database_for(url).url.render_as_string(hide_password=True))
