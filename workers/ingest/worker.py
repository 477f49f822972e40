"""The ingest worker's Celery entry point (`celery -A workers.ingest.worker worker -Q ingest`), and the
housekeeping worker's (`-Q housekeeping -P solo -B`: the reconciler and its beat): the app with this role's
tasks, and nothing of the GPU side."""

import os

from shared.tasks import app
from workers import lifecycle  # noqa: F401 - logging, heartbeat, children that die with the worker
from workers.ingest import archives, files, reconcile  # noqa: F401 - register this role's tasks

if os.environ.get("SPEECHQ_WORKER_ROLE") == "ingest":
    # torch, funasr and the VAD code imported once in the parent, before the pool forks: a pool child is ready
    # in milliseconds rather than after their imports. funasr's import registers every model it has: about 10 s
    # when 15 children did it at once on a job's first tasks, which held back the job's first GPU batch (issue 16).
    # The parent must not start CUDA (children fork from it): torch checks for a GPU through NVML here.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import funasr  # noqa: F401

    from workers.ingest import vad  # noqa: F401

__all__ = ["app"]
