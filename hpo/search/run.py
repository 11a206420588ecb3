"""Run a study as ``hpo optimize`` does, from Python: :func:`optimize`, the one call the CLI itself makes.

It takes a built-in study's name, a spec file or a :class:`~hpo.spec.Spec`, and does what the
command does, in this order, so that a mistake costs nothing: the spec and its overrides are
checked; the storage is opened and a study of another spec refused; the data is loaded and the
model built once and checked against its knobs (:func:`hpo.training.models.check_model`); this
machine's calibration chooses the precision and how many worker processes ``jobs="auto"`` starts
(:func:`calibration_for`, :func:`choose_jobs`); only then is the study created and run, in this
process or in worker processes, until it has ``trials`` finished trials. A bad data path, a
model whose groups do not match its rates, or an unknown key is an
:class:`~hpo.errors.HpoError` and leaves no study behind.

Example::

    outcome = optimize("imdb", trials=20, storage="sqlite:///hpo.db", overrides={"train.max_epochs": 2})
    outcome.best_trial, outcome.accuracy, outcome.params["lr_head"]
    outcome.complete, outcome.diverged, outcome.pruned, outcome.failed
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from hpo.analysis.tensorboard import require_tensorboard
from hpo.data import load_dataset
from hpo.errors import HpoError
from hpo.record import Tally
from hpo.search.study import find_study
from hpo.search.workers import WorkerOutcome, auto_jobs, run_worker, run_workers
from hpo.spec import Spec, apply_overrides, factory_name, load_spec, spec_from_dict
from hpo.storage.database.resilient import GRACE_PERIOD_S, open_storage
from hpo.storage.database.urls import display_url, resolve_storage_url
from hpo.training.calibrate import crosses_processes, ensure_calibration
from hpo.training.device import precision_note, resolve_device
from hpo.training.models import check_model

Log = Callable[[str], None]
Overrides = Mapping[str, Any] | Sequence[str]


@dataclass(frozen=True)
class OptimizeOutcome:
    """What a study has after :func:`optimize`: its best trial and its trials by what happened to them.

    ``best_trial`` is None (and ``params`` empty) while no trial has completed. ``complete``,
    ``diverged`` (pruned on a divergence verdict), ``pruned`` (pruned for underperforming) and
    ``failed`` count the study's trials, not only this call's; ``ran``: the trials run by this call.
    """

    study: str
    storage: str  # as printed: a SQLite file by its absolute path, any password masked
    best_trial: int | None
    params: dict[str, Any]
    accuracy: float | None  # best validation accuracy, the value the study maximizes
    test_accuracy: float | None  # of the best trial at its best epoch (reported, never used to select)
    best_epoch: int | None
    complete: int
    diverged: int
    pruned: int
    failed: int
    ran: int
    artifacts: str = ""  # what the study's artifacts take, and where
    tally: Tally | None = field(default=None, repr=False)

    @property
    def finished(self) -> int:
        return self.complete + self.diverged + self.pruned

    @classmethod
    def of(cls, outcome: WorkerOutcome, storage: str) -> "OptimizeOutcome":
        t, best = outcome.tally, outcome.tally.best
        return cls(
            study=outcome.study_name, storage=storage,
            best_trial=best.number if best else None, params=dict(best.params) if best else {},
            accuracy=best.accuracy if best else None, test_accuracy=best.test_accuracy if best else None,
            best_epoch=best.best_epoch if best else None,
            complete=t.complete, diverged=t.diverged, pruned=t.pruned_other, failed=t.failed,
            ran=outcome.ran, artifacts=outcome.artifacts, tally=t,
        )


def resolve_spec(study: str | os.PathLike[str] | Spec, overrides: Overrides = ()) -> Spec:
    """The spec of a built-in study's name, a ``./studies/NAME.toml``, a spec file's path or a Spec,
    with ``overrides``: ``--set`` strings (``"train.max_epochs=2"``) or a mapping of dotted keys to
    values (``{"train.max_epochs": 2}``)."""
    if isinstance(study, Spec):
        if not overrides:
            return study
        spec = spec_from_dict(apply_overrides(study.to_dict(), overrides))
        if callable(study.model.factory) and spec.model.factory == factory_name(study.model.factory):
            # to_dict wrote the function as its name; the function itself needs no import
            spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, factory=study.model.factory))
        return spec
    return load_spec(os.fspath(study), overrides)


def check_jobs(jobs: int | str) -> int | str:
    """``"auto"`` or a whole number >= 1, else an HpoError."""
    if jobs == "auto" or (isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1):
        return jobs
    raise HpoError(f"jobs = {jobs!r} is neither 'auto' nor a whole number >= 1")


def calibration_for(spec: Spec, data: Any, jobs_auto: bool, log: Log) -> tuple[str | None, int | None, bool]:
    """(precision for ``train.precision = "auto"``, worker processes for ``jobs="auto"``, oneDNN on)
    from this machine's calibration (:mod:`hpo.training.calibrate`), measured once per machine and
    model shape; (None, None, True) when both are given explicitly. ``data``: the study's data set,
    or a function that loads it (called only when calibrating)."""
    if spec.train.precision != "auto" and not jobs_auto:
        return None, None, True
    calibration = ensure_calibration(spec, data() if callable(data) else data, log=log)
    log(f"calibration: {calibration.describe()}")
    # oneDNN was measured per precision: its choice goes with the calibrated precision only
    jobs = None if calibration.busy else calibration.jobs  # the defaults measured nothing: one per core
    return calibration.precision, jobs, calibration.mkldnn or spec.train.precision != "auto"


def choose_jobs(spec: Spec, jobs: int | str, measured: int | None) -> tuple[int, str]:
    """(worker processes, why): ``jobs`` as given, or for ``"auto"`` :func:`~hpo.search.workers.auto_jobs`."""
    if jobs != "auto":
        return int(jobs), ""
    n, reason = auto_jobs(spec, measured)
    return n, f" (--jobs auto: {reason}; --jobs N to choose)"


def optimize(
    study: str | os.PathLike[str] | Spec,
    trials: int,
    storage: str | None = None,
    overrides: Overrides = (),
    jobs: int | str = "auto",
    seed: int | None = None,
    timeout: float | None = None,
    log: Log | None = None,
    grace_period: int = GRACE_PERIOD_S,
    tensorboard: str | None = None,
) -> OptimizeOutcome:
    """Run ``study`` until it has ``trials`` finished trials in ``storage``; what ``hpo optimize`` does.

    ``study``: a built-in study's name (``"imdb"``), a spec file's path or a :class:`~hpo.spec.Spec`
    (its ``model.factory`` may be a function: module-level, and importable by its module's name
    when ``jobs`` > 1). ``storage``: a database URL (default ``$HPO_STORAGE``, else
    ``sqlite:///hpo.db``). ``overrides``: ``--set`` strings or ``{dotted key: value}``. ``jobs``:
    worker processes, or ``"auto"``: what this machine's calibration measured fastest (else one per
    core) on a CPU, 1 on a GPU. ``seed``: the sampler's (worker ``i`` gets ``seed + i``).
    ``timeout``: seconds after which no trial starts. ``log``: where progress lines go (``print``;
    default: nowhere). ``tensorboard``: a folder for each trial's step telemetry as TensorBoard
    scalars. Running it again continues the same study.
    """
    say: Log = log or (lambda message: None)
    jobs = check_jobs(jobs)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise HpoError(f"trials = {trials!r}: the study's total of finished trials, a whole number >= 1")
    spec = resolve_spec(study, overrides)
    if tensorboard:
        require_tensorboard()
        tensorboard = os.path.abspath(tensorboard)
    url, origin = resolve_storage_url(storage)
    say(f"storage: {display_url(url)} ({origin})")
    # An unreachable database, or a study made with another spec, fails here, before anything is
    # measured; the study itself is created once the data has loaded and the model is checked, so
    # bad data or a model that does not fit its knobs leaves none behind.
    find_study(spec, open_storage(url))
    loaded: list[Any] = []

    def data() -> Any:
        if not loaded:
            loaded.append(load_dataset(spec.data, say))
            check_model(spec, loaded[0].vocab_size, loaded[0].num_classes)  # before timing it
        return loaded[0]

    precision, measured, onednn = calibration_for(spec, data, jobs == "auto", say)
    del loaded[:]  # the workers load their own
    note = precision_note(spec.train.precision, resolve_device(spec.train.device))
    if note:
        say(note)
    n_jobs, why = choose_jobs(spec, jobs, measured)
    if n_jobs > 1 and not crosses_processes(spec):
        if jobs != "auto":
            raise HpoError(f"jobs = {n_jobs}: worker processes cannot import the model factory "
                           f"{factory_name(spec.model.factory)!r} (a function from a notebook or a file loaded by path): "
                           "name it as 'package.module:function' on an importable path, or run with jobs=1")
        n_jobs = 1
    if n_jobs > 1:
        outcome = run_workers(spec, url, trials, n_jobs, timeout=timeout, seed=seed, log=say, grace_period=grace_period,
                              why=why, precision=precision, onednn=onednn, tensorboard=tensorboard)
    else:
        outcome = run_worker(spec, url, trials, timeout=timeout, seed=seed, log=say, grace_period=grace_period,
                             precision=precision, onednn=onednn, tensorboard=tensorboard)
    return OptimizeOutcome.of(outcome, display_url(url))
