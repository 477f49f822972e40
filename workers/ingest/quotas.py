"""How much spool a file may fill with decoded audio: its own budget, and what is left of its job's."""

from __future__ import annotations

import os
import time

from shared.config import Settings
from shared.storage import Spool


SCAN_SECONDS = 2.0
_scanned: dict[str, tuple[float, int]] = {}  # job id -> (time.monotonic() of the last scan, its bytes + decoded here)


def job_spool_bytes(spool: Spool, job_id: str) -> int:
    """Bytes of decoded channel audio the job holds on the spool: the channels whose segments are not all batched
    yet (batching.release_channels removes the others). A scan for every file cost a job of N files O(N^2) when
    the folder kept every channel until the job ended (issue 16), and it is still a scan: each process
    scans at most every SCAN_SECONDS, and in between counts the last scan plus what it decoded itself since
    (`decoded`); other processes' output of those seconds shows at the next scan."""
    at, total = _scanned.get(job_id, (float("-inf"), 0))
    if time.monotonic() - at < SCAN_SECONDS:
        return total
    if len(_scanned) > 1000:  # jobs long ended
        _scanned.clear()
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
    _scanned[job_id] = (time.monotonic(), total)
    return total


def decoded(job_id: str, nbytes: int) -> None:
    """Count a file's decoded channels towards its job until the next scan."""
    if job_id in _scanned:
        at, total = _scanned[job_id]
        _scanned[job_id] = (at, total + nbytes)


def file_allowance(spool: Spool, job_id: str, settings: Settings) -> int:
    """Bytes the next file of `job_id` may decode to: its own budget or what the job has left, the smaller.
    Workers that decode files of one job at the same moment (or within SCAN_SECONDS) may together pass the
    job's budget by at most one file budget each."""
    return max(0, min(settings.max_file_spool_bytes, settings.max_job_spool_bytes - job_spool_bytes(spool, job_id)))
