"""A test plugin loaded into the stack's workers (`celery worker --include tests.chaos.hooks`) by the chaos
suite only; it does nothing unless SPEECHQ_CHAOS_DIR names the folder through which the test steers it.

* Gates: while `<dir>/hold-ingest` (or `hold-gpu`) exists, an ingest task about to store a file's segments
  (of the job the file names, if it names one; a GPU batch about to store its results) writes
  `<dir>/at-ingest-<pid>` (`at-gpu-<pid>`) and waits, so the test can kill a process, the broker or the
  database at that exact point.
* Poison: a file whose bytes hold POISON kills the process that probes it (SIGKILL), as a decoder that
  crashes in native code would.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from pathlib import Path

POISON = b"SPEECHQ-CHAOS-POISON"
HOLD_SECONDS = 300.0


def gate(folder: Path, name: str, job_id: str | None = None) -> None:
    hold = folder / f"hold-{name}"
    try:
        only = hold.read_text().strip()
    except FileNotFoundError:
        return
    if only and job_id is not None and job_id != only:
        return
    (folder / f"at-{name}-{os.getpid()}").touch()
    deadline = time.monotonic() + HOLD_SECONDS
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _gated(fn, folder: Path, name: str, job=lambda *args: None):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gate(folder, name, job(*args))
        return fn(*args, **kwargs)
    return wrapper


def _poisoned(probe):
    @functools.wraps(probe)
    def wrapper(path, *args, **kwargs):
        with open(path, "rb") as f:
            if POISON in f.read(1 << 20):
                os.kill(os.getpid(), signal.SIGKILL)
        return probe(path, *args, **kwargs)
    return wrapper


def install(folder: Path) -> None:
    """Patch what this worker's role has loaded (`-A workers.ingest.worker` or `workers.gpu.worker`)."""
    files, decode, results = (sys.modules.get(f"workers.{m}") for m in ("ingest.files", "ingest.decode",
                                                                          "gpu.results"))
    if files is not None:
        files._store = _gated(files._store, folder, "ingest", lambda d, *_: d.file.job_id)
        decode.probe = _poisoned(decode.probe)
    if results is not None:
        results.write_results = _gated(results.write_results, folder, "gpu")


if os.environ.get("SPEECHQ_CHAOS_DIR"):
    install(Path(os.environ["SPEECHQ_CHAOS_DIR"]))
