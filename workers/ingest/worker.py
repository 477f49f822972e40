"""The ingest worker's Celery entry point (`celery -A workers.ingest.worker worker -Q ingest -B`):
the app with this role's tasks, and nothing of the GPU side."""

from shared.tasks import app
from workers import lifecycle  # noqa: F401 - logging, heartbeat, children that die with the worker
from workers.ingest import archives, files, reconcile  # noqa: F401 - register this role's tasks

__all__ = ["app"]
