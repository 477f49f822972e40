"""/metrics for Prometheus: a collector that reads the database, the broker and the counters at scrape time.

Nothing is counted in the API process itself: every number comes from where the work is recorded, so any API
instance gives the same answer and a restart loses nothing. Metrics are listed in README.md (Metrics).
"""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from shared import counters, heartbeat
from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.schema import (Batch, BatchState, DeliveryState, File, FileState, Job, JobState, Segment, SegmentState,
                           WebhookDelivery)
from shared.tasks import HOUSEKEEPING, queue_keys

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])
QUEUES = ("ingest", "gpu", HOUSEKEEPING)
LATENCY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _seconds_between(db: Session, start, end):
    """SQL for (end - start) in seconds, on SQLite and PostgreSQL."""
    if db.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def _by_state(db: Session, column, states) -> dict[str, int]:
    counts = {s.value: 0 for s in states}
    for state, n in db.execute(select(column, func.count()).group_by(column)):
        counts[state.value if hasattr(state, "value") else str(state)] = n
    return counts


class SpeechqCollector(Collector):
    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self):
        with session_scope() as db:
            yield from self._database(db)
        yield from self._broker()

    def _database(self, db: Session):
        for name, column, states, doc in (
                ("speechq_jobs", Job.state, JobState, "Jobs by state."),
                ("speechq_files", File.state, FileState, "Files (archive members included) by state."),
                ("speechq_segments", Segment.state, SegmentState, "Speech segments by state."),
                ("speechq_batches", Batch.state, BatchState, "GPU batches by state."),
                ("speechq_webhook_deliveries", WebhookDelivery.state, DeliveryState, "Webhook deliveries by state.")):
            g = GaugeMetricFamily(name, doc, labels=["state"])
            for state, n in _by_state(db, column, states).items():
                g.add_metric([state], n)
            yield g
        done, total = db.execute(select(func.coalesce(func.sum(Job.audio_seconds_done), 0.0),
                                        func.coalesce(func.sum(Job.audio_seconds_total), 0.0))).one()
        yield GaugeMetricFamily("speechq_audio_done_seconds", "Seconds of audio in files whose results are complete "
                                "(jobs in the database).", value=float(done))
        yield GaugeMetricFamily("speechq_audio_total_seconds", "Seconds of audio in the files probed so far.",
                                value=float(total))
        latency = _seconds_between(db, Batch.created_at, Batch.updated_at)
        row = db.execute(select(func.count(), func.coalesce(func.sum(latency), 0.0),
                                *[func.sum(case((latency <= b, 1), else_=0)) for b in LATENCY_BUCKETS])
                         .where(Batch.state == BatchState.done)).one()
        count, total_s, cumulative = row[0], float(row[1]), [int(c or 0) for c in row[2:]]
        yield HistogramMetricFamily(
            "speechq_batch_latency_seconds", "From a GPU batch's creation (its segments cut and packed) to its "
            "results stored, over the done batches in the database.",
            buckets=[(str(float(b)), c) for b, c in zip(LATENCY_BUCKETS, cumulative)] + [("+Inf", count)],
            sum_value=total_s)
        busy = CounterMetricFamily("speechq_gpu_busy_seconds", "Seconds GPU workers spent running batches "
                                   "(claim to results stored), by worker, over the done batches in the database.",
                                   labels=["worker"])
        run = _seconds_between(db, Batch.started_at, Batch.updated_at)
        for worker, seconds in db.execute(select(Batch.worker, func.sum(run)).where(
                Batch.state == BatchState.done, Batch.started_at.is_not(None)).group_by(Batch.worker)):
            busy.add_metric([worker or "unknown"], float(seconds or 0.0))
        yield busy

    def _broker(self):
        depth = GaugeMetricFamily("speechq_queue_depth", "Messages waiting in each broker queue.", labels=["queue"])
        reenqueued = CounterMetricFamily("speechq_reconciler_reenqueued", "Work the reconciler sent again "
                                         "because it was stuck past SPEECHQ_TASK_DEADLINE_SECONDS.", labels=["kind"])
        workers = GaugeMetricFamily("speechq_workers_alive", "Workers whose heartbeat is current, by role.",
                                    labels=["role"])
        up = GaugeMetricFamily("speechq_broker_up", "1 if the broker answered this scrape.")
        try:
            client = redis.Redis.from_url(self.settings.broker, socket_connect_timeout=2, socket_timeout=2)
            try:
                for q in QUEUES:
                    depth.add_metric([q], sum(client.llen(k) for k in queue_keys(q)))  # every priority
            finally:
                client.close()
            counts = counters.read(self.settings, counters.REENQUEUED)
            for kind in ("archives", "files", "batches"):
                reenqueued.add_metric([kind], counts.get(kind, 0))
            alive = heartbeat.alive(self.settings)
            for role in heartbeat.ROLES:
                workers.add_metric([role], sum(1 for w in alive if w.get("role") == role))
            up.add_metric([], 1)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics: broker unreachable (%s); queue depths left out of this scrape", exc)
            up.add_metric([], 0)
            yield up
            return
        yield from (depth, reenqueued, workers, up)


def registry(settings: Settings) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SpeechqCollector(settings))
    return reg


_registry: CollectorRegistry | None = None


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics() -> Response:
    global _registry
    if _registry is None:
        _registry = registry(get_settings())
    return Response(generate_latest(_registry), media_type=CONTENT_TYPE_LATEST)
