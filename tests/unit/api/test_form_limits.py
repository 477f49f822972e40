"""Multipart limits (issue 14): part sizes and counts are bounded while the form is parsed, before a route runs,
and each refusal is a 4xx that names the part and the limit (Starlette answers a bare 400 of its own)."""

from unittest import mock

import pytest
from fastapi.testclient import TestClient

from api import limits
from shared import tasks
from shared.config import get_settings

MAX_FILES = 5
WAV = ("files", ("a.wav", b"RIFF0000WAVE"))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = {"SPEECHQ_DATA_DIR": str(tmp_path_factory.mktemp("data")), "REDIS_URL": "redis://127.0.0.1:1/0",
           "SPEECHQ_MAX_JOB_FILES": str(MAX_FILES)}
    with mock.patch.dict("os.environ", env), mock.patch.object(tasks.app, "send_task"):
        get_settings.cache_clear()
        from api.main import create_app

        with TestClient(create_app(), raise_server_exceptions=False) as c:
            yield c
    get_settings.cache_clear()


def _multipart(parts: bytes) -> dict:
    return {"content": parts + b"--x--\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}}


def test_a_field_larger_than_a_part_may_be_is_413_naming_it(client):
    r = client.post("/v1/jobs", files=[WAV], data={"name": "x" * (limits.FORM_MAX_PART_BYTES + 1)})
    assert r.status_code == 413, r.text
    assert "form field larger than 65536 bytes" in r.json()["detail"] and "callback_url" in r.json()["detail"]


def test_a_field_under_the_part_limit_is_checked_by_the_schema(client):
    r = client.post("/v1/jobs", files=[WAV], data={"name": "x" * 1000})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "name"]


def test_files_over_the_job_limit_are_422_naming_the_field_and_setting(client):
    r = client.post("/v1/jobs", files=[WAV] * (MAX_FILES + 1))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("files:") and "SPEECHQ_MAX_JOB_FILES" in r.json()["detail"]
    assert client.post("/v1/jobs", files=[WAV] * MAX_FILES).status_code == 201


def test_too_many_fields_are_422(client):
    r = client.post("/v1/jobs", files=[WAV], data={f"f{i}": "1" for i in range(limits.FORM_MAX_FIELDS + 1)})
    assert r.status_code == 422 and r.json()["detail"].startswith("form: more than 32 fields"), r.text


@pytest.mark.parametrize("headers", [b"X-Long: " + b"a" * 5000 + b"\r\n",
                                     b"".join(b"X-H%d: 1\r\n" % i for i in range(20))], ids=["long", "many"])
def test_part_headers_are_bounded(client, headers):
    """python-multipart refuses a part whose headers pass 4,224 bytes or 8 lines: a 400, never a 5xx, and nothing
    is stored."""
    part = b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.wav"\r\n' + headers + b"\r\nRIFF\r\n"
    r = client.post("/v1/jobs", **_multipart(part))
    assert r.status_code == 400 and r.json() == {"detail": "Invalid multipart data."}, r.text


def test_other_400s_are_left_alone(client):
    r = client.post("/v1/jobs", **_multipart(b"--x\r\nno-colon-header\r\n\r\n"))
    assert r.status_code == 400 and "SPEECHQ" not in r.text
