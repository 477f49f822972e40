"""The ingest worker's Celery entry point (`celery -A workers.ingest.worker worker -Q ingest`), and the
housekeeping worker's (`-Q housekeeping -P solo -B`: the reconciler and its beat): the app with this role's
tasks, and nothing of the GPU side."""

import os

from shared.tasks import app
from workers import lifecycle  # noqa: F401 - logging, heartbeat, children that die with the worker
from workers.ingest import archives, files, reconcile  # noqa: F401 - register this role's tasks

if os.environ.get("SPEECHQ_WORKER_ROLE") == "ingest":
    # torch and the VAD code imported once in the parent, before the pool forks: a pool child that replaces
    # one that died is ready in milliseconds rather than after torch's import (seconds to a minute).
    from workers.ingest import vad  # noqa: F401

__all__ = ["app"]
