"""Replace a model folder safely: build the new one beside it, then swap it in with a rename.

A staging folder is a hidden sibling of the target (same filesystem, so the rename is atomic). It is
removed when anything fails before the swap, which leaves the existing folder exactly as it was. On
Linux the swap is one renameat2(RENAME_EXCHANGE); elsewhere two renames, undone if the second fails.
The old folder is deleted only after the new one is in place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def resolve_target(target: Path) -> Path:
    """The real folder behind `target` (a symlinked model folder keeps its link; its folder is replaced)."""
    return Path(os.path.realpath(target))


@contextlib.contextmanager
def staging(target: Path, purpose: str) -> Iterator[Path]:
    """An empty sibling folder of `target`; removed on exit unless it was swapped in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.{purpose}-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        yield stage
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def swap_in(stage: Path, target: Path) -> None:
    """Put the complete folder `stage` at `target`; the folder that was there is deleted afterwards."""
    stage, target = Path(stage), Path(target)
    if not os.path.lexists(target):
        os.rename(stage, target)
        log.info("installed %s", target)
        return
    if _exchange(stage, target):
        old = stage  # after the exchange the staging name holds the previous folder
    else:
        old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
        os.rename(target, old)
        try:
            os.rename(stage, target)
        except OSError:
            os.rename(old, target)
            raise
    shutil.rmtree(old, ignore_errors=True)
    if old.exists():
        log.warning("could not remove the previous folder %s: delete it by hand", old)
    log.info("replaced %s (previous folder removed)", target)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
