"""Run workers on a study until the study as a whole has its budget of finished trials.

``trials`` is the study's total, not this call's and not one worker's: a study with 60
finished trials (COMPLETE or PRUNED; FAILed ones do not count and are re-run) and a budget of
100 runs 40 more, shared by however many workers, on however many machines, join it.

Before each trial a worker counts the study's finished and running trials. It stops once the
finished ones reach the budget. When the running ones would make up the rest, it waits instead
of starting another trial, checking for trials of dead workers (heartbeats older than the grace
period): those are failed and queued again, and a waiting worker runs them. Two workers that
count at the same moment may both start a trial, so a study can end with up to (workers - 1)
trials more than its budget, never fewer.

A worker interrupted by Ctrl-C or SIGTERM marks its running trial FAIL and queues a copy with the
same parameters, which resumes from the trial's last checkpoint (see :mod:`hpo.training.checkpoints`); a
second signal does not cut that hand-over short. A ``--jobs`` worker whose command dies, however
it dies, does the same (:mod:`hpo.search.lifeline`).

Example::

    outcome = run_worker(spec, "sqlite:///hpo.db", trials=20, log=print)
    outcome.tally.best.value
    run_workers(spec, "sqlite:///hpo.db", trials=20, jobs=4, log=print)   # 4 processes
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import resource_tracker
from typing import Any, Callable, Iterator, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo import record
from hpo.data import load_dataset
from hpo.errors import HpoError, WorkerError
from hpo.record import Tally
from hpo.search.callbacks import (
    Budget,
    CheckpointCleanup,
    DashboardNotes,
    FigureUpload,
    KeepBest,
    Progress,
    ShareCores,
    TensorBoardExport,
)
from hpo.search.lifeline import end_with_parent, orphaned
from hpo.search.objective import Objective
from hpo.search.study import FINISHED, find_study, open_study, tally
from hpo.spec import Spec
from hpo.storage.artifacts.keys import sweep_checkpoints
from hpo.storage.artifacts.retention import sweep_weights
from hpo.storage.artifacts.stores import artifact_store
from hpo.storage.artifacts.usage import usage
from hpo.storage.database.bounded import trial_counts
from hpo.storage.database import shield
from hpo.storage.database.resilient import GRACE_PERIOD_S, ResilientStorage, is_transient, open_storage, retry_callback
from hpo.storage.database.proxy_client import ProxiedStorage
from hpo.storage.optuna_private import BaseHeartbeat, rdb_of, storage_of, study_id
from hpo.storage.optuna_private import trial_id as trial_id_of
from hpo.training.cores import CoreShare
from hpo.training.device import available_cores, configure_threads, resolve_device
from hpo.training.models import check_model
from hpo.training.pretrain import ensure_encoder

Log = Callable[[str], None]


@dataclass(frozen=True)
class WorkerOutcome:
    study_name: str
    tally: Tally
    ran: int  # trials this worker ran
    artifacts: str = ""  # what the study's artifacts take, where


def auto_jobs(spec: Spec, measured: int | None = None) -> tuple[int, str]:
    """Worker processes for ``--jobs auto``, and why: 1 on CUDA; on CPU what the calibration
    measured fastest (``measured``; else one per core), as memory allows.

    The default model's operations are too small to keep several threads busy, so processes beat
    threads (benchmarks/jobs_throughput.py). A worker peaks at about 1.1 GiB on the full data;
    1.5 GiB each leaves room.
    """
    if resolve_device(spec.train.device).type == "cuda":
        return 1, "one process drives the GPU"
    cores = measured or available_cores()
    try:
        free_gib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        free_gib = float("inf")
    jobs = max(1, min(cores, int(free_gib // 1.5)))
    if jobs < cores:
        why = f"{free_gib:.1f} GiB free memory, ~1.5 GiB per worker"
    elif measured is not None:
        why = "the fastest measured by the calibration"
    else:
        why = f"one per core on {cores} cores"
    return jobs, why


def _finish(study: optuna.Study, budget: int, ran: int, keep_best: int) -> WorkerOutcome:
    """The outcome, after deleting checkpoints nothing can resume once the study is done, and
    weights of trials outside the top ``keep_best``."""

    final = tally(study)
    store = artifact_store(study)
    if final.finished >= budget and final.running == final.waiting == 0:
        sweep_checkpoints(study, store)
    sweep_weights(study, store, keep_best)
    return WorkerOutcome(study.study_name, final, ran, f"{usage(study, store).describe()} in {store!r}")


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    budget: int | Budget,
    timeout: float | None = None,
    log: Log = lambda m: None,
    poll_s: float = 1.0,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    progress: Progress | None = None,
) -> int:
    """Run trials of ``objective`` until ``study`` has ``budget`` finished trials; returns how many ran here.

    Works for any objective (the benchmarks use a cheap synthetic one). ``callbacks`` run after
    each trial, before the budget check and the progress line. Heartbeats and the re-run of dead
    workers' trials come from the study's storage (``open_storage(grace_period=)``).
    """
    budget = budget if isinstance(budget, Budget) else Budget(budget)
    progress = progress or Progress(budget, max_epochs=0, log=log)
    current: list[int] = []
    worker_id = f"{socket.gethostname()}:{os.getpid()}"

    finishing: list[bool] = []  # the shield of a trial's finish is held (tracked's end to study.optimize's)

    def tracked(trial: optuna.Trial) -> float:
        current[:] = [trial.number]
        try:
            if trial.user_attrs.get(record.WORKER) != worker_id:  # a re-run claimed here, or a storage that cannot stamp
                record.write_worker(trial, worker_id)  # which machine and process ran it, for the dashboard
            return objective(trial)
        except KeyboardInterrupt:
            # The re-run is queued before Optuna writes this trial's FAIL: a worker SIGKILLed in
            # between leaves the trial RUNNING, to be failed as stale (a re-run queued already is
            # not queued again), where the other order lost the re-run (chaos-proxy-postgres, trial 90).
            with shield.shielded(raise_after=False):
                _queue_rerun(study, trial)
            current.clear()
            raise
        finally:
            # Optuna's tell reads the trial, then writes its state; a signal in the read made its
            # clean-up fail with UnboundLocalError and a traceback. It waits for the loop's next turn.
            shield.hold()
            finishing.append(True)

    deadline = None if timeout is None else time.monotonic() + timeout
    waiting = False
    with _interruptible() as stopping, _stamped(study, {record.WORKER: worker_id}):
        try:
            while True:
                if stopping.is_set():  # a signal whose KeyboardInterrupt something swallowed: stop now
                    raise KeyboardInterrupt
                if budget.last is not None:  # counted just now, after the trial this worker ran
                    finished, running = budget.last.finished, budget.last.running
                    budget.last = None
                else:
                    finished, running = _counts(study)
                _share_stale_search(study, running + 1)  # the others' trials and this worker
                if finished >= budget.budget or (deadline is not None and time.monotonic() >= deadline):
                    break
                if finished + running >= budget.budget:
                    if not waiting:
                        log(f"{finished}/{budget.budget} finished, {running} running elsewhere: waiting for them to finish (or to die and be re-run)")
                        waiting = True
                    _fail_stale_trials(study)
                    time.sleep(poll_s)
                    continue
                waiting = False
                current.clear()
                _fail_stale_trials(study)  # Optuna's own, at the trial's start, then finds none
                try:
                    study.optimize(tracked, n_trials=1, callbacks=[*callbacks, budget, progress], gc_after_trial=False)
                finally:
                    while finishing:
                        finishing.pop()
                        shield.release()
        except KeyboardInterrupt:
            if current:
                _requeue(study, current[0])  # signals after the first are ignored: none cuts this short
            raise
    return progress.ran


def run_worker(
    spec: Spec,
    storage_url: str,
    trials: int,
    timeout: float | None = None,
    seed: int | None = None,
    threads: int | None = None,
    log: Log = lambda m: None,
    grace_period: int = GRACE_PERIOD_S,
    precision: str | None = None,
    onednn: bool = True,
    tensorboard: str | None = None,
    reached: bool = False,
) -> WorkerOutcome:
    """Optimize ``spec``'s study in this process until it has ``trials`` finished trials.

    ``precision``, ``onednn``: what this machine's calibration chose for ``train.precision =
    "auto"`` (oneDNN's fused LSTM on or off: process-wide, so set here, where a worker starts).
    ``tensorboard``: a folder to write each trial's step telemetry to as TensorBoard scalars.
    ``reached``: the caller opened ``storage_url`` moments ago (:func:`open_storage`'s ``reached``).
    """
    storage = open_storage(storage_url, grace_period=grace_period, log=log, reached=reached)
    existing = find_study(spec, storage)
    if existing is not None and tally(existing).finished >= trials:
        log(f"study {spec.name!r} already has {tally(existing).finished} finished trials (budget {trials}): nothing to run")
        return WorkerOutcome(spec.name, tally(existing), 0)
    # an automatic thread count is shared with the other hpo training processes on this machine
    share = CoreShare() if threads is None and not spec.train.threads else None
    n_threads = share.rebalance(log) if share else configure_threads(spec.train.threads if threads is None else threads)
    torch.backends.mkldnn.enabled = onednn
    device = resolve_device(spec.train.device)
    data = load_dataset(spec.data, log)  # bad input fails here, before the study exists
    check_model(spec, data.vocab_size, data.num_classes)  # ...and a model that does not fit its knobs
    study = open_study(spec, storage, seed)
    record.write_classes(study, data.classes, data.class_counts())
    done = tally(study).finished
    log(
        f"study {spec.name!r}: {done} finished, running {trials - done} more on {device} ({n_threads} threads); "
        f"data {len(data.train):,} train / {len(data.valid):,} valid / {len(data.test):,} test, vocab {data.vocab_size:,}"
    )
    budget = Budget(trials)
    progress = Progress(budget, spec.train.max_epochs, log)
    store = artifact_store(study)
    encoder = ensure_encoder(spec, store, storage_url, log, data=data)
    notes = DashboardNotes(log=log)
    listeners = [progress, FigureUpload(store, log), notes]
    if share:
        listeners.append(ShareCores(share, log))
    if tensorboard:
        listeners.append(TensorBoardExport(tensorboard, log))
    objective = Objective(spec, data, device, listeners=listeners, store=store,
                          encoder=encoder, precision=precision)
    callbacks = [CheckpointCleanup(objective), KeepBest(objective, spec.artifacts.keep_best), notes]
    try:
        ran = work(study, objective, budget, timeout=timeout, log=log, callbacks=callbacks, progress=progress)
    finally:
        if share:
            share.close()
    if ran:
        notes.refresh(study)  # the throttle may have skipped the last trials
    return _finish(study, trials, ran, spec.artifacts.keep_best)


def run_workers(
    spec: Spec,
    storage_url: str,
    trials: int,
    jobs: int,
    timeout: float | None = None,
    seed: int | None = None,
    log: Log = lambda m: None,
    grace_period: int = GRACE_PERIOD_S,
    why: str = "",
    precision: str | None = None,
    onednn: bool = True,
    tensorboard: str | None = None,
) -> WorkerOutcome:
    """``jobs`` worker processes on one study, the cores split between them (``why``: said with it).

    The study is created (and the spec checked) here, once, after the data has loaded (a bad
    ``data.path`` leaves no study behind); each process then joins it as any other worker would.
    Processes are spawned, not forked (a forked PyTorch or database connection is unsafe), get the
    storage URL through a pipe, never on a command line, and end when this process dies.
    Seeds differ per process: ``seed + i``, or fresh entropy without ``seed``.
    """
    storage = open_storage(storage_url, grace_period=grace_period, log=log)
    existing = find_study(spec, storage)
    if existing is None or tally(existing).finished < trials:
        data = load_dataset(spec.data, log)  # bad input fails here, before the study exists
        check_model(spec, data.vocab_size, data.num_classes)  # ...and a model that does not fit its knobs
        study = open_study(spec, storage, seed)
        record.write_classes(study, data.classes, data.class_counts())
        # pretrain here, on every core, before the workers need it
        ensure_encoder(spec, artifact_store(study), storage_url, log, data=data)
        del data  # each worker loads its own
    else:
        study = existing
    before = tally(study).finished
    threads = max(1, (spec.train.threads or available_cores()) // jobs)
    log(f"starting {jobs} worker processes with {threads} thread(s) each{why}")
    # automatic threads: each worker registers and takes its share, with any other hpo beside it
    worker_threads = threads if spec.train.threads else None
    ctx = multiprocessing.get_context("spawn")
    with _signals_held() as held:  # each worker takes them once its own handlers are in
        procs = [
            ctx.Process(
                target=_worker_process,
                args=(spec, storage_url, trials, timeout, None if seed is None else seed + i, worker_threads, grace_period, i,
                      precision, onednn, tensorboard, os.getpid(), threading.current_thread() is threading.main_thread(),
                      held),
                name=f"hpo-worker-{i}",
            )
            for i in range(jobs)
        ]
        for p in procs:
            p.start()
    try:
        with _interruptible():
            for p in procs:
                p.join()
    except KeyboardInterrupt:
        with _signals_ignored():
            for p in procs:  # Ctrl-C in a terminal reached them already; a SIGTERM to us did not
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGTERM)
            for p in procs:
                p.join()
        raise
    codes = [p.exitcode for p in procs]
    if any(code == 2 for code in codes):
        raise HpoError(f"a worker process stopped on an error (exit codes {codes}); see its message above")
    killed = [f"worker {i} by {signal.Signals(-c).name}" for i, c in enumerate(codes) if c is not None and c < 0]
    if killed or any(codes):
        t = tally(study)
        why = "; ".join(killed) or f"exit codes {codes}"
        raise WorkerError(
            f"worker processes died ({why}{'; out of memory?' if 'SIGKILL' in why else ''}); the study has "
            f"{t.finished}/{trials} finished trials and a dead worker's trial is re-run by the next worker; "
            "run the same command again to continue"
        )
    return _finish(study, trials, tally(study).finished - before, spec.artifacts.keep_best)


def _worker_process(
    spec: Spec, url: str, trials: int, timeout: float | None, seed: int | None, threads: int | None, grace_period: int, index: int,
    precision: str | None = None, onednn: bool = True, tensorboard: str | None = None, parent: int | None = None,
    from_main_thread: bool = True, held: tuple[int, ...] = (),
) -> None:
    def log(message: str) -> None:
        print(f"[worker {index}] {message}", flush=True)

    quiet_optuna_logging()
    try:
        with _interruptible():  # from here on, the parent's death (a SIGTERM) hands the trial over
            if held:  # a Ctrl-C or SIGTERM that came during the start-up's imports is raised here
                signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
            if parent is not None:
                end_with_parent(parent, from_main_thread)
            # its command opened the storage just now: a refused connection is a restart, not a wrong URL
            run_worker(spec, url, trials, timeout=timeout, seed=seed, threads=threads, log=log, grace_period=grace_period,
                       precision=precision, onednn=onednn, tensorboard=tensorboard, reached=True)
    except HpoError as exc:
        print(f"[worker {index}] error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        if orphaned():
            log(f"hpo optimize (pid {parent}) died: stopping; its running trial is queued to run again")
        else:
            log("interrupted: its running trial is queued to run again")
        sys.exit(130)


class _NotRepeated(logging.Filter):
    """Drops Optuna's log lines that repeat ours: a trial's end, and an interrupt's traceback.

    The worker prints one line per finished trial and explains Ctrl-C/SIGTERM itself; Optuna's
    "Trial 2 failed with value None." after an interrupt would only confuse. Real errors (an
    exception in a trial) still come through, with their traceback.
    """
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            return False
        if "KeyboardInterrupt" in message and "failed with parameters" in message:
            return False
        return not (message.startswith("Trial ") and " failed with value " in message)


def quiet_optuna_logging() -> None:
    """Warnings only (our progress lines replace Optuna's), without the lines that repeat ours."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NotRepeated) for f in handler.filters):
            handler.addFilter(_NotRepeated())


def _counts(study: optuna.Study) -> tuple[int, int]:
    """Finished and running trials, counted by the database (states only, no attributes)."""
    counts = trial_counts(storage_of(study), study_id(study))
    return sum(counts.get(s.name, 0) for s in FINISHED), counts.get(TrialState.RUNNING.name, 0)


@contextmanager
def _stamped(study: optuna.Study, user_attrs: dict[str, Any]) -> Iterator[None]:
    """The study's trials created in the block carry ``user_attrs`` (and their first heartbeat) from
    their creation on, and a re-run claimed in it its first heartbeat from the claim on, where the
    storage can do it (:meth:`ResilientStorage.stamping`, :meth:`ProxiedStorage.stamping`);
    elsewhere (other storages) the block does nothing and ``tracked`` writes them."""
    storage = storage_of(study)
    rdb = rdb_of(storage)
    if isinstance(rdb, ResilientStorage):
        with rdb.stamping(user_attrs):
            yield
    elif isinstance(storage, ProxiedStorage):
        with storage.stamping(user_attrs):
            yield
    else:
        yield


def _share_stale_search(study: optuna.Study, workers: int) -> None:
    rdb = rdb_of(storage_of(study))
    if isinstance(rdb, ResilientStorage):  # the proxy searches for its clients, once
        rdb.share_stale_search(workers)


def _fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's ``fail_stale_trials``, each dead worker's trial failed and its re-run queued in one
    step that Ctrl-C or SIGTERM does not cut in two (:mod:`~hpo.storage.database.shield`; the
    search itself may be cut: it writes nothing). In Optuna's, a signal between the two writes left
    the trial FAIL with no re-run: chaos.py on MariaDB (178a854), a command SIGTERMed as it failed
    a killed worker's trial."""
    storage = storage_of(study)
    if not isinstance(storage, BaseHeartbeat) or storage.get_heartbeat_interval() is None:
        return
    stale = storage._get_stale_trial_ids(study_id(study))
    rdb = rdb_of(storage)
    if isinstance(rdb, ResilientStorage):  # both writes in one transaction: a SIGKILL cannot split them either
        for trial_id in stale:
            rdb.fail_and_requeue(study, trial_id)
        return
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial_id in stale:
        with shield.shielded():
            try:
                if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
                continue
            if retry is not None:
                retry(study, copy.deepcopy(storage.get_trial(trial_id)))


def _requeue(study: optuna.Study, number: int) -> None:
    """Queue a copy of this worker's interrupted trial (now FAIL), as for a dead worker's."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number == number:
            retry_callback()(study, trial)
            return


def _queue_rerun(study: optuna.Study, trial: optuna.Trial) -> None:
    """Queue a copy of this worker's trial, still RUNNING, that a signal is stopping."""
    retry_callback()(study, storage_of(study).get_trial(trial_id_of(trial)))


class _OurInterrupt(logging.Filter):
    """Drops a log record whose exception is the KeyboardInterrupt the first signal raised, or a
    lost connection.

    SQLAlchemy's pool catches anything raised while it hands a connection back ("Exception
    during reset or similar"), logs it with a traceback and re-raises it: the interrupt still
    stops the worker, but the traceback reached the terminal (benchmarks/chaos.py on MariaDB, 2 of
    50 faults). A connection the server dropped in a restart is logged the same way, and then
    discarded by the pool (chaos.py on MariaDB at 4547dbb). Any other error is logged as before.
    """

    def __init__(self, stopping: threading.Event) -> None:
        super().__init__()
        self._stopping = stopping

    def filter(self, record: logging.LogRecord) -> bool:
        raised = record.exc_info[1] if record.exc_info else None
        if isinstance(raised, KeyboardInterrupt) and self._stopping.is_set():
            return False
        # A connection the server dropped (a restart) cannot be reset: the pool logs that with a
        # traceback and discards it; the storage's own "storage unreachable" line says it once.
        return raised is None or not is_transient(raised)


def _pool_loggers() -> list[logging.Logger]:
    """The loggers of SQLAlchemy's pools made so far (one per pool class): a logger's filters see
    only the records logged on it, not those of its children."""
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.startswith("sqlalchemy.pool")]
    return [logging.getLogger(n) for n in names]


@contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM (``docker stop``, ``kill``, a parent's death) raise KeyboardInterrupt,
    once: the first switches both signals off until the block is left, so that the hand-over that
    follows (Optuna marking the trial FAIL, the re-queue) runs whole. Ctrl-C in a terminal reaches
    the command and its ``--jobs`` workers at once, and the command then sends them SIGTERM too:
    that second signal, landing in Optuna's FAIL write, left trials RUNNING and a traceback.
    A SIGINT ignored when the block starts (a background job) stays ignored.

    The event it yields is set by that first signal: a KeyboardInterrupt raised where it cannot
    propagate must still stop the loop at its next turn. benchmarks/chaos.py caught one raised in a
    garbage-collection callback (SQLAlchemy's), which Python prints as "Exception ignored in" with
    a traceback and drops; the worker then ran trials on, deaf to every later signal since the
    first switched them off. Such a KeyboardInterrupt is now silent: the event stops the loop.
    """
    stopping = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    hook = sys.unraisablehook

    def unraisable(info: Any) -> None:
        if not (isinstance(info.exc_value, KeyboardInterrupt) and stopping.is_set()):
            hook(info)

    def interrupt(signum: int, frame: Any) -> None:
        for sig in previous:  # not SIG_IGN: a signal already pending would then print "ignored due to race condition"
            signal.signal(sig, _ignore)
        stopping.set()
        if shield.active():  # raised as the step ends, or at the loop's next turn (shield.py)
            shield.defer()
            return
        raise KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, interrupt)}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
    sys.unraisablehook = unraisable
    quiet = _OurInterrupt(stopping)
    pools = _pool_loggers()
    for logger in pools:
        logger.addFilter(quiet)
    try:
        yield stopping
    finally:
        for logger in pools:
            logger.removeFilter(quiet)
        sys.unraisablehook = hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shield.clear()


def _ignore(signum: int, frame: Any) -> None:
    pass


@contextmanager
def _signals_held() -> Iterator[tuple[int, ...]]:
    """Blocks Ctrl-C and SIGTERM in this thread while it starts worker processes; yields those it blocked.

    A spawned worker inherits the block and lifts it once its handlers are in (:func:`_worker_process`):
    a signal sent in between waits for it instead of landing in the start-up's imports, where torch's
    C++ start-up turned the KeyboardInterrupt into std::terminate and SIGABRT (benchmarks/chaos.py on
    SQLite, exit -6). Nothing is lost: the kernel keeps it pending, and this process gets its own
    when the block is left, a few milliseconds later. (CPython protects its resource tracker's
    start the same way, bpo-33613; that start unblocks both signals when it is done, so the tracker
    is started first, outside the block.)
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield ()
        return
    resource_tracker.ensure_running()
    wanted = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        yield tuple(int(sig) for sig in sorted(wanted - before))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
