"""One policy for "the storage is away": how long to wait, how often to try, what to say.

A database restart (direct workers) and a proxy restart (workers behind `hpo storage-proxy`) look
the same to a worker: its storage calls fail for a while, then work again. Both paths wait the
same way, so that a study behaves alike whichever storage it has: each failed call is tried again
after 0.5, 1, 2, 4, 8, 8... seconds (with jitter, so that workers do not come back in lockstep)
until ``retry_s`` have passed; the first failure of an outage and the recovery are logged once,
however many threads wait. A write that may have committed before the reply was lost is checked
(``landed``) before it is tried again, never run blindly.

Example::

    watch = Outage("storage", retry_s=300, log=print)
    value = watch.call(lambda: storage.get_trial(7), transient=is_transient)
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable

Log = Callable[[str], None]

RETRY_S = 300.0  # how long a worker waits for its storage (database or proxy) to come back before giving up
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 8.0
NOT_LANDED = object()  # what a ``landed`` check returns when the write it checks did not happen


def quiet(message: str) -> None:
    """A log that says nothing."""
    pass


class Outage:
    """Retries calls through outages of one storage, and logs each outage once (thread-safe)."""

    def __init__(self, retry_s: float = RETRY_S, log: Log = quiet, describe: Callable[[BaseException], str] = repr,
                 sleep: Callable[[float], None] = time.sleep,
                 busy: Callable[[BaseException], bool] = lambda exc: False) -> None:
        self.retry_s = retry_s
        self.log = log
        self.describe = describe  # the error as one line for the log (no secrets: the caller scrubs)
        self.sleep = sleep
        self.busy = busy  # a transient error of a storage that is there but had to refuse (a deadlock, a lock)
        self._lock = threading.Lock()
        self._since: float | None = None
        self._was_busy = False

    def call(self, attempt: Callable[[], Any], transient: Callable[[BaseException], bool],
             landed: Callable[[], Any] | None = None) -> Any:
        """``attempt()``, tried again after errors that ``transient`` accepts, for up to ``retry_s``.

        ``landed``: for a write that may have committed before its reply was lost, called before
        each retry; what it returns (unless :data:`NOT_LANDED`) is the write's result, and no retry runs.
        """
        start = time.monotonic()
        delay = FIRST_DELAY_S
        tries = 0
        while True:
            try:
                result = NOT_LANDED
                if tries and landed is not None:
                    result = landed()
                if result is NOT_LANDED:
                    result = attempt()
            except Exception as exc:
                if not transient(exc) or time.monotonic() - start + delay > self.retry_s:
                    raise
                self.started(exc)
                self.sleep(delay * random.uniform(0.75, 1.25))
                delay = min(delay * 2, MAX_DELAY_S)
                tries += 1
                continue
            if tries:
                self.ended()
            return result

    def started(self, exc: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
            self._was_busy = self.busy(exc)
        # A deadlock is the database answering: "unreachable" sent a MariaDB user looking for an outage
        self.log(f"storage {'busy' if self._was_busy else 'unreachable'} ({self.describe(exc)}): "
                 f"retrying for up to {self.retry_s:.0f} s")

    def ended(self) -> None:
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            again = "went through on a retry" if self._was_busy else "reachable again"
            self.log(f"storage {again} after {time.monotonic() - since:.1f} s")
