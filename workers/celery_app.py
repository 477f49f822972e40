"""The Celery application: Redis broker, at-least-once delivery (ARCHITECTURE.md, contract 3)."""

from __future__ import annotations

from celery import Celery
from celery.signals import after_setup_logger

from shared import logs
from shared.config import get_settings

settings = get_settings()

app = Celery("speechq", broker=settings.broker,
             include=["workers.ingest", "workers.archives", "workers.gpu", "workers.reconcile"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue="ingest",
    task_routes={"workers.gpu.*": {"queue": "gpu"}},
    # Redelivery after a lost worker: longer than any task (GPU tasks take seconds).
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    beat_schedule_filename=str(settings.data_dir.resolve() / "celerybeat-schedule"),  # not in the cwd
    beat_schedule={
        "reconcile": {"task": "workers.reconcile.reconcile", "schedule": settings.reconcile_interval_seconds},
    },
)


@after_setup_logger.connect
def _logging(logger, **_kwargs):
    logs.setup()
