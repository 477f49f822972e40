"""A GPU worker's Celery entry point (`CUDA_VISIBLE_DEVICES=N celery -A workers.gpu.worker worker -Q gpu
-c 1`): the app with this role's tasks, and nothing of the CPU side."""

import os

# Before CUDA starts in this process: expandable segments keep the caching allocator from fragmenting
# across the batches' changing shapes (on the H200, 19 GB peak rather than 38-50 GB; BENCHMARKS.md).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from shared.config import get_settings  # noqa: E402 - after the allocator setting, before torch

# torch.compile's cache in the data folder rather than /tmp, which a container loses when it is recreated: a
# restart then loads the compiled layers instead of compiling them again. Inductor reads it when it compiles.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(get_settings().compile_cache))

from shared.tasks import app  # noqa: E402
from workers import lifecycle  # noqa: E402,F401 - logging, heartbeat, children that die with the worker
from workers.gpu import tasks  # noqa: E402,F401 - register this role's tasks

__all__ = ["app"]
