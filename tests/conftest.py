"""Fixtures with real components: Valkey server, PostgreSQL/SQLite databases, tiny random models."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest

from shared import logs

# The team's material beside the checkout (../shared); SPEECHQ_TEAM_SHARED points elsewhere.
SHARED = Path(os.environ.get("SPEECHQ_TEAM_SHARED") or Path(__file__).resolve().parents[2] / "shared")
AUDIO = SHARED / "audio"
PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

logs.setup()


def shared_audio(name: str) -> Path:
    path = AUDIO / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the team's ../shared/audio is not beside this checkout")
    return path


def need_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (the README's test command installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from shared.models import random_init

    root = tmp_path_factory.mktemp("models")
    random_init.write_sensevoice(root / "SenseVoiceSmall", "tiny", seed=1)
    random_init.write_emotion2vec(root / "emotion2vec_plus_large", "tiny", seed=2)
    return root


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real Valkey server started by speechq's own embedded-broker code on a free port."""
    from shared.broker import start_embedded

    server = start_embedded(free_port(), tmp_path_factory.mktemp("valkey"))
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


def _postgres_database() -> str:
    from sqlalchemy import create_engine, text

    name = f"speechq_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc.__class__.__name__}")
    finally:
        admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def _drop_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'speechq.db'}"
        return
    url = _postgres_database()
    yield url
    from shared.db import database_for

    database_for(url).dispose()
    _drop_postgres(url)


def pytest_configure(config):
    config.addinivalue_line("markers", "chaos: the chaos suite (tests/chaos): real processes killed mid-work, "
                                       "every row checked afterwards")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped with the reason elsewhere (run them on the GPU machine)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (the GPU tests run on the device: pytest -m gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
