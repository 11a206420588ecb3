"""Trial writes that are atomic on every backend and recognisable after a lost reply.

Optuna's RDBStorage changes a trial's state by reading it (``SELECT ... FOR UPDATE``), checking it,
then writing. On SQLite the ``FOR UPDATE`` is dropped and the driver opens the transaction only at
the first write, so two workers can both read WAITING and both claim the trial: both run it, and
the second to finish dies with "Cannot tell a PRUNED trial". Here a state change is one
conditional ``UPDATE trials ... WHERE state IN (...)``: the database decides which writer wins, on
SQLite as on PostgreSQL and MySQL.

Each state change and each new trial also writes a token of its own (the trial system attribute
``hpo:write``) in the same transaction. When the connection breaks while a commit is in flight the
writer cannot know whether it landed; reading the token back tells, so a retry never claims a
trial twice, never leaves one claimed by nobody, and never creates a trial twice
(:class:`~hpo.storage.database.resilient.ResilientStorage` does that).

It writes through RDBStorage's own steps without their commit (reached through
:mod:`hpo.storage.optuna_private`): Optuna's public calls commit on their own, and the token must go
in the same transaction as the write it stands for.

Example::

    token = new_token()
    set_state(storage, trial_id, TrialState.RUNNING, None, token)   # True: ours; False: another's
    last_write(storage, trial_id) == token                          # after a lost reply: did it land?
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from hpo.storage.optuna_private import (
    new_trial_in,
    rdb_models,
    rdb_session,
    set_system_attr_in,
    set_trial_id,
    set_value_in,
)

models = rdb_models()

WRITE_ATTR = "hpo:write"  # the token of the last state change (or the creation) of a trial


@dataclass(frozen=True)
class Stamp:
    """What each trial a worker creates for itself carries from its first transaction on: user
    attributes (the worker's name) and, when the worker runs Optuna's heartbeat thread, a first
    heartbeat (the thread's own first beat then has nothing to add: :meth:`ResilientStorage.record_heartbeat`)."""

    user_attrs: dict[str, Any] = field(default_factory=dict)
    heartbeat: bool = False


class _Lost(Exception):
    """The conditional update matched no row: another writer changed the state first."""


def new_token() -> str:
    return uuid.uuid4().hex


def set_state(storage: RDBStorage, trial_id: int, state: TrialState, values: Sequence[float] | None,
              token: str | None, heartbeat: bool = False) -> bool:
    """RDBStorage.set_trial_state_values, decided by the database: True when this call made the change.

    A claim (``RUNNING``) succeeds only from WAITING (False: another worker has it); a finish only
    from RUNNING or WAITING (``UpdateFinishedTrialError``: finished already, by someone else).
    ``token=None`` writes no token (:func:`needs_token`). ``heartbeat``: a claim that lands also
    beats, in its transaction (a worker killed before its heartbeat thread's first beat left the
    re-run RUNNING with no heartbeat, which no stale-trial search looks at).
    """
    allowed = (TrialState.WAITING,) if state == TrialState.RUNNING else (TrialState.RUNNING, TrialState.WAITING)
    changes: dict[str, object] = {"state": state}
    if state == TrialState.RUNNING:
        changes["datetime_start"] = datetime.now()
    if state.is_finished():
        changes["datetime_complete"] = datetime.now()
    try:
        with rdb_session(storage) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            storage.check_trial_is_updatable(trial_id, trial.state)
            for objective, value in enumerate(values or ()):
                set_value_in(storage, session, trial, objective, value)
            if token is not None:
                set_system_attr_in(storage, session, trial_id, WRITE_ATTR, token)
            moved = session.execute(
                sa.update(models.TrialModel)
                .where(models.TrialModel.trial_id == trial_id, models.TrialModel.state.in_(allowed))
                .values(**changes)
                .execution_options(synchronize_session=False)
            ).rowcount
            if moved != 1:
                raise _Lost  # rolls back the values and the token with it
            if heartbeat and state == TrialState.RUNNING:
                _beat_in(session, trial_id)  # after the update: a losing claimer never touches the row
    except _Lost:
        storage.check_trial_is_updatable(trial_id, state_of(storage, trial_id))  # finished: raises
        return False
    return True


def _beat_in(session: Any, trial_id: int) -> None:
    """The trial's heartbeat now, in ``session``'s transaction, by the database's clock (as Optuna's
    ``record_heartbeat``: a row made, or its time moved on)."""
    beat = models.TrialHeartbeatModel
    moved = session.execute(
        sa.update(beat).where(beat.trial_id == trial_id).values(heartbeat=sa.func.current_timestamp())
        .execution_options(synchronize_session=False)
    ).rowcount
    if not moved:
        session.add(beat(trial_id=trial_id))


def lock_study_row(session: Any, study_id: int) -> None:
    """The study's row locked until the transaction ends, to number a new trial (KeyError: no such study).

    Optuna's ``SELECT ... FOR UPDATE`` also blocks every insert that references the study (a
    foreign-key check takes ``FOR KEY SHARE`` on its row): each trial's dashboard note, a row of
    the study's attributes, queued behind every trial creation. With 32 workers a note's insert
    waited 202 ms per trial, 4 ms with 8 (benchmarks/storage_cost.py). PostgreSQL's ``FOR NO KEY
    UPDATE`` serialises the creators as before (it conflicts with itself and with Optuna's
    ``FOR UPDATE``) and lets those inserts through. MySQL and MariaDB have no such mode: ``FOR UPDATE``.
    """
    study = models.StudyModel
    found = session.execute(
        sa.select(study.study_id).where(study.study_id == study_id).with_for_update(key_share=True)
    ).scalar()
    if found is None:
        raise KeyError(models.NOT_FOUND_MSG)  # as Optuna's find_or_raise_by_id


def fail_and_requeue(storage: RDBStorage, dead: FrozenTrial, rerun: FrozenTrial | None, token: str) -> bool:
    """A dead worker's RUNNING trial failed and, with ``rerun`` (a WAITING copy), its re-run queued,
    in one transaction: True when this call failed it (False: finished meanwhile, nothing written).

    As two transactions (Optuna's ``fail_stale_trials``, then its retry callback), a process killed
    between them left the trial FAIL with no re-run (chaos.py through the proxy, 1a46669: the proxy,
    SIGKILLed in its reaper's round, lost trial 73's re-run). ``token`` marks the failed trial, so a
    retry after a lost reply can tell whether this landed (:func:`last_write`).
    """
    try:
        with rdb_session(storage) as session:
            study_id = models.TrialModel.find_or_raise_by_id(dead._trial_id, session).study_id
            if rerun is not None:  # the study's row lock first, as create_trial takes it: it numbers the re-run
                lock_study_row(session, study_id)
            set_system_attr_in(storage, session, dead._trial_id, WRITE_ATTR, token)  # while it may still change
            moved = session.execute(
                sa.update(models.TrialModel)
                .where(models.TrialModel.trial_id == dead._trial_id, models.TrialModel.state == TrialState.RUNNING)
                .values(state=TrialState.FAIL, datetime_complete=datetime.now())
                .execution_options(synchronize_session=False)
            ).rowcount
            if moved != 1:
                raise _Lost  # rolls the token back
            if rerun is not None:
                new_trial_in(storage, study_id, _without_token(rerun), session)
    except (_Lost, UpdateFinishedTrialError):  # finished meanwhile (the token's write checks first)
        return False
    return True


def needs_token(state: TrialState) -> bool:
    """Whether a change to ``state`` needs a token to be recognised after a lost reply.

    A claim (RUNNING) does: another worker may claim the same WAITING trial, and only the token tells
    whose claim landed. So do FAIL (the stale-trial check of any worker fails any silent trial) and
    WAITING. COMPLETE and PRUNED do not: only the worker running a trial finishes it that way, so
    finding the trial in that state after a lost reply means this write landed (:func:`state_of`).
    The token's write and its read-back were 2 of the ~130 statements of a trial.
    """
    return state not in (TrialState.COMPLETE, TrialState.PRUNED)


def create_trial(storage: RDBStorage, study_id: int, template: FrozenTrial | None, token: str,
                 stamp: Stamp | None = None) -> FrozenTrial:
    """RDBStorage._create_new_trial, one attempt (Optuna's own retries after a lost reply would
    create the trial twice), carrying ``token``; a trial made from no template (``study.ask()``)
    also carries ``stamp``'s user attributes and, with ``stamp.heartbeat``, its first heartbeat.

    The token, the stamp and the heartbeat are inserted as rows of the new trial, in its
    transaction: Optuna's attribute writes each re-read the trial to check that it may change, and
    the worker's name and the first beat were transactions of their own (benchmarks/storage_cost.py:
    8 of the 14 statements a trial cost hpo over plain Optuna)."""
    stamp = stamp if template is None else None  # a re-run's template brings its own attributes
    template = _without_token(template)
    with rdb_session(storage) as session:
        lock_study_row(session, study_id)  # serialises the numbering, as Optuna's lock does
        trial = new_trial_in(storage, study_id, template, session)
        rows: list[object] = [models.TrialSystemAttributeModel(trial_id=trial.trial_id, key=WRITE_ATTR,
                                                               value_json=json.dumps(token))]
        if stamp is not None:
            rows += [models.TrialUserAttributeModel(trial_id=trial.trial_id, key=k, value_json=json.dumps(v))
                     for k, v in stamp.user_attrs.items()]
            if stamp.heartbeat:
                rows.append(models.TrialHeartbeatModel(trial_id=trial.trial_id))  # the server's clock, as Optuna's beats
        session.add_all(rows)
        frozen = copy.deepcopy(template) if template is not None else _running_now()
        frozen.number = trial.number
        frozen.datetime_start = trial.datetime_start
        frozen.system_attrs = {**frozen.system_attrs, WRITE_ATTR: token}
        if stamp is not None:
            frozen.user_attrs = {**frozen.user_attrs, **stamp.user_attrs}
        set_trial_id(frozen, trial.trial_id)
    return frozen


def created_trial(storage: RDBStorage, study_id: int, token: str) -> int | None:
    """The id of the trial of ``study_id`` that :func:`create_trial` made with ``token``, if it landed."""
    attr = models.TrialSystemAttributeModel
    with rdb_session(storage) as session:
        row = (
            session.query(attr.trial_id)
            .join(models.TrialModel, models.TrialModel.trial_id == attr.trial_id)
            .filter(models.TrialModel.study_id == study_id, attr.key == WRITE_ATTR, attr.value_json == json.dumps(token))
            .first()
        )
    return None if row is None else int(row[0])


def rerun_queued(storage: RDBStorage, study_id: int, number: int) -> bool:
    """Whether a re-run of trial ``number`` has been queued (a trial whose ``retry_history`` ends with
    it, as Optuna's retry callback writes it), read from the study's re-runs alone."""
    attr = models.TrialSystemAttributeModel
    with rdb_session(storage) as session:
        histories = (
            session.query(attr.value_json)
            .join(models.TrialModel, models.TrialModel.trial_id == attr.trial_id)
            .filter(models.TrialModel.study_id == study_id, attr.key == "retry_history")
            .all()
        )
    return any(json.loads(value)[-1:] == [number] for (value,) in histories)


def last_write(storage: RDBStorage, trial_id: int) -> str | None:
    """The token of the last state change of the trial (or of its creation)."""
    attr = models.TrialSystemAttributeModel
    with rdb_session(storage) as session:
        value = session.query(attr.value_json).filter(attr.trial_id == trial_id, attr.key == WRITE_ATTR).scalar()
    return None if value is None else json.loads(value)


def state_of(storage: RDBStorage, trial_id: int) -> TrialState:
    """The trial's state now, read from the database."""
    with rdb_session(storage) as session:
        return models.TrialModel.find_or_raise_by_id(trial_id, session).state


def _without_token(template: FrozenTrial | None) -> FrozenTrial | None:
    """``template`` without a token: a re-run's template copies the failed trial's system
    attributes, its token included, and the new trial's own token is inserted beside them."""
    if template is None or WRITE_ATTR not in template.system_attrs:
        return template
    template = copy.copy(template)
    template.system_attrs = {k: v for k, v in template.system_attrs.items() if k != WRITE_ATTR}
    return template


def _running_now() -> FrozenTrial:
    """What Optuna creates for study.ask() (no template): a RUNNING trial with nothing in it yet."""
    return FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
        params={}, distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1,
    )
