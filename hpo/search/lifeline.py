"""A worker process ends when the process that started it dies, however it dies.

``hpo optimize --jobs N`` starts its workers as child processes. Killed with SIGKILL (by a user,
a supervisor, the out-of-memory killer) it cannot stop them, and they went on running trials for
a command that no longer existed. :func:`end_with_parent`, called first thing in the child, has
the kernel send it SIGTERM when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), or, where
that is not to be had, watches the parent's pid from a thread. The worker treats that SIGTERM as
it treats Ctrl-C: its running trial is marked FAIL and queued to run again, and it says why in one
line (:func:`parent_died`).

The kernel sends the signal when the *thread* that started the child ends, not the process: a
child started from another thread than the parent's main one (the library called from a thread
pool) uses the watch instead, so that thread finishing is not taken for a death.

Example::

    def child(parent_pid: int, from_main_thread: bool) -> None:
        end_with_parent(parent_pid, from_main_thread)
        try:
            run()                                    # SIGTERM raises KeyboardInterrupt in here
        except KeyboardInterrupt:
            if parent_died(parent_pid):
                print(f"hpo optimize (pid {parent_pid}) died: stopping")
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_S = 1.0  # how often the watch looks, where the kernel cannot be asked


def end_with_parent(parent: int, from_main_thread: bool = True, sig: int = signal.SIGTERM) -> None:
    """Have ``sig`` sent to this process when ``parent`` (this process's parent) dies."""
    if not (from_main_thread and _ask_kernel(sig)):
        threading.Thread(target=_watch, args=(parent, sig), name="hpo-parent-watch", daemon=True).start()
    if parent_died(parent):  # it died before we asked: nobody would ever tell us
        os.kill(os.getpid(), sig)


def parent_died(parent: int) -> bool:
    """True once this process has been handed to another parent (init, a subreaper): ``parent`` is gone."""
    return os.getppid() != parent


def _ask_kernel(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return False


def _watch(parent: int, sig: int) -> None:
    while not parent_died(parent):
        time.sleep(WATCH_S)
    os.kill(os.getpid(), sig)
