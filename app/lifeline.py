"""One way for a child process to end with the process that started it (Linux PR_SET_PDEATHSIG).

In app, not worker: `distill up` (app/embedded.py) needs it for its children and app never imports
worker; the worker (host heartbeat, pool processes, gang ranks) imports it from here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1


def _load_prctl():
    """libc's prctl, looked up once here in the parent: a `preexec_fn` runs between fork and exec, where
    loading a library (dlopen, the import lock) can deadlock on a lock another thread held at the fork."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no prctl
        return None


_prctl = _load_prctl()


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> None:
    """Have the kernel send `sig` to this process when its parent dies (also as a `preexec_fn`, before exec);
    a no-op where prctl is missing. The kernel watches the parent *thread* that forked this process: fork
    from a thread that lives as long as the parent (the main thread). With `parent_pid` (the parent's pid,
    taken before the fork), a parent that died before this call is caught too: `sig` is sent at once."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
