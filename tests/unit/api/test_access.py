"""API keys and what each caller may see, against the real app on SQLite and PostgreSQL (no workers)."""

from __future__ import annotations

import logging
import re
import time
from unittest import mock

import pytest
from fastapi.testclient import TestClient

from api import keys
from shared.config import get_settings
from shared.db import migrate, session_scope
from shared.schema import ApiKey, Job, JobState


KEY_CACHE_S = 1.0


def test_key_is_stored_hashed_and_checked():
    with _memory_db() as db:
        row, key = keys.create(db, "team a")
        assert re.fullmatch(r"sq_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", key)
        secret = key.split("_", 2)[2]
        assert secret not in (row.hash, row.salt) and key not in (row.hash, row.salt)
        assert keys.verify(db, key).id == row.id
        assert keys.verify(db, key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # one character off
        assert keys.verify(db, f"sq_{row.id}_" + "x" * 43) is None
        assert keys.verify(db, "not a key") is None
        other, other_key = keys.create(db, "team b")
        assert other.salt != row.salt and keys.verify(db, other_key).id == other.id
        keys.revoke(db, row.id)
        assert keys.verify(db, key) is None and keys.verify(db, other_key) is not None
        assert keys.any_created(db)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                            ("10.1.2.3", False), ("api.example.com", False)])
def test_loopback(host, loopback):
    assert keys.is_loopback(host) is loopback


@pytest.fixture(scope="module")
def app_env(database_url, redis_url, tmp_path_factory):
    from unittest import mock

    env = {"SPEECHQ_DATA_DIR": str(tmp_path_factory.mktemp("data")), "DATABASE_URL": database_url,
           "REDIS_URL": redis_url, "SPEECHQ_API_HOST": "127.0.0.1",
           "SPEECHQ_API_KEY_CACHE_SECONDS": str(KEY_CACHE_S)}
    with mock.patch.dict("os.environ", env):
        get_settings.cache_clear()
        migrate(database_url)
        yield database_url
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def client(app_env):
    from api.main import create_app

    with TestClient(create_app()) as c:
        yield c


def _memory_db():
    import tempfile

    url = f"sqlite:///{tempfile.mkdtemp()}/keys.db"
    migrate(url)
    return session_scope(url)


def test_keyless_on_loopback_until_a_key_exists(client, app_env, caplog):
    """Runs first in this module: no key yet, so loopback needs none; the first key ends keyless mode."""
    assert client.get("/v1/jobs").status_code == 200
    with session_scope(app_env) as db:
        _, key = keys.create(db, "first")
    caplog.set_level(logging.DEBUG)
    r = client.get("/v1/jobs")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs", headers=_bearer(key)).status_code == 200
    assert client.get("/v1/jobs", headers=_bearer(key[:-2] + "zz")).status_code == 401
    secret = key.split("_", 2)[2]
    assert caplog.records and not any(secret in r.getMessage() for r in caplog.records)


def test_every_v1_route_but_health_needs_a_key(client, app_env):
    """Routes added later (exports, metrics, ...) are covered too: each must answer 401 without a key."""
    _ensure_a_key(app_env)
    checked = []
    for template, operations in client.get("/openapi.json").json()["paths"].items():
        if not template.startswith("/v1/") or template == "/v1/health":
            continue
        path = re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", template)
        for method in operations:
            r = client.request(method.upper(), path)
            assert r.status_code == 401, f"{method} {template} answered {r.status_code} without a key"
            checked.append(f"{method.upper()} {template}")
    assert {"GET /v1/jobs", "POST /v1/jobs", "DELETE /v1/jobs/{job_id}", "POST /v1/jobs/{job_id}/cancel"} <= set(checked)


