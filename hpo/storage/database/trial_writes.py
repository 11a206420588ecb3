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
from datetime import datetime

import sqlalchemy as sa
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


class _Lost(Exception):
    """The conditional update matched no row: another writer changed the state first."""


def new_token() -> str:
    return uuid.uuid4().hex


def set_state(storage: RDBStorage, trial_id: int, state: TrialState, values: Sequence[float] | None,
              token: str | None) -> bool:
    """RDBStorage.set_trial_state_values, decided by the database: True when this call made the change.

    A claim (``RUNNING``) succeeds only from WAITING (False: another worker has it); a finish only
    from RUNNING or WAITING (``UpdateFinishedTrialError``: finished already, by someone else).
    ``token=None`` writes no token (:func:`needs_token`).
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
    except _Lost:
        storage.check_trial_is_updatable(trial_id, state_of(storage, trial_id))  # finished: raises
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


def create_trial(storage: RDBStorage, study_id: int, template: FrozenTrial | None, token: str) -> FrozenTrial:
    """RDBStorage._create_new_trial, one attempt (Optuna's own retries after a lost reply would
    create the trial twice), carrying ``token``."""
    template = _with_token(template, token)
    with rdb_session(storage) as session:
        # The study's row lock serialises the numbering, as in Optuna.
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        trial = new_trial_in(storage, study_id, template, session)
        frozen = copy.deepcopy(template)
        frozen.number = trial.number
        frozen.datetime_start = trial.datetime_start
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


def _with_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    if template is None:  # what Optuna creates for study.ask(): a RUNNING trial, started now
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
            params={}, distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1,
        )
    else:
        template = copy.copy(template)
    # A re-run's template copies the failed trial's system attributes, its token included: ours replaces it.
    template.system_attrs = {**template.system_attrs, WRITE_ATTR: token}
    return template
