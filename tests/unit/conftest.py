"""Fixtures of the unit tests: a few clips of noise of mixed lengths."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def wavs():
    rng = np.random.default_rng(7)
    lengths = [16000 * 3, 16000 * 5 + 123, 40000, 12345]
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]


@pytest.fixture
def db_scope(tmp_path, monkeypatch):
    """shared.db.session_scope on a fresh, migrated SQLite database in the test's own data folder."""
    from shared.config import get_settings
    from shared.db import migrate, session_scope

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    migrate()
    yield session_scope
    get_settings.cache_clear()


@pytest.fixture
def db(db_scope):
    """One session of db_scope, committed at the end of the test."""
    with db_scope() as session:
        yield session