def test_each_key_sees_only_its_own_jobs(client, app_env):
    with session_scope(app_env) as db:
        a, key_a = keys.create(db, "a")
        b, key_b = keys.create(db, "b")
        _, key_admin = keys.create(db, "ops", admin=True)
        job_a = Job(owner_key_id=a.id, state=JobState.running)
        job_b = Job(owner_key_id=b.id, state=JobState.done)
        db.add_all([job_a, job_b])
        db.flush()
        ja, jb = job_a.id, job_b.id
    listed = {j["id"] for j in client.get("/v1/jobs", headers=_bearer(key_a)).json()}
    assert ja in listed and jb not in listed
    for path in (f"/v1/jobs/{jb}", f"/v1/jobs/{jb}/results"):
        r = client.get(path, headers=_bearer(key_a))  # exactly as for a job that does not exist
        assert r.status_code == 404 and r.json() == {"detail": f"no job {jb}"}
    assert client.post(f"/v1/jobs/{jb}/cancel", headers=_bearer(key_a)).status_code == 404
    assert client.delete(f"/v1/jobs/{jb}", headers=_bearer(key_a)).status_code == 404
    assert client.get(f"/v1/jobs/{jb}", headers=_bearer(key_b)).json()["state"] == "done"
    admin_listed = {j["id"] for j in client.get("/v1/jobs", headers=_bearer(key_admin)).json()}
    assert {ja, jb} <= admin_listed
    assert client.post(f"/v1/jobs/{ja}/cancel", headers=_bearer(key_admin)).json()["state"] == "cancelled"
    # a job submitted with a key belongs to it
    r = client.post("/v1/jobs", headers=_bearer(key_b), files=[("files", ("notes.txt", b"sidecar only"))])
    assert r.status_code == 201, r.text
    with session_scope(app_env) as db:
        assert db.get(Job, r.json()["id"]).owner_key_id == b.id
    assert client.get(f"/v1/jobs/{r.json()['id']}", headers=_bearer(key_a)).status_code == 404
    # one Idempotency-Key from two keys: two jobs, neither sees the other's
    sent = [("files", ("notes.txt", b"sidecar only"))]
    first = client.post("/v1/jobs", headers={**_bearer(key_b), "Idempotency-Key": "k-1"}, files=sent)
    again = client.post("/v1/jobs", headers={**_bearer(key_b), "Idempotency-Key": "k-1"}, files=sent)
    other = client.post("/v1/jobs", headers={**_bearer(key_a), "Idempotency-Key": "k-1"}, files=sent)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    # revoked: 401 within the key cache's TTL
    with session_scope(app_env) as db:
        keys.revoke(db, b.id)
    revoked = time.monotonic()
    while client.get(f"/v1/jobs/{jb}", headers=_bearer(key_b)).status_code != 401:
        assert time.monotonic() - revoked < KEY_CACHE_S + 1, "a revoked key is still accepted"
        time.sleep(0.05)


def test_a_verified_key_is_not_hashed_again_within_the_ttl(client, app_env):
    """Status polls cost no key hash and no key read while the key was verified less than the TTL ago; a bad
    key is hashed on every try (never remembered)."""
    with session_scope(app_env) as db:
        _, key = keys.create(db, "poller")
    with mock.patch.object(keys, "_hash", wraps=keys._hash) as hashed:
        for _ in range(20):
            assert client.get("/v1/jobs", headers=_bearer(key)).status_code == 200
        assert hashed.call_count == 1
        time.sleep(KEY_CACHE_S + 0.1)
        assert client.get("/v1/jobs", headers=_bearer(key)).status_code == 200
        assert hashed.call_count == 2
        bad = key[:-1] + ("A" if key[-1] != "A" else "B")
        for _ in range(3):
            assert client.get("/v1/jobs", headers=_bearer(bad)).status_code == 401
        assert hashed.call_count == 5


def test_key_cache_never_holds_the_key():
    cache = keys.Verified(ttl=60, size=2)
    rows = [ApiKey(id=f"{i:016x}", name=f"k{i}", admin=False) for i in range(3)]
    tokens = [f"sq_{r.id}_" + "s" * 43 for r in rows]
    for token, row in zip(tokens, rows):
        cache.put(token, row)
    assert cache.get(tokens[0]) is None and cache.get(tokens[2]).id == rows[2].id  # the oldest went first
    assert not any(token.encode() in repr(cache._entries).encode() or "s" * 43 in repr(cache._entries)
                   for token in tokens)
    assert keys.Verified(ttl=0).put(tokens[0], rows[0]).id == rows[0].id


def test_health_details_need_the_admin_key(client, app_env):
    with session_scope(app_env) as db:
        _, user = keys.create(db, "user")
        _, admin = keys.create(db, "admin", admin=True)
    for headers in ({}, _bearer(user), _bearer("sq_bogus")):
        body = client.get("/v1/health", headers=headers).json()
        assert set(body) == {"status"} and body["status"] in ("ok", "degraded")
    body = client.get("/v1/health", headers=_bearer(admin)).json()
    assert {"status", "reason", "database", "broker", "workers"} <= set(body)


def test_public_listen_address_refuses_to_start_without_a_key(tmp_path, monkeypatch):
    from api import preflight
    from api.main import create_app

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPEECHQ_API_HOST", "0.0.0.0")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        check = preflight.api_keys(get_settings())  # before any migration: no table, no key
        assert not check.ok and "0.0.0.0" in check.message and "speechq keys create" in check.fix
        with pytest.raises(RuntimeError, match="refuses to start.*speechq keys create"):
            with TestClient(create_app()):
                pass
        with session_scope(get_settings().database) as db:
            _, key = keys.create(db, "admin", admin=True)
        assert preflight.api_keys(get_settings()).ok
        with TestClient(create_app()) as c:
            assert c.get("/v1/jobs").status_code == 401
            assert c.get("/v1/jobs", headers=_bearer(key)).status_code == 200
        with session_scope(get_settings().database) as db:
            keys.revoke(db, key)
        assert not preflight.api_keys(get_settings()).ok  # revoked keys do not count
    finally:
        get_settings.cache_clear()


def _ensure_a_key(url: str) -> None:
    with session_scope(url) as db:
        if not db.query(ApiKey).count():
            keys.create(db, "any")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
