"""Webhooks: when a job ends, its final status is POSTed to the job's `callback_url`, signed.

Outbox: `enqueue` writes a `webhook_deliveries` row inside the transaction that ends the job (shared/endings.py),
so a delivery exists if and only if the ending committed. `send_due`, called by the periodic reconciler, POSTs
due rows and retries each with exponential backoff until the receiver answers 2xx: delivered at least once,
across restarts of anything. A receiver may see a delivery twice: `X-Speechq-Delivery` is the same on every try.

Signature (as Stripe and Standard Webhooks do it): `X-Speechq-Timestamp` is the Unix time of the attempt and
`X-Speechq-Signature` is `v1=` + hex HMAC-SHA256 of `{timestamp}.{body}` under SPEECHQ_WEBHOOK_SECRET. A
receiver recomputes it over the raw body, compares in constant time, and refuses old timestamps (`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import session_scope
from shared.schema import Archive, ArchiveState, DeliveryState, Job, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

EVENT = "job.ended"
HEADER_DELIVERY = "X-Speechq-Delivery"
HEADER_EVENT = "X-Speechq-Event"
HEADER_TIMESTAMP = "X-Speechq-Timestamp"
HEADER_SIGNATURE = "X-Speechq-Signature"
PER_TICK = 50  # deliveries one reconciler tick sends at most
SENDERS = 8  # in parallel, so that one slow receiver does not hold up the others


def _iso(value: datetime | None) -> str | None:
    """UTC, ending in Z, as the API writes timestamps (SQLite hands back naive UTC datetimes)."""
    if value is None:
        return None
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def checked_url(url: str | None, settings: Settings) -> str | None:
    """The callback URL of a submission, or ValueError saying what is wrong with it."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("callback_url must be an http:// or https:// URL with a host")
    if len(url) > 2048:
        raise ValueError("callback_url is longer than 2048 characters")
    if not settings.webhook_secret:
        raise ValueError("callback_url needs the server's SPEECHQ_WEBHOOK_SECRET, which signs deliveries: "
                         "it is unset")
    return url


def payload(job: Job, delivery_id: str, archives_failed: int = 0) -> dict:
    return {"event": EVENT, "delivery_id": delivery_id, "job": {
        "id": job.id, "name": job.name, "state": job.state.value, "error": job.error,
        "files_total": job.files_total, "files_done": job.files_done, "files_failed": job.files_failed,
        "files_skipped": job.files_skipped or 0, "archives_failed": archives_failed,
        "audio_total_s": round(job.audio_seconds_total or 0.0, 3),
        "audio_done_s": round(job.audio_seconds_done or 0.0, 3), "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at)}}


def enqueue(db: Session, job: Job) -> WebhookDelivery | None:
    """In the ending transaction: the outbox row for a job that named a callback URL."""
    if not job.callback_url:
        return None
    delivery = WebhookDelivery(job_id=job.id, url=job.callback_url, event=EVENT, body="",
                               state=DeliveryState.pending, attempts=0, next_attempt_at=utcnow())
    db.add(delivery)
    db.flush()  # its id goes into the body
    refused = db.scalar(select(func.count()).where(Archive.job_id == job.id, Archive.state == ArchiveState.failed))
    delivery.body = json.dumps(payload(job, delivery.id, refused or 0), separators=(",", ":"))
    return delivery


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, headers, body: bytes, tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """What a receiver does: the signature matches the raw body and the timestamp is recent."""
    try:
        timestamp = int(headers[HEADER_TIMESTAMP])
        signature = headers[HEADER_SIGNATURE]
    except (KeyError, TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: doubling, capped."""
    return min(settings.webhook_backoff_seconds * 2 ** max(attempts - 1, 0), settings.webhook_backoff_max_seconds)


def _claim(settings: Settings, limit: int, url: str | None) -> list[tuple[str, str, str, int]]:
    """Due deliveries, leased so that a second sender (an overlapping tick) does not take them meanwhile."""
    now = utcnow()
    lease = now + timedelta(seconds=2 * settings.webhook_timeout_seconds + 30)
    with session_scope(url) as db:
        rows = db.execute(select(WebhookDelivery.id, WebhookDelivery.url, WebhookDelivery.body,
                                 WebhookDelivery.attempts)
                          .where(WebhookDelivery.state == DeliveryState.pending, WebhookDelivery.next_attempt_at <= now)
                          .order_by(WebhookDelivery.next_attempt_at).limit(limit)
                          .with_for_update(skip_locked=True)).all()
        if rows:
            db.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_([r[0] for r in rows]))
                       .values(next_attempt_at=lease, attempts=WebhookDelivery.attempts + 1)
                       .execution_options(synchronize_session=False))
    return [(i, url, body, attempts + 1) for i, url, body, attempts in rows]


def _post(client: httpx.Client, secret: str | None, delivery_id: str, url: str, body: str
          ) -> tuple[int | None, str | None]:
    """(HTTP status, error): one attempt."""
    if not secret:
        return None, "SPEECHQ_WEBHOOK_SECRET is unset: deliveries wait until it is set"
    data = body.encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "speechq-webhooks", HEADER_EVENT: EVENT,
               HEADER_DELIVERY: delivery_id, HEADER_TIMESTAMP: str(timestamp),
               HEADER_SIGNATURE: sign(secret, timestamp, data)}
    try:
        r = client.post(url, content=data, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"{exc.__class__.__name__}: {exc}"
    if 200 <= r.status_code < 300:
        return r.status_code, None
    return r.status_code, f"HTTP {r.status_code}: {r.text[:200]}"


def send_due(settings: Settings, limit: int = PER_TICK, database_url: str | None = None) -> dict:
    """POST the deliveries that are due; record each outcome. Returns counts by outcome."""
    due = _claim(settings, limit, database_url)
    if not due:
        return {"delivered": 0, "retrying": 0, "failed": 0}
    with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client, \
            ThreadPoolExecutor(min(SENDERS, len(due)), thread_name_prefix="speechq-webhook") as pool:
        outcomes = list(pool.map(lambda d: _post(client, settings.webhook_secret, d[0], d[1], d[2]), due))
    counts = {"delivered": 0, "retrying": 0, "failed": 0}
    with session_scope(database_url) as db:
        for (delivery_id, url, _, attempts), (code, error) in zip(due, outcomes):
            values = {"last_status": code, "last_error": error}
            if error is None:
                values.update(state=DeliveryState.delivered, delivered_at=utcnow())
                counts["delivered"] += 1
                log.info("webhook %s delivered to %s (HTTP %s, attempt %d)", delivery_id, url, code, attempts)
            elif attempts >= settings.webhook_max_attempts:
                values.update(state=DeliveryState.failed)
                counts["failed"] += 1
                log.error("webhook %s to %s given up after %d attempts: %s", delivery_id, url, attempts, error)
            else:
                wait = backoff(settings, attempts)
                values.update(next_attempt_at=utcnow() + timedelta(seconds=wait))
                counts["retrying"] += 1
                log.warning("webhook %s to %s failed (attempt %d of %d): %s; next try in %.0f s", delivery_id, url,
                            attempts, settings.webhook_max_attempts, error, wait)
            db.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
                       .execution_options(synchronize_session=False))
    return counts
