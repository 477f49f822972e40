"""Webhooks against a real HTTP receiver: signed, retried with backoff until a 2xx, given up after the cap
(the outbox on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from shared import webhooks
from shared.config import Settings
from shared.db import migrate, session_scope
from shared.schema import DeliveryState, Job, JobState, WebhookDelivery, utcnow
from tests.conftest import free_port
from tests.receiver import Receiver

SECRET = "whsec-test"


@pytest.fixture(scope="module")
def db_url(database_url):
    migrate(database_url)
    return database_url


def settings(**kw) -> Settings:
    return Settings(webhook_secret=SECRET, webhook_backoff_seconds=0.05, webhook_timeout_seconds=5, **kw)


def ended_job(db_url: str, callback_url: str) -> str:
    """A job ended through the real hook, shared.endings.job_ended, in its ending transaction."""
    from shared import endings

    with session_scope(db_url) as db:
        job = Job(name="hooked", callback_url=callback_url, files_total=2, files_done=2)
        db.add(job)
        db.flush()
        job.state, job.finished_at = JobState.done, utcnow()
        endings.job_ended(db, job)
        return job.id


def deliver(db_url: str, s: Settings, rounds: int) -> list[dict]:
    out = []
    for _ in range(rounds):
        out.append(webhooks.send_due(s, database_url=db_url))
        time.sleep(0.25)  # past the backoff (0.05 s doubling)
    return out


def delivery(db_url: str, job_id: str) -> WebhookDelivery:
    with session_scope(db_url) as db:
        return db.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()


def test_retried_until_acknowledged_with_one_delivery_id_and_valid_signatures(db_url):
    receiver = Receiver([500, 503])
    try:
        job_id = ended_job(db_url, receiver.url)
        outcomes = deliver(db_url, settings(), rounds=4)
    finally:
        receiver.close()
    assert [o["retrying"] for o in outcomes[:2]] == [1, 1] and outcomes[2]["delivered"] == 1
    assert outcomes[3] == {"delivered": 0, "retrying": 0, "failed": 0}  # acknowledged: never sent again
    assert len(receiver.requests) == 3
    ids = {h[webhooks.HEADER_DELIVERY] for h, _ in receiver.requests}
    row = delivery(db_url, job_id)
    assert ids == {row.id} and row.state == DeliveryState.delivered and row.attempts == 3
    for headers, body in receiver.requests:
        assert webhooks.verify(SECRET, headers, body)
        assert not webhooks.verify("another secret", headers, body)
        assert not webhooks.verify(SECRET, headers, body.replace(b'"done"', b'"failed"'))
    sent = json.loads(receiver.requests[-1][1])
    assert sent["event"] == "job.ended" and sent["delivery_id"] == row.id
    assert sent["job"]["id"] == job_id and sent["job"]["state"] == "done" and sent["job"]["files_done"] == 2
    assert sent["job"]["archives_failed"] == 0
    assert sent["job"]["finished_at"].endswith("Z")


def test_a_receiver_down_then_up_gets_it(db_url):
    """Connection refused counts as a failed attempt; the row stays due and is delivered once it listens."""
    port = free_port()
    job_id = ended_job(db_url, f"http://127.0.0.1:{port}/hook")
    assert deliver(db_url, settings(), rounds=1)[0]["retrying"] == 1
    assert "ConnectError" in delivery(db_url, job_id).last_error
    receiver = Receiver([], port=port)
    try:
        assert sum(o["delivered"] for o in deliver(db_url, settings(), rounds=2)) == 1
    finally:
        receiver.close()
    assert delivery(db_url, job_id).state == DeliveryState.delivered and len(receiver.requests) == 1


def test_given_up_after_the_cap(db_url):
    receiver = Receiver([500] * 10)
    try:
        job_id = ended_job(db_url, receiver.url)
        outcomes = deliver(db_url, settings(webhook_max_attempts=2), rounds=3)
    finally:
        receiver.close()
    assert outcomes[1]["failed"] == 1 and len(receiver.requests) == 2
    row = delivery(db_url, job_id)
    assert row.state == DeliveryState.failed and row.last_status == 500


def test_a_job_without_callback_has_no_delivery(db_url):
    job_id = ended_job(db_url, None)
    with session_scope(db_url) as db:
        assert db.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).all() == []


def test_backoff_doubles_up_to_the_cap():
    s = Settings(webhook_backoff_seconds=10, webhook_backoff_max_seconds=60)
    assert [webhooks.backoff(s, n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


@pytest.mark.parametrize("url, error", [("ftp://example.com/x", "http"), ("https:///nohost", "host"),
                                        ("javascript:alert(1)", "http")])
def test_callback_urls_are_checked(url, error):
    with pytest.raises(ValueError, match=error):
        webhooks.checked_url(url, settings())
    with pytest.raises(ValueError, match="SPEECHQ_WEBHOOK_SECRET"):
        webhooks.checked_url("https://example.com/hook", Settings(webhook_secret=None))
    assert webhooks.checked_url(" https://example.com/hook ", settings()) == "https://example.com/hook"


def test_verify_refuses_an_old_timestamp():
    body = b'{"a":1}'
    ts = int(time.time()) - 3600
    headers = {webhooks.HEADER_TIMESTAMP: str(ts), webhooks.HEADER_SIGNATURE: webhooks.sign(SECRET, ts, body)}
    assert not webhooks.verify(SECRET, headers, body)
    assert webhooks.verify(SECRET, headers, body, now=ts + 10)
