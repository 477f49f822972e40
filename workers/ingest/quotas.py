"""How much spool a file may fill with decoded audio: its own budget, and what is left of its job's."""

from __future__ import annotations

import os

from shared.config import Settings
from shared.storage import Spool


def job_spool_bytes(spool: Spool, job_id: str) -> int:
    """Bytes of decoded channel audio the job holds on the spool now."""
    total = 0
    try:
        with os.scandir(spool.root / "audio" / job_id) as entries:
            for entry in entries:
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:  # consumed by a batch meanwhile
                    pass
    except FileNotFoundError:
        pass
    return total


def file_allowance(spool: Spool, job_id: str, settings: Settings) -> int:
    """Bytes the next file of `job_id` may decode to: its own budget or what the job has left, the smaller.
    Workers that decode files of one job at the same moment may together pass the job's budget by at most
    one file budget each."""
    return max(0, min(settings.max_file_spool_bytes, settings.max_job_spool_bytes - job_spool_bytes(spool, job_id)))
