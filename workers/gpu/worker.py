"""A GPU worker's Celery entry point (`CUDA_VISIBLE_DEVICES=N celery -A workers.gpu.worker worker -Q gpu
-c 1`): the app with this role's tasks, and nothing of the CPU side."""

from shared.tasks import app
from workers import lifecycle  # noqa: F401 - logging, heartbeat, children that die with the worker
from workers.gpu import tasks  # noqa: F401 - register this role's tasks

__all__ = ["app"]
