"""A worker process ends when the process that started it dies, however it dies.

``hpo optimize --jobs N`` starts its workers as child processes. Killed with SIGKILL (by a user,
a supervisor, the out-of-memory killer) it cannot stop them, and they went on running trials for
a command that no longer existed. :func:`end_with_parent`, called first thing in the child, has
the kernel signal it when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), or, where that is
not to be had, watches the parent's pid from a thread. The signal is one of its own
(:data:`LIFELINE`): its handler notes that the parent is gone (:func:`orphaned`) and sends the
process SIGTERM, which the worker treats as Ctrl-C: its running trial is marked FAIL and queued
to run again, and it says why in one line. (The process's parent id alone cannot tell: when the
parent's thread that started the child dies, the child is handed to another of the parent's
dying threads first, whose process id is the same.)

The kernel signals when the *thread* that started the child ends, not the process: a child
started from another thread than the parent's main one (the library called from a thread pool)
uses the watch instead, so that thread finishing is not taken for a death.

Example::

    def child(parent_pid: int, from_main_thread: bool) -> None:
        end_with_parent(parent_pid, from_main_thread)
        try:
            run()                                    # SIGTERM raises KeyboardInterrupt in here
        except KeyboardInterrupt:
            if orphaned():
                print(f"hpo optimize (pid {parent_pid}) died: stopping")
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

LIFELINE = getattr(signal, "SIGUSR2", None)  # what the parent's death sends; None on Windows
WATCH_S = 1.0  # how often the watch looks, where the kernel cannot be asked
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_orphaned = threading.Event()


def end_with_parent(parent: int, from_main_thread: bool = True) -> None:
    """SIGTERM this process (call from its main thread) when ``parent``, its parent, dies.

    Not on Windows, which has neither the signals nor a parent's death to be told of.
    """
    if LIFELINE is None:  # pragma: no cover - Windows
        return
    signal.signal(LIFELINE, _parent_gone)
    if not (from_main_thread and _ask_kernel(LIFELINE)):
        threading.Thread(target=_watch, args=(parent,), name="hpo-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before we asked: nobody would ever tell us
        os.kill(os.getpid(), LIFELINE)


def orphaned() -> bool:
    """Whether this process stopped because its parent died."""
    return _orphaned.is_set()


def _parent_gone(signum: int, frame: Any) -> None:
    _orphaned.set()
    os.kill(os.getpid(), signal.SIGTERM)  # the worker's own SIGTERM handling: hand the trial over


def _ask_kernel(sig: signal.Signals) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os.kill(os.getpid(), LIFELINE)  # type: ignore[arg-type]  # set: end_with_parent returned early otherwise
