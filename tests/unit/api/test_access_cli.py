"""`speechq keys` and Flower's login, as an operator meets them."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import httpx
import pytest
from typer.testing import CliRunner

from api import keys, launcher
from shared.config import Settings, get_settings
from shared.db import session_scope
from tests.conftest import free_port


@pytest.fixture
def cli_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'speechq.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def _speechq(*args: str):
    from api.cli import app

    return CliRunner().invoke(app, list(args))


def test_keys_create_list_revoke(cli_db):
    made = _speechq("keys", "create", "--name", "night batch", "--admin")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert keys.key_id(key) and "shown this once" in made.stderr
    with session_scope(cli_db) as db:
        row = keys.verify(db, key)
        assert row.name == "night batch" and row.admin
    listed = _speechq("keys", "list")
    assert listed.exit_code == 0 and row.id in listed.stdout and "night batch" in listed.stdout
    assert key.split("_", 2)[2] not in listed.output  # never the key again
    assert _speechq("keys", "revoke", row.id).exit_code == 0
    with session_scope(cli_db) as db:
        assert keys.verify(db, key) is None
    assert _speechq("keys", "revoke", "0" * 16).exit_code == 3
    assert _speechq("keys", "create", "--name", "").exit_code == 2


def test_cli_sends_the_configured_key(monkeypatch):
    from api.cli.app import auth_headers

    monkeypatch.delenv("SPEECHQ_API_KEY", raising=False)
    get_settings.cache_clear()
    assert auth_headers() == {}
    monkeypatch.setenv("SPEECHQ_API_KEY", "sq_0123456789abcdef_" + "k" * 43)
    get_settings.cache_clear()
    try:
        assert auth_headers() == {"Authorization": "Bearer sq_0123456789abcdef_" + "k" * 43}
        assert "kkkk" not in repr(get_settings())  # a secret in settings is not printed with them
    finally:
        get_settings.cache_clear()


def test_flower_password_is_generated_once_and_private(tmp_path):
    settings = Settings(data_dir=tmp_path)
    credentials, path = launcher.flower_credentials(settings)
    user, password = credentials.split(":", 1)
    assert user == "speechq" and len(password) >= 20 and path == (tmp_path / "flower-auth").resolve()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert launcher.flower_credentials(settings) == (credentials, path)  # kept across restarts
    assert launcher.flower_credentials(Settings(data_dir=tmp_path, flower_basic_auth="ops:pw")) == ("ops:pw", None)
    proc = launcher.flower(5555, credentials)
    assert password not in " ".join(proc.argv)  # not visible in ps
    assert proc.env["FLOWER_BASIC_AUTH"] == credentials


def test_flower_asks_for_the_password(redis_url, tmp_path):
    """The real Flower, started as `speechq up` starts it: 401 without the password, 200 with it."""
    credentials, _ = launcher.flower_credentials(Settings(data_dir=tmp_path))
    port = free_port()
    spec = launcher.flower(port, credentials)
    env = {**os.environ, **spec.env, "REDIS_URL": redis_url}
    proc = subprocess.Popen(spec.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "Flower did not start"
                time.sleep(0.5)
        assert r.status_code == 401
        user, password = credentials.split(":", 1)
        assert httpx.get(f"http://127.0.0.1:{port}/", auth=(user, password + "x"), timeout=5).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/", auth=(user, password), timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
