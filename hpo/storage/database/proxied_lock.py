"""A lock that every process of one Optuna storage shares, made of nothing but storage calls.

Workers behind `hpo storage-proxy` (``grpc://``) reach the database only through Optuna's storage
API, so they cannot take the database's own locks (:func:`~hpo.storage.database.locks.creation_lock`).
:class:`StorageLock` needs only what every Optuna storage offers, the gRPC proxy included:

* **Acquire** is ``create_new_study(study_name="hpo-lock:NAME")``: a study name is unique, so one
  creator wins and the others get ``DuplicatedStudyError`` and poll. The winner then creates the
  lock study's first trial, number 0: the *token*. Creating trials locks the study's row, so
  exactly one trial is number 0; a creator whose trial is not number 0 does not hold the lock.
* **While held**, a daemon thread writes the token's system attribute ``hpo:lock-beat`` every
  ``stale_s / 6`` seconds; ``hpo:lock-holder`` names the holder (host, pid), and
  ``hpo:lock-holder-start`` its process's start time (Linux: ``/proc/PID/stat``).
* **A dead holder on the waiter's own machine is broken at once**: its pid is gone, or now names
  another process (a reused pid: another start time). A killed worker that held the lock while
  creating a study would otherwise hold every new command on that machine up for ``stale_s``.
* **A waiter gives up only on a live holder.** At its timeout a waiter raises only if the token
  beat within the last ``stale_s / 3``; a silent holder is waited out until it is broken (the
  timeout used to equal ``stale_s``, so waiters gave up just before they would have broken it).
  The timeout counts from the last time the lock changed hands (seen free, or held by a new
  holder): a queue that moves is waited in, only a holder that keeps it is given up on. (A waiter
  whose 120 s ran out just as another broke a killed worker's lock and took it used to give up,
  benchmarks/results/chaos-proxy-postgres.txt.)
* **Release and break are one compare-and-set**: finishing the token as COMPLETE with a random
  value of one's own. Finishing a trial locks its row and a finished trial cannot be finished
  again, so exactly one party's value is stored; that party, and only it, deletes the study.
  A waiter that sees the token (its state, its beat) unchanged for ``stale_s`` by *its own*
  clock (no clock skew between machines matters) breaks the lock that way: of two breakers one
  wins, the other finds another's value and only polls on; a holder released after being
  broken finds another's value and deletes nothing (it says so). A lock whose creator died
  before making its token is broken by a waiter that makes trial 0 itself.
* **Narrow window, accepted:** the party that won the token dies in the milliseconds between
  finishing it and deleting the study. Waiters then delete that study after ``stale_s``, by id,
  once they have re-read the same finished token. Two of them doing so at once is harmless
  where study ids are never reused (PostgreSQL, MySQL 8, MariaDB 10.2+: the second delete finds
  nothing); on SQLite behind a proxy the second could delete a newer lock with the reused id,
  and two workers would then do the locked work at once: pretraining twice (both store the same
  encoder under the same key) or creating a study twice (Optuna's ``load_if_exists`` and the
  recorded spec's check still apply).

A lock is a lease: a holder cut off from the storage for ``stale_s`` (but alive) is broken and
may overlap with the next holder; it learns so from its next beat.

Lock studies are named ``hpo-lock:...`` (:func:`is_lock_study`); hpo's listings leave them out.
optuna-dashboard lists one while it is held, which is seconds for creating a study and the
pretraining time for an encoder.

Example::

    with StorageLock(open_storage("grpc://proxy:13000"), "pretrain 1a2b", stale_s=120).held(timeout_s=3600):
        ...  # one worker at a time, on any machine
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo.errors import HpoError

Log = Callable[[str], None]
PREFIX = "hpo-lock:"
BEAT_ATTR = "hpo:lock-beat"
HOLDER_ATTR = "hpo:lock-holder"
HOLDER_START_ATTR = "hpo:lock-holder-start"
STALE_S = 120.0  # a token silent this long is a dead holder's: beats every 20 s, so 5 missed beats
MIN_POLL_S, MAX_POLL_S = 0.2, 2.0  # waiters poll faster at first: most holds (creating a study) are short


def is_lock_study(name: str) -> bool:
    """Whether ``name`` is a :class:`StorageLock`'s study, not a study of trials."""
    return name.startswith(PREFIX)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Seen:
    """What a waiter saw of the lock: it is stale when this stays equal for ``stale_s``."""

    study_id: int
    token: int | None  # trial id of trial 0; None while its creator has yet to make it
    state: TrialState | None
    values: tuple[float, ...] | None
    beat: Any
    holder: str | None
    holder_start: str | None = None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); None if it
    does not exist or this is no Linux. A pid reused by a new process has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def holder_name() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def holder_is_dead(holder: str | None, started: str | None) -> bool:
    """True only when ``holder`` (``host pid N``) is a process of this machine that is gone: no
    process with its pid, or one that started at another time. Another machine's holder is never
    known dead here: it is waited out by its silence."""
    if not holder or not started or not os.path.isdir("/proc/self"):
        return False
    host, sep, pid = holder.rpartition(" pid ")
    if not sep or host != socket.gethostname() or not pid.isdigit():
        return False
    return process_start(int(pid)) != started


