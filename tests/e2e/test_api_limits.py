"""The real API server (uvicorn, api.main:app) against slow clients and a schema fuzzer (issue 14).

- A body that trickles in slower than SPEECHQ_BODY_MIN_BYTES_PER_SECOND is cut off with 408 once
  SPEECHQ_BODY_GRACE_SECONDS have passed, and the connection is closed; 40 such clients at once do not stop
  a normal request from being answered.
- A request head (request line and headers) that is not complete SPEECHQ_HEADER_TIMEOUT_SECONDS after the
  connection opened, or after its first byte, gets 408 and the connection is closed: clients that dribble
  header bytes, or connect and send nothing, hold no connection for longer.
- schemathesis generates requests from the OpenAPI schema, with bounded examples: no answer is a 5xx.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api import launcher
from shared.orphans import die_with_parent
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
GRACE_S = 2.0
HEAD_S = 2.0
MIN_RATE = 20_000


@pytest.fixture(scope="module")
def server(redis_url, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    imports = tmp_path_factory.mktemp("imports")
    (imports / "call.wav").write_bytes(b"RIFF" + b"\0" * 100)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(SPEECHQ_DATA_DIR=str(data), REDIS_URL=redis_url.rsplit("/", 1)[0] + "/3",
               SPEECHQ_IMPORT_ROOT=str(imports), SPEECHQ_BODY_GRACE_SECONDS=str(GRACE_S),
               SPEECHQ_BODY_MIN_BYTES_PER_SECOND=str(MIN_RATE), SPEECHQ_MAX_UPLOAD_BYTES=str(1 << 20),
               SPEECHQ_MAX_JOB_FILES="20", SPEECHQ_HEADER_TIMEOUT_SECONDS=str(HEAD_S))
    log = open(data / "api.log", "w")
    pid = os.getpid()
    proc = subprocess.Popen(launcher.api("127.0.0.1", port).argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: die_with_parent(pid))  # as `speechq up` starts it
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/openapi.json", timeout=2)
            break
        except httpx.HTTPError:
            assert proc.poll() is None, (data / "api.log").read_text()
            time.sleep(0.3)
    yield url, port, data / "api.log"
    proc.terminate()
    proc.wait(30)
    log.close()


def _slow_client(port: int, head: bytes, total: int, out: list, index: int) -> None:
    """Send the request head, then 200 bytes every 0.5 s (400 bytes/s) of a `total`-byte body; record
    (status line, seconds until the answer, whether the server closed the connection)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.replace(b"{N}", str(total).encode()))
        s.settimeout(0.5)
        answer, sent = b"", 0
        while sent < total and not answer:
            try:
                s.sendall(b" " * 200)
                sent += 200
            except OSError:  # closed by the server
                break
            try:
                answer += s.recv(65536)
            except socket.timeout:
                pass
        s.settimeout(10)
        closed = False
        try:
            while chunk := s.recv(65536):
                answer += chunk
            closed = True
        except (socket.timeout, OSError):
            closed = isinstance(sys.exc_info()[1], ConnectionResetError)
        out[index] = (answer.split(b"\r\n", 1)[0].decode(), time.monotonic() - start, closed, answer)


JSON_HEAD = (b"POST /v1/jobs/paths HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: {N}\r\n\r\n")
MULTIPART_HEAD = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  b"Content-Length: {N}\r\n\r\n--x\r\nContent-Disposition: form-data; name=\"files\"; "
                  b"filename=\"slow.wav\"\r\n\r\n")


