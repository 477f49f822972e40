"""/docs renders in a real browser with no internet: Swagger UI's files come from the API itself, not a CDN."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Offline and quiet: no network but the API's, no first-run pages, no updates.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--virtual-time-budget=20000"]
OPERATIONS = {("post", "/v1/jobs"), ("get", "/v1/jobs"), ("post", "/v1/jobs/paths"), ("get", "/v1/jobs/{job_id}"),
              ("get", "/v1/jobs/{job_id}/results"), ("post", "/v1/jobs/{job_id}/cancel"), ("get", "/v1/health")}


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which(CHROMIUM)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is not installed; CI must test /docs in a browser")
        pytest.skip(f"{CHROMIUM} is not installed (Debian: apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    """The API alone (uvicorn, SQLite): the docs need no workers or broker."""
    data = tmp_path_factory.mktemp("docs-data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SPEECHQ_DATABASE_URL")}
    env.update(SPEECHQ_DATA_DIR=str(data), REDIS_URL="redis://127.0.0.1:1/0")
    log = open(data / "api.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the API did not start: {(data / 'api.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _browse(chromium: str, profile, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    return out


def test_docs_page_renders_every_operation(api_url, chromium, tmp_path):
    dom = _browse(chromium, tmp_path / "profile-dom", "--dump-dom", f"{api_url}/docs").stdout.decode()
    shown = {(m.group(1), m.group(2)) for m in re.finditer(
        r'opblock-summary-method">(\w+)</span>(?:(?!opblock-summary-method).)*?data-path="([^"]+)"', dom, re.S)}
    assert {(method.upper(), path) for method, path in OPERATIONS} <= shown, dom[-3000:]
    assert "Failed to load API definition" not in dom and "speechq" in dom

    png = tmp_path / "docs.png"
    _browse(chromium, tmp_path / "profile-shot", "--window-size=1280,2000", f"--screenshot={png}", f"{api_url}/docs")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 2000)
    # A page with only a title compresses to about 15 KB; the coloured operation blocks and text take far more.
    assert png.stat().st_size > 50_000, f"{png} looks blank"


def test_redoc_page_renders_offline(api_url, chromium, tmp_path):
    dom = _browse(chromium, tmp_path / "profile", "--dump-dom", f"{api_url}/redoc").stdout.decode()
    assert "/v1/jobs/{job_id}/results" in dom and "Results per file, channel and segment" in dom
