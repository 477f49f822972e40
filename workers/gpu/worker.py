"""A GPU worker's Celery entry point (`CUDA_VISIBLE_DEVICES=N celery -A workers.gpu.worker worker -Q gpu
-c 1`): the app with this role's tasks, and nothing of the CPU side."""

import os

# Before CUDA starts in this process: expandable segments keep the caching allocator from fragmenting
# across the batches' changing shapes (on the H200, 19 GB peak rather than 38-50 GB; BENCHMARKS.md).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from shared.tasks import app
from workers import lifecycle  # noqa: F401 - logging, heartbeat, children that die with the worker
from workers.gpu import tasks  # noqa: F401 - register this role's tasks

__all__ = ["app"]
