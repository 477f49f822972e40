"""The Celery application: Redis broker, at-least-once delivery (ARCHITECTURE.md, contract 3)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import after_setup_logger, beat_embedded_init, worker_process_init, worker_ready, worker_shutdown

from shared import heartbeat, logs
from shared.config import get_settings
from workers.launcher import die_with_parent

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
_heartbeat: heartbeat.Heartbeat | None = None


def worker_role() -> str:
    """`gpu` or `ingest`: SPEECHQ_WORKER_ROLE, else what the worker consumes (-Q)."""
    role = os.environ.get("SPEECHQ_WORKER_ROLE")
    if role in heartbeat.ROLES:
        return role
    return "gpu" if "gpu" in app.amqp.queues.consume_from else "ingest"


@after_setup_logger.connect
def _logging(logger, **_kwargs):
    logs.setup()


@worker_process_init.connect
def _pool_child_dies_with_worker(**_kwargs):
    # Celery's prefork initializer asks for this too; said here as well because a pool child that
    # outlives its worker would keep consuming from the next stack's broker with old code.
    die_with_parent()


@beat_embedded_init.connect
def _beat_dies_with_worker(**_kwargs):
    die_with_parent()  # `worker -B` runs beat in a child process of the worker


@worker_ready.connect
def _start_heartbeat(sender, **_kwargs):
    """The ingest worker beats from its main process; a GPU worker beats from the pool child that holds
    the models (workers.gpu)."""
    global _heartbeat
    if worker_role() == "ingest":
        _heartbeat = heartbeat.Heartbeat(get_settings(), "ingest", sender.hostname).start()


@worker_shutdown.connect
def _stop_heartbeat(**_kwargs):
    if _heartbeat is not None:
        _heartbeat.stop()
