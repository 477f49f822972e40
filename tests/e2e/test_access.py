"""Two keys and an admin against the real stack (SQLite and PostgreSQL): each key sees only its own jobs, a
deleted job leaves nothing on disk or in the database, and the logs hold neither keys nor transcripts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import String, Text, create_engine, select, text

from api import keys
from shared import samples
from shared.db import session_scope
from shared.schema import Base
from tests.conftest import need_espeak

pytestmark = pytest.mark.e2e
SPEECHQ = [sys.executable, "-m", "api.cli"]


class Caller:
    def __init__(self, api, key: str | None):
        self.key = key
        self.http = httpx.Client(base_url=api.url, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
        self.stack = api.stack

    def submit(self, path) -> str:
        r = self.http.post("/v1/jobs", files=[("files", (path.name, path.read_bytes()))])
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def wait(self, job_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.http.get(f"/v1/jobs/{job_id}").json()
            if st["state"] in ("done", "failed", "cancelled"):
                return st
            self.stack.supervise_once()
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish: {st}")


@pytest.fixture(scope="module")
def callers(api):
    """Keys made as `speechq keys create` makes them; from now on this stack is no longer keyless."""
    made = {}
    with session_scope(api.database_url) as db:
        for name, admin in (("a", False), ("b", False), ("admin", True)):
            made[name] = keys.create(db, f"team {name}", admin)[1]
    return {name: Caller(api, key) for name, key in made.items()} | {"anonymous": Caller(api, None)}


def _traces(api, job_id: str) -> list[str]:
    """Rows of any table with the job's id in a text column, and spool paths that name it."""
    engine = create_engine(api.database_url)
    found = []
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if type(column.type) in (String, Text):
                    n = conn.execute(select(text("count(*)")).select_from(table).where(column == job_id)).scalar()
                    if n:
                        found.append(f"{table.name}.{column.name}")
    engine.dispose()
    return found + [str(p) for p in api.stack.settings.spool.rglob("*") if job_id in str(p)]


def test_keys_see_only_their_own_jobs_and_delete_leaves_nothing(api, callers, tmp_path):
    need_espeak()
    a, b, admin, anonymous = callers["a"], callers["b"], callers["admin"], callers["anonymous"]
    call = samples.mono_call(tmp_path / "private.wav", [(0, "My account number is four four seven one.")])
    job = a.submit(call)
    assert a.wait(job)["state"] == "done"

    assert anonymous.http.get("/v1/jobs").status_code == 401
    assert anonymous.http.get(f"/v1/jobs/{job}").status_code == 401
    for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/results"):
        assert b.http.get(path).status_code == 404
    assert b.http.post(f"/v1/jobs/{job}/cancel").status_code == 404
    assert b.http.delete(f"/v1/jobs/{job}").status_code == 404
    assert job not in {j["id"] for j in b.http.get("/v1/jobs").json()}
    assert job in {j["id"] for j in a.http.get("/v1/jobs").json()}
    assert job in {j["id"] for j in admin.http.get("/v1/jobs").json()}
    results = admin.http.get(f"/v1/jobs/{job}/results").json()
    texts = [s["text"] for f in results["files"] for c in f["channels"] for s in c["segments"] if s["text"]]
    assert texts == [s["text"] for f in a.http.get(f"/v1/jobs/{job}/results").json()["files"]
                     for c in f["channels"] for s in c["segments"] if s["text"]]

    assert set(anonymous.http.get("/v1/health").json()) == {"status"}
    assert set(b.http.get("/v1/health").json()) == {"status"}
    assert "workers" in admin.http.get("/v1/health").json()

    # The logs (every process of the stack, at INFO) hold no key and no transcript text: neither the keys in
    # use, nor a well-formed key that is refused (its id is logged, its secret must not be).
    bogus = f"sq_{'0' * 16}_" + "Zq" * 21 + "Z"
    assert httpx.get(f"{api.url}/v1/jobs", headers={"Authorization": f"Bearer {bogus}"}).status_code == 401
    log_files = sorted(api.stack.log_dir.glob("*.log"))
    assert {"api.log", "ingest.log", "gpu-cpu.log"} <= {p.name for p in log_files}, log_files
    logs = "\n".join(p.read_text(errors="replace") for p in log_files)
    assert job in logs, "the logs are those of this stack"
    for key in (a.key, b.key, admin.key, bogus):
        assert key.split("_", 2)[2] not in logs
    words = {w["w"] for f in results["files"] for c in f["channels"] for s in c["segments"]
             for w in s.get("words") or []}
    looked_for = [t for t in set(texts) | words if len(t) >= 8]  # random weights make short noise
    assert looked_for, f"no transcript text long enough to look for: {texts}"
    for t in looked_for:
        assert t not in logs, f"transcript text {t!r} in the logs"

    assert _traces(api, job), "the check finds the job before it is deleted"
    assert a.http.delete(f"/v1/jobs/{job}").status_code == 204
    assert _traces(api, job) == []
    assert a.http.get(f"/v1/jobs/{job}").status_code == 404 and admin.http.get(f"/v1/jobs/{job}").status_code == 404
    assert a.http.delete(f"/v1/jobs/{job}").status_code == 404


def test_delete_of_a_running_job_cancels_it_first(api, callers, tmp_path):
    need_espeak()
    b = callers["b"]
    call = samples.mono_call(tmp_path / "long.wav", [(0, "Please hold the line. " * 6)])
    job = b.submit(call)
    # `speechq delete` with the key from SPEECHQ_API_KEY, while the job is still queued or running
    env = {**os.environ, "SPEECHQ_API_KEY": b.key}
    out = subprocess.run([*SPEECHQ, "delete", job, "--api", api.url], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and f"job {job} deleted" in out.stdout, out.stderr
    assert b.http.get(f"/v1/jobs/{job}").status_code == 404
    again = subprocess.run([*SPEECHQ, "delete", job, "--api", api.url], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 3 and "no job" in again.stderr
    leftovers = [t for t in _traces(api, job) if "/audio/" not in t]  # a decode under way may still write audio
    assert leftovers == []
    # the stack goes on: another job of the same key completes
    other = b.submit(samples.mono_call(tmp_path / "next.wav", [(0, "Next caller, please.")]))
    assert b.wait(other)["state"] == "done"


def test_up_refuses_a_public_address_without_a_key(up_env):
    env = {**up_env, "SPEECHQ_API_HOST": "0.0.0.0"}
    out = subprocess.run([*SPEECHQ, "up", "--no-flower"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout
    assert "API keys" in out.stdout and "no API key exists" in out.stdout
    assert "speechq keys create --name admin --admin" in out.stdout and "speechq did not start" in out.stdout
