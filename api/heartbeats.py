"""What the live GPU workers say about themselves (shared.heartbeat), as the API reports it on a job.

A job that waits for a GPU worker that is not there, or that failed to load its models, says so; and a job
is flagged as random-weights before its first result when the loaded models are random.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from shared.config import Settings

log = logging.getLogger(__name__)
NO_WORKER = "no live GPU worker: results will wait until one starts"


@dataclass
class GpuWorkers:
    known: bool = False  # False: the heartbeats could not be read, so nothing is said about them
    beats: list[dict] = field(default_factory=list)

    @property
    def random_weights(self) -> bool:
        return any(m.get("random_weights") for b in self.beats if b.get("state") != "error"
                   for m in b.get("models") or [])

    @property
    def warning(self) -> str | None:
        if not self.known:
            return None
        if not self.beats:
            return NO_WORKER
        failed = [b for b in self.beats if b.get("state") == "error"]
        if len(failed) < len(self.beats):
            return None
        reasons = "; ".join(f"{b.get('hostname', '?')}: {b.get('error') or 'unknown error'}" for b in failed)
        return f"every GPU worker failed ({reasons}): results will wait until one starts"


def gpu_workers(settings: Settings) -> GpuWorkers:
    """The live GPU workers' heartbeats; unknown (not an error) where the heartbeat cannot be read."""
    try:
        from shared import heartbeat

        beats = heartbeat.alive(settings)
    except Exception as exc:  # noqa: BLE001 - a status page must not fail because a heartbeat could not be read
        log.debug("worker heartbeats unavailable: %s: %s", exc.__class__.__name__, exc)
        return GpuWorkers()
    return GpuWorkers(known=True, beats=[b for b in beats if b.get("role") == "gpu"])
