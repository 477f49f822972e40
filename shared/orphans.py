"""No orphans: a child process asks the kernel to kill it when its parent ends (Linux prctl), so that
no worker outlives the stack that started it."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in a freshly forked child


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when the thread that started it ends (Linux prctl).

    `parent_pid`: the parent as the caller knew it; if it is already gone, exit now, since the
    kernel would never send the signal. Also called as a `preexec_fn`, between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return  # prctl is Linux's; elsewhere the supervisor's stop() is the only guard
    if _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig))) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
