"""The API under faults: SIGKILLed mid-upload and mid-copy under `speechq up`, and a PostgreSQL restart.

What must hold: every job in the database is one whose id its client was told (a client that lost its
answer retries with the same Idempotency-Key, as `speechq submit` does, and gets that job); no upload
folder is left without a job (the reconciler's sweep removes it after its grace period); the API
answers again once restarted; a database that restarts costs a 503 with Retry-After, never a bare 500.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from unittest import mock

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.chaos.conftest import Postgres
from tests.e2e.conftest import start_up, up_env  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.timeout(600)]
GRACE = 3.0  # SPEECHQ_UPLOAD_ORPHAN_GRACE_SECONDS in the stack under test
INTERVAL = 2.0  # SPEECHQ_RECONCILE_INTERVAL_SECONDS
SWEPT_WITHIN = GRACE + INTERVAL + 30  # the bound on an orphan's life, stated: grace + one tick + slack


def api_process(up):
    (proc,) = [p for p in up.tree() if "uvicorn" in " ".join(p.cmdline())]
    return proc


def slow_upload(url: str, key: str, outcome: list, chunks: int = 600) -> None:
    """A multipart upload that trickles in (64 KiB every 50 ms): the API is killed while it is still arriving."""
    boundary = uuid.uuid4().hex

    def body():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="slow.wav"\r\n'
               "Content-Type: audio/wav\r\n\r\n").encode()
        for _ in range(chunks):
            yield b"\0" * 65536
            time.sleep(0.05)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = httpx.post(f"{url}/v1/jobs", content=body(), timeout=120,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Idempotency-Key": key})
        outcome.append(r)
    except httpx.HTTPError as exc:
        outcome.append(exc)


def post(url: str, key: str, payload: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", files=[("files", ("big.wav", payload))], headers={"Idempotency-Key": key},
                      timeout=120)


def wait_healthy(up, timeout: float = 120) -> None:
    up.health(lambda body: True, timeout=timeout)


def test_api_killed_mid_upload_and_mid_copy(up_env, start_up, tmp_path):  # noqa: F811
    env = {**up_env, "SPEECHQ_UPLOAD_ORPHAN_GRACE_SECONDS": str(GRACE),
           "SPEECHQ_RECONCILE_INTERVAL_SECONDS": str(INTERVAL)}
    up = start_up(env)
    wait_healthy(up, timeout=300)
    url = f"http://127.0.0.1:{up.port}"
    uploads = Path(env["SPEECHQ_DATA_DIR"]).resolve() / "spool" / "uploads"
    told: dict[str, str] = {}  # idempotency key -> the job id its client was told

    # 1. Killed while the request body is still arriving: nothing has reached the spool or the database.
    outcome: list = []
    sender = threading.Thread(target=slow_upload, args=(url, "mid-upload", outcome))
    sender.start()
    time.sleep(2.0)
    api_process(up).send_signal(signal.SIGKILL)
    sender.join(60)
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome  # the client was told nothing

    # 2. Killed while the saved upload is copied to the spool (as soon as its folder appears).
    wait_healthy(up)
    before = set(p.name for p in uploads.iterdir()) if uploads.exists() else set()
    payload = os.urandom(1 << 20) * 48  # 48 MiB: the copy and its sha256 take a while
    outcome = []
    sender = threading.Thread(target=lambda: outcome.append(_try(post, url, "mid-copy", payload)))
    sender.start()
    victim = api_process(up)
    orphan = None
    deadline = time.monotonic() + 60
    while orphan is None and time.monotonic() < deadline:
        new = set(p.name for p in uploads.iterdir()) - before if uploads.exists() else set()
        if new:
            victim.send_signal(signal.SIGKILL)
            (orphan,) = new
        time.sleep(0.002)
    sender.join(60)
    assert orphan is not None, "the upload never reached the spool"
    # Killed before it answered, as a rule; on a starved machine the answer may have left first, which is fine
    # as long as a retry gets the same job.
    first = outcome[0]
    assert isinstance(first, httpx.HTTPError) or first.status_code == 201, first

    # 3. The API answers again; each client retries with its key and is told its job (a new one, or the one whose
    #    commit had gone through).
    wait_healthy(up)
    r = post(url, "mid-copy", payload)
    assert r.status_code in (200, 201), r.text
    told["mid-copy"] = r.json()["id"]
    if not isinstance(first, httpx.HTTPError):
        assert r.status_code == 200 and r.json()["id"] == first.json()["id"]
    r = httpx.post(f"{url}/v1/jobs", files=[("files", ("slow.wav", b"\0" * 4096))],
                   headers={"Idempotency-Key": "mid-upload"}, timeout=60)
    assert r.status_code == 201, r.text  # the first never stored anything
    told["mid-upload"] = r.json()["id"]
    again = post(url, "mid-copy", payload)
    assert again.status_code == 200 and again.json()["id"] == told["mid-copy"]

    # 4. Every job in the database is one whose client has its id, and each key made one job.
    db = create_engine(f"sqlite:///{Path(env['SPEECHQ_DATA_DIR']).resolve() / 'speechq.db'}")
    with db.connect() as conn:
        rows = dict(conn.execute(text("SELECT idempotency_key, id FROM jobs")).all())
    db.dispose()
    from api.submit import scoped_key  # stored as a digest of the (keyless: no) API key and the client's key

    assert rows == {scoped_key(None, key): job_id for key, job_id in told.items()}

    # 5. The killed copy's folder, if no job owns it, is swept by the reconciler within the stated bound.
    deadline = time.monotonic() + SWEPT_WITHIN
    while time.monotonic() < deadline:
        left = {p.name for p in uploads.iterdir()} - set(told.values())
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"orphaned upload folders not swept within {SWEPT_WITHIN:.0f} s: {left}\n{up.output()[-3000:]}"
    assert orphan in told.values() or not (uploads / orphan).exists()


def _try(fn, *args):
    try:
        return fn(*args)
    except httpx.HTTPError as exc:
        return exc


@pytest.fixture(scope="module")
def pg():
    cluster = Postgres()
    yield cluster
    cluster.destroy()


def test_postgres_restart_is_a_503_then_recovers(pg, tmp_path, monkeypatch):
    """In-process API on a cluster this test restarts: a 503 with Retry-After while it is down, never a 500;
    a submission made during a short restart waits for it and succeeds; pooled connections are replaced."""
    from fastapi.testclient import TestClient

    from shared import tasks
    from shared.config import get_settings
    from shared.db import database_for

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", pg.url)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SPEECHQ_DB_RETRY_SECONDS", "8")
    get_settings.cache_clear()
    from api.main import create_app

    try:
        with mock.patch.object(tasks.app, "send_task"), \
                TestClient(create_app(), raise_server_exceptions=False) as client:
            first = client.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF"))], headers={"Idempotency-Key": "a"})
            assert first.status_code == 201
            pg.stop("immediate")  # every pooled connection is now dead
            r = client.get(f"/v1/jobs/{first.json()['id']}")
            assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
            assert "database" in r.json()["reason"]
            later: list = []
            sender = threading.Thread(target=lambda: later.append(client.post(
                "/v1/jobs", files=[("files", ("b.wav", b"RIFF"))], headers={"Idempotency-Key": "b"})))
            sender.start()
            time.sleep(1.0)
            pg.start()  # within SPEECHQ_DB_RETRY_SECONDS: the waiting submission goes through
            sender.join(60)
            assert later[0].status_code == 201, later[0].text
            for _ in range(3):  # stale pooled connections are replaced (pre-ping), not handed out
                assert client.get(f"/v1/jobs/{first.json()['id']}").status_code == 200
            assert len(client.get("/v1/jobs").json()) == 2
    finally:
        database_for(pg.url).dispose()
        get_settings.cache_clear()
