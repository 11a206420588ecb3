"""Storage writes that Ctrl-C or SIGTERM must not cut in two.

A worker turns both signals into KeyboardInterrupt (:func:`hpo.search.workers._interruptible`),
raised wherever its main thread is. Raised inside some writes it does harm: between failing a dead
worker's trial and queueing its re-run it lost the re-run, and inside the write that finishes a
trial (Optuna's tell) Optuna's own clean-up fails with ``UnboundLocalError`` and a traceback
(benchmarks/chaos.py on SQLite, 8b6113a). Inside :func:`shielded`, the signal handler only notes
the signal (:func:`defer`); it is raised as the outermost shielded step ends, or, for a step that
must not raise at all (a trial's finish: the worker's loop raises at its next turn), left to
the loop.

Example::

    with shielded():                          # a signal in here waits...
        storage.set_trial_state_values(tid, TrialState.FAIL)
        queue_rerun(tid)
    # ...and is raised here, once both are written
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class _State(threading.local):
    depth = 0  # shielded steps this thread is in
    pending = False  # a signal came during one


_state = _State()


def active() -> bool:
    """Whether this thread is inside a shielded step (a signal handler asks)."""
    return _state.depth > 0


def defer() -> None:
    """Note a signal that came during a shielded step (from a signal handler that found :func:`active`)."""
    _state.pending = True


def clear() -> None:
    """Forget a noted signal (the handler that noted it is being removed)."""
    _state.pending = False


def hold() -> None:
    """Begin a shielded step that does not fit in one ``with`` block (a trial's finish, from its
    objective's end to the end of ``study.optimize``); :func:`release` ends it. A signal that came
    during it is left to the caller (the worker's loop raises at its next turn)."""
    _state.depth += 1


def release() -> None:
    """End the step :func:`hold` began."""
    _state.depth -= 1


@contextmanager
def shielded(raise_after: bool = True) -> Iterator[None]:
    """A step a signal does not interrupt; with ``raise_after``, the KeyboardInterrupt of a signal
    that came during it is raised as the outermost shielded step ends."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if raise_after and not _state.depth and _state.pending:
        _state.pending = False
        raise KeyboardInterrupt
