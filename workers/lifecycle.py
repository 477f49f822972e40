"""What every worker process does around its tasks: readable logs, a heartbeat, and children that
die with the worker (a pool child that outlived it would consume the next stack's queue with old code)."""

from __future__ import annotations

import os

from celery.signals import (after_setup_logger, beat_embedded_init, worker_init, worker_process_init, worker_ready,
                            worker_shutdown)

from shared import heartbeat, logs
from shared.config import get_settings
from shared.orphans import die_with_parent
from shared.tasks import HOUSEKEEPING, app

_heartbeat: heartbeat.Heartbeat | None = None
_worker_pid: int | None = None  # the worker's main process (pool children are forked from it)


def worker_role() -> str:
    """`gpu`, `ingest` or `housekeeping` (the reconciler's consumer, which sends no heartbeat):
    SPEECHQ_WORKER_ROLE, else what the worker consumes (-Q)."""
    role = os.environ.get("SPEECHQ_WORKER_ROLE")
    if role in (*heartbeat.ROLES, HOUSEKEEPING):
        return role
    queues = set(app.amqp.queues.consume_from)
    if "gpu" in queues:
        return "gpu"
    return HOUSEKEEPING if queues == {HOUSEKEEPING} else "ingest"


@after_setup_logger.connect
def _logging(logger, **_kwargs):
    logs.setup()


@worker_init.connect
def _remember_the_worker(**_kwargs):
    global _worker_pid
    _worker_pid = os.getpid()


@worker_process_init.connect
def _pool_child_dies_with_worker(**_kwargs):
    if os.getpid() == _worker_pid:
        return  # the solo pool (GPU, housekeeping) sends this in the worker itself: not a pool child
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