class StorageLock:
    """A mutex named ``name`` over any Optuna storage (see the module doc for how, and its limits)."""

    def __init__(self, storage: optuna.storages.BaseStorage, name: str, *, stale_s: float = STALE_S,
                 where: str = "this storage", log: Log = _stderr) -> None:
        self.storage = storage
        self.name = name
        self.study_name = PREFIX + name
        self.stale_s = stale_s
        self.where = where  # shown in errors: the storage's URL, masked
        self.log = log
        self._nonce = float(secrets.randbits(52))  # exact in a float: this holder's mark on the token
        self._study_id: int | None = None
        self._token: int | None = None
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self.broken = False  # set when a beat finds the token finished by another

    @contextmanager
    def held(self, timeout_s: float) -> Iterator[None]:
        self.acquire(timeout_s)
        try:
            yield
        finally:
            self.release()

    # --- acquire ---------------------------------------------------------------------------

    def acquire(self, timeout_s: float) -> None:
        """Wait until this process holds the lock; an HpoError once one live holder has kept it
        ``timeout_s`` seconds (counted from the last time the lock changed hands)."""
        deadline = time.monotonic() + timeout_s
        seen: _Seen | None = None
        since = time.monotonic()
        beating = False  # seen to change while we watched: its holder is known alive
        delay = MIN_POLL_S
        error: Exception | None = None
        while True:
            look: _Seen | None = None
            try:
                # Look before trying to create: a refused create is an error in the database's log,
                # and a worker may wait hours for an encoder.
                look = self._look()
                if look is None and self._try_take():
                    return
                error = None
            except (KeyError, UpdateFinishedTrialError):
                pass  # the lock changed hands while we looked: look again soon
            except Exception as exc:  # the proxy or the database is away: what we saw says nothing
                error, since = exc, time.monotonic()
            now = time.monotonic()
            if error is None and (look is None or (seen is not None and look.study_id != seen.study_id)):
                deadline = now + timeout_s  # it changed hands: the queue moves, wait for the next holder afresh
            dead = look is not None and not (look.state is not None and look.state.is_finished()) \
                and holder_is_dead(look.holder, look.holder_start)
            if look is not None and look != seen and not dead:
                beating = seen is not None and seen.study_id == look.study_id
                seen, since = look, now
            elif look is not None and (dead or now - since >= self.stale_s):
                try:
                    self._break(look, now - since, dead=dead)
                except (KeyError, UpdateFinishedTrialError):
                    pass  # it changed hands meanwhile
                except Exception as exc:
                    error = exc
                seen, since, delay, beating = None, time.monotonic(), MIN_POLL_S, False
                deadline = since + timeout_s  # broken: it changes hands
                continue
            elif look is None:
                delay = MIN_POLL_S  # released just now, or changing hands: try again soon
            # A holder silent for a while is not waited on any less: it is broken at stale_s,
            # which may be after the deadline. Only a holder known alive (beating) is given up on.
            alive = error is not None or look is None or (beating and now - since < self.stale_s / 3)
            if now >= deadline and alive:
                raise HpoError(self._timeout_message(timeout_s, seen, now - since, error))
            time.sleep(min(delay * random.uniform(0.75, 1.25), max(0.0, deadline - now)))
            delay = min(delay * 2, MAX_POLL_S)

    def _try_take(self) -> bool:
        # A call failing part-way (the proxy restarting) leaves a lock study with no token, or a
        # token without beats: both go stale and are broken, ours included; no more than a delay.
        try:
            study_id = self.storage.create_new_study([StudyDirection.MINIMIZE], self.study_name)
        except DuplicatedStudyError:
            return False
        token = self.storage.create_new_trial(study_id)  # KeyError: broken and deleted while we stalled
        if self.storage.get_trial(token).number != 0:
            return False  # we stalled for stale_s between the two calls: trial 0, the lock, is a breaker's
        self.storage.set_trial_system_attr(token, HOLDER_START_ATTR, process_start(os.getpid()))
        self.storage.set_trial_system_attr(token, HOLDER_ATTR, holder_name())
        self.storage.set_trial_system_attr(token, BEAT_ATTR, time.time())
        self._study_id, self._token, self.broken = study_id, token, False
        self._stop.clear()
        self._beater = threading.Thread(target=self._beat, name=f"hpo lock beat: {self.name}", daemon=True)
        self._beater.start()
        return True

    def _look(self) -> _Seen | None:
        """The lock as it is now; None when there is no lock study (it was just released)."""
        try:
            study_id = self.storage.get_study_id_from_name(self.study_name)
        except KeyError:
            return None
        try:
            token = self.storage.get_trial_id_from_study_id_trial_number(study_id, 0)
        except KeyError:
            self.storage.get_study_name_from_id(study_id)  # KeyError if the study went meanwhile
            return _Seen(study_id, None, None, None, None, None)
        trial = self.storage.get_trial(token)
        attrs = trial.system_attrs
        return _Seen(study_id, token, trial.state, tuple(trial.values) if trial.values else None,
                     attrs.get(BEAT_ATTR), attrs.get(HOLDER_ATTR), attrs.get(HOLDER_START_ATTR))

    def _break(self, seen: _Seen, silent_s: float, dead: bool = False) -> None:
        """Finish the stale token with our mark; if ours is the mark stored, delete the lock study."""
        token = seen.token
        if token is None:  # its creator died before making trial 0: make it, and finish it at once
            token = self.storage.create_new_trial(seen.study_id)
            if self.storage.get_trial(token).number != 0:
                return  # the creator (or another breaker) made trial 0 meanwhile: watch it afresh
        elif seen.state is not None and seen.state.is_finished():
            # Its finisher died before deleting the study (see "narrow window" in the module doc).
            if self.storage.get_trial(token).values == (list(seen.values) if seen.values else None):  # same mark
                self._delete(seen.study_id)
            return
        if not self._finish(token):
            return  # another breaker, or the holder releasing, finished it first
        self._delete(seen.study_id)
        why = ("is no longer running on this machine" if dead
               else f"had been silent for {silent_s:.0f} s (dead, or cut off from the storage)")
        self.log(f"lock '{self.name}': broke it, its holder ({seen.holder or 'unknown'}) {why}")

    # --- hold and release ------------------------------------------------------------------

    def _beat(self) -> None:
        interval = self.stale_s / 6
        while not self._stop.wait(interval):
            try:
                self.storage.set_trial_system_attr(self._token, BEAT_ATTR, time.time())
            except (UpdateFinishedTrialError, KeyError):
                self.broken = True
                self.log(f"lock '{self.name}': broken by another worker after this one was silent for "
                         f"{self.stale_s:.0f} s; the work it guards may be done twice")
                return
            except Exception:
                pass  # the proxy is restarting: the next beat tries again

    def release(self) -> None:
        """Give the lock up: finish the token with our mark and delete the study, unless broken."""
        if self._token is None:
            return
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        token, study_id = self._token, self._study_id
        self._token = self._study_id = self._beater = None
        try:
            if self._finish(token):
                self._delete(study_id)
            elif not self.broken:
                self.log(f"lock '{self.name}': broken by another worker while held; the work it guards "
                         "may have been done twice")
        except Exception as exc:  # the proxy is away: the lock goes stale, and a waiter breaks it
            self.log(f"lock '{self.name}': could not release it ({type(exc).__name__}); "
                     f"others take it over after {self.stale_s:.0f} s")

    def _finish(self, token: int) -> bool:
        """Whether our mark is the one stored on ``token``: the compare-and-set of release and break."""
        try:
            self.storage.set_trial_state_values(token, TrialState.COMPLETE, [self._nonce])
        except (UpdateFinishedTrialError, KeyError):
            pass  # finished by another (or gone with its study): read whose mark it is
        try:
            return self.storage.get_trial(token).values == [self._nonce]
        except KeyError:
            return False

    def _delete(self, study_id: int | None) -> None:
        try:
            self.storage.delete_study(study_id)
        except KeyError:
            pass

    def _timeout_message(self, timeout_s: float, seen: _Seen | None, silent_s: float, error: Exception | None) -> str:
        if error is not None:
            return (f"storage {self.where}: lock '{self.name}' not had within {timeout_s:.0f} s, the storage does "
                    f"not answer ({type(error).__name__}): check that it (or `hpo storage-proxy`) runs, then retry")
        holder = seen.holder if seen is not None and seen.holder else "another worker"
        return (
            f"storage {self.where}: lock '{self.name}' not had within {timeout_s:.0f} s, {holder} holds it and is "
            f"alive (last beat {silent_s:.0f} s ago): retry when it is done, or stop that worker if it is stuck"
        )