@pytest.mark.parametrize("head", [JSON_HEAD, MULTIPART_HEAD], ids=["json", "multipart"])
def test_slow_bodies_are_cut_off_and_others_are_served(server, head):
    url, port, log = server
    clients = 40
    out: list = [None] * clients
    threads = [threading.Thread(target=_slow_client, args=(port, head, 500_000, out, i)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    r = httpx.get(f"{url}/v1/jobs", timeout=10)  # the server still answers others meanwhile
    assert r.status_code == 200 and time.monotonic() - t0 < 2
    for t in threads:
        t.join(60)
    statuses = [o[0] for o in out]
    assert statuses == ["HTTP/1.1 408 Request Timeout"] * clients, out[:3]
    assert all(o[1] < GRACE_S + 4 for o in out), [round(o[1], 1) for o in out]  # 400 B/s: cut at grace + ~0
    assert all(o[2] for o in out), "the server keeps a cut-off connection open"
    assert b"SPEECHQ_BODY_MIN_BYTES_PER_SECOND" in out[0][3]


def test_a_body_at_a_fair_rate_is_not_cut_off(server):
    """A body that takes longer than the grace period but keeps the stated rate gets through."""
    url, _port, _log = server
    body = b'{"paths": ["call.wav"],' + b" " * 240_000 + b'"name": "fair"}'

    def trickle():  # 15 KB every 0.2 s: about 75 KB/s for 3.2 s, longer than the grace period
        for i in range(0, len(body), 15_000):
            yield body[i:i + 15_000]
            time.sleep(0.2)

    start = time.monotonic()
    r = httpx.post(f"{url}/v1/jobs/paths", content=trickle(), headers={"content-type": "application/json"},
                   timeout=30)
    assert time.monotonic() - start > GRACE_S
    assert r.status_code == 201, r.text


def _dribbler(port: int, pause: float, out: list, index: int) -> None:
    """Send a request head one byte every `pause` s (an empty `pause`: send nothing at all) until the server
    closes; record (seconds until closed, what the server sent)."""
    head = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 200 + b"\r\n\r\n"
    start, answer = time.monotonic(), b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.settimeout(pause or 30)
        for i in range(len(head) if pause else 0):
            try:
                s.sendall(head[i:i + 1])
                chunk = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:  # reset by the server
                break
            answer += chunk
            if not chunk:  # closed by the server
                break
        else:
            try:
                while chunk := s.recv(4096):
                    answer += chunk
            except OSError:
                pass
    out[index] = (time.monotonic() - start, answer)


def test_slow_request_heads_are_cut_off_and_others_are_served(server):
    """20 clients send their headers at 3 bytes/s (their 250-byte head would take 80 s) and 10 open a
    connection and send nothing: each connection is answered 408 and closed within HEAD_S (+ 1.5 s for this
    busy machine), and a normal request is served meanwhile."""
    url, port, log = server
    out: list = [None] * 30
    threads = [threading.Thread(target=_dribbler, args=(port, 0.3 if i < 20 else 0, out, i)) for i in range(30)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert httpx.get(f"{url}/v1/jobs", timeout=10).status_code == 200
    assert time.monotonic() - t0 < HEAD_S
    for t in threads:
        t.join(60)
    seconds = [round(o[0], 1) for o in out]
    assert all(HEAD_S - 0.2 < s < HEAD_S + 1.5 for s in seconds), seconds
    assert all(o[1].startswith(b"HTTP/1.1 408 ") for o in out), [o[1][:40] for o in out]
    assert "SPEECHQ_HEADER_TIMEOUT_SECONDS" in log.read_text()


def test_a_head_in_time_on_a_kept_alive_connection_is_served(server):
    """The deadline is per request: a connection reused for several requests, each head sent in well under
    HEAD_S with pauses between the requests shorter than uvicorn's keep-alive, is never cut."""
    url, _port, _log = server
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/v1/jobs").status_code == 200
            time.sleep(HEAD_S * 0.75)  # 4.5 s in all on one connection: longer than HEAD_S


EXAMPLES = 25  # per operation: about 12 operations, under a minute in all


def test_schemathesis_finds_no_server_error(server):
    """Every operation of the OpenAPI schema, EXAMPLES generated requests each (hypothesis, derandomised so CI
    runs are repeatable): no 5xx. Run operation by operation (schemathesis' pytest plugin does not load on this
    pytest)."""
    url, _port, log = server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    tried, errors = {}, []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            try:
                response = case.call(timeout=30)
            except (ValueError, UnicodeError):  # the client refuses to send it (e.g. a NUL in a header)
                return
            tried[operation.label] = tried.get(operation.label, 0) + 1
            if response.status_code >= 500:
                errors.append((operation.label, response.status_code, case.as_curl_command(), response.text[:300]))

        run()
    print(f"schemathesis: {sum(tried.values())} requests over {len(tried)} operations, {len(errors)} server errors")
    assert len(tried) >= 8 and sum(tried.values()) >= 8 * EXAMPLES // 2, tried
    assert not errors, (errors[:5], log.read_text()[-3000:])


def test_jobs_in_flight_per_key_over_real_http(server):
    """Last in this module: it creates the server's first key, which ends keyless mode. Nothing runs the jobs
    (no workers), so they stay queued: the key may have SPEECHQ_MAX_JOBS_IN_FLIGHT of them (default 100), the
    next is a 429 with Retry-After on both routes, a retry of an existing job still gets its job, and the
    limit is per key."""
    from api import keys
    from shared.config import Settings
    from shared.db import session_scope

    url, _port, log = server
    with session_scope(f"sqlite:///{log.parent / 'speechq.db'}") as db:
        key_a, key_b = keys.create(db, "in flight a")[1], keys.create(db, "in flight b")[1]
    limit = Settings.model_fields["max_jobs_in_flight"].default
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key_a}"}) as a:
        for i in range(limit):
            r = a.post("/v1/jobs/paths", json={"paths": ["call.wav"]}, headers={"Idempotency-Key": f"k{i}"})
            assert r.status_code == 201, (i, r.text)
        for r in (a.post("/v1/jobs/paths", json={"paths": ["call.wav"]}),
                  a.post("/v1/jobs", files=[("files", ("a.wav", b"RIFF0000WAVE"))])):
            assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, r.text
            assert f"limit of jobs in flight is {limit} (SPEECHQ_MAX_JOBS_IN_FLIGHT)" in r.json()["detail"]
        again = a.post("/v1/jobs/paths", json={"paths": ["call.wav"]}, headers={"Idempotency-Key": "k0"})
        assert again.status_code == 200
    b = httpx.post(f"{url}/v1/jobs/paths", json={"paths": ["call.wav"]}, timeout=30,
                   headers={"Authorization": f"Bearer {key_b}"})
    assert b.status_code == 201, b.text
