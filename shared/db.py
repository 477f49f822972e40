"""Connections, sessions and migrations for SQLite (default) and PostgreSQL. ("Engine" in speechq
means the GPU engine, workers.gpu.engine; SQLAlchemy's engines are called databases here.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def connect(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

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
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


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
