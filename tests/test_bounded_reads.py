"""Reads whose cost does not grow with the study (hpo.storage.database.bounded) answer as Optuna's
own API does, on SQLite, PostgreSQL and MariaDB, and through the fallback of any other storage.

The servers are real (tests/db_servers.py): unreachable, they skip, except under CI=true.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo.record import TrialRecord
from hpo.search.study import LiveTally, tally
from hpo.storage.database.bounded import rewrite_study_attrs, study_attrs, trial_counts
from hpo.storage.database.resilient import open_storage
from hpo.storage.optuna_private import TRIAL_STATE_INDEX, ensure_trial_state_index, storage_of, study_id
from db_servers import fresh_database, study_database

KINDS = ("sqlite", "postgres", "mysql", "memory")


@contextmanager
def storage_for(kind: str, tmp_path) -> Iterator[object]:
    if kind == "memory":
        yield optuna.storages.InMemoryStorage()
    elif kind == "sqlite":
        yield open_storage(f"sqlite:///{tmp_path / 'counts.db'}")
    else:
        with fresh_database(kind) as url:
            storage = open_storage(url)
            try:
                yield storage
            finally:
                storage.remove_session()
                storage.engine.dispose()


def _mixed_study(storage) -> optuna.Study:
    """Trials in every state, two studies side by side (counts must not mix them), pruned ones diverged or not."""
    other = optuna.create_study(study_name="other", storage=storage)
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    study = optuna.create_study(study_name="mixed", storage=storage, direction="maximize")
    for i, state in enumerate([TrialState.COMPLETE] * 4 + [TrialState.PRUNED] * 3 + [TrialState.FAIL] * 2):
        trial = study.ask()
        trial.report(0.1 * i, 1)
        if state == TrialState.PRUNED and i % 2:
            trial.set_user_attr("outcome", {"verdict": {"reason": "nan", "epoch": 1}, "epochs_run": 1})
        study.tell(trial, 0.1 * i if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # RUNNING
    study.ask()
    study.enqueue_trial({"x": 0.5})  # WAITING
    return study


@pytest.mark.parametrize("kind", KINDS)
def test_trial_counts_match_what_get_trials_counts(kind, tmp_path) -> None:
    with storage_for(kind, tmp_path) as storage:
        study = _mixed_study(storage)
        expected = Counter(t.state.name for t in study.get_trials(deepcopy=False))
        assert expected == {"COMPLETE": 4, "PRUNED": 3, "FAIL": 2, "RUNNING": 2, "WAITING": 1}
        assert trial_counts(storage_of(study), study_id(study)) == expected
        study.tell(study.ask(), 1.0)  # runs the WAITING one: a change after the first count shows in the next
        assert trial_counts(storage_of(study), study_id(study)) == {"COMPLETE": 5, "PRUNED": 3, "FAIL": 2, "RUNNING": 2}


@pytest.mark.parametrize("kind", ("sqlite", "postgres", "mysql"))
def test_opening_a_database_indexes_trials_by_study_and_state_once(kind, tmp_path) -> None:
    """Optuna's stale-trial search (every trial start) and the counts read the index, not every trial."""
    with storage_for(kind, tmp_path) as storage:
        again = open_storage(storage.url)  # a second worker: finds the index, makes no second one
        indexes = [ix for ix in sqlalchemy.inspect(again.engine).get_indexes("trials") if ix["name"] == TRIAL_STATE_INDEX]
        assert [ix["column_names"] for ix in indexes] == [["study_id", "state"]]
        assert ensure_trial_state_index(again) is True
        again.engine.dispose()


@pytest.mark.parametrize("kind", KINDS)
def test_study_attrs_by_key_and_their_rewrite_in_one_go(kind, tmp_path) -> None:
    with storage_for(kind, tmp_path) as storage:
        study = optuna.create_study(study_name="attrs", storage=storage)
        other = optuna.create_study(study_name="neighbour", storage=storage)
        storage.set_study_system_attr(study_id(other), "n", 99)  # same key, other study: not ours
        sid = study_id(study)
        storage.set_study_system_attr(sid, "n", 1)
        storage.set_study_system_attr(sid, "keep", "as it was")
        assert study_attrs(storage, sid, ["n", "missing"]) == {"n": 1}
        rewrite_study_attrs(storage, sid, ["n", "new"], lambda found, more: {"n": found["n"] + 1, "new": sorted(found)})
        assert storage.get_study_system_attrs(sid) == {"n": 2, "new": ["n"], "keep": "as it was"}
        assert storage.get_study_system_attrs(study_id(other)) == {"n": 99}


@pytest.mark.parametrize("kind", ("sqlite", "memory"))
def test_live_tally_read_after_each_change_equals_a_full_tally(kind, tmp_path) -> None:
    """The incremental tally (records built once per finished trial) against Tally.of every trial."""
    with storage_for(kind, tmp_path) as storage:
        study = _mixed_study(storage)
        live = LiveTally()
        assert live.read(study) == tally(study)
        for value, state in [(0.95, TrialState.COMPLETE), (None, TrialState.PRUNED), (0.99, TrialState.COMPLETE)]:
            trial = study.ask()
            trial.report(0.5, 1)
            study.tell(trial, value, state=state)
            assert live.read(study) == tally(study)
        assert live.read(study).best.accuracy == 0.99 and live.read(study).diverged == 1
        finished = [t for t in study.get_trials() if t.state.is_finished() and t.state != TrialState.FAIL]
        assert live.mean_epochs() == pytest.approx(statistics.fmean(TrialRecord.from_trial(t).epochs_run for t in finished))
        assert live.mean_epochs() > 0  # the diverged trial's outcome says it ran an epoch


@contextmanager
def statements(storage) -> Iterator[list[tuple[str, object]]]:
    """The SQL statements (and their parameters) the storage's engine sends inside the block."""
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append((" ".join(statement.split()), parameters))

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", record)


@pytest.mark.parametrize("kind", KINDS)
def test_a_note_replacing_a_much_longer_one_is_saved(kind, tmp_path) -> None:
    """A note shorter by more chunks than save_note's spare keys: the old tail is blanked, not
    inserted a second time (a unique-index violation on a database, and the new note was lost)."""
    from optuna_dashboard import get_note

    from hpo.analysis.notes import NOTE_CHUNK, save_note

    with storage_for(kind, tmp_path) as storage:
        study = optuna.create_study(study_name="notes", storage=storage)
        trial = study.ask()
        long = "y" * (5 * NOTE_CHUNK + 7)  # six chunks
        save_note(study, long)
        save_note(trial, long)
        save_note(study, "short")
        save_note(trial, "shorter")
        assert [get_note(study)[:20], get_note(trial)[:20]] == ["short", "shorter"]
        attrs = storage.get_study_system_attrs(study_id(study))
        assert attrs["dashboard:note_ver"] == 2 and attrs["dashboard:note_str:5"] == ""


def test_a_study_is_found_by_name_without_reading_any_study_attributes(tmp_path) -> None:
    """load_existing (every read of a study, the worker's study-note rewrite among them) asked for
    every study with its system attributes, which hold the dashboard note of every trial."""
    from hpo.analysis.notes import save_note
    from hpo.storage.database.studies import has_study, load_existing

    with storage_for("sqlite", tmp_path) as storage:
        study = optuna.create_study(study_name="big", storage=storage)
        for _ in range(3):
            save_note(study.ask(), "a trial's note")
        with statements(storage) as seen:
            assert load_existing("big", storage).study_name == "big"
            assert has_study(storage, "big") and not has_study(storage, "absent")
        assert seen and not [s for s, _ in seen if "study_system_attributes" in s]


def test_a_new_trial_note_reads_its_version_key_alone(tmp_path) -> None:
    """A trial's note is new once per trial: one key looked up, not the note's every chunk key."""
    from hpo.analysis.notes import save_note

    with storage_for("sqlite", tmp_path) as storage:
        study = optuna.create_study(study_name="notes", storage=storage)
        trial = study.ask()
        with statements(storage) as seen:
            save_note(trial, "a trial's note")
        reads = [p for s, p in seen if s.startswith("SELECT") and "study_system_attributes" in s]
        assert len(reads) == 1 and len(reads[0]) == 2  # (study_id, the version key)
        with statements(storage) as seen:
            save_note(trial, "written again")  # the version is there: now the chunks are read too
        reads = [p for s, p in seen if s.startswith("SELECT") and "study_system_attributes" in s]
        assert [len(p) for p in reads] == [2, 4]


@pytest.mark.parametrize("kind", ("sqlite", "postgres", "mysql"))
def test_the_search_for_stale_trials_returns_the_stale_ones_alone_as_optuna_finds_them(kind, tmp_path) -> None:
    """One statement that returns the stale trials only: Optuna's search reads the clock, then every
    running trial, then their heartbeats, a row per running worker per look (with 32 workers, most
    of what hpo read over plain Optuna). It finds what Optuna's finds, by the database's clock."""
    with study_database(kind, tmp_path) as url:
        storage = open_storage(url, grace_period=2)
        study = optuna.create_study(study_name="stale", storage=storage)
        other = optuna.create_study(study_name="other", storage=storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna: heartbeats are meant for study.optimize
            stale, fresh, finished, silent, elsewhere = study.ask(), study.ask(), study.ask(), study.ask(), other.ask()
            for trial in (stale, fresh, finished, elsewhere):
                storage.record_heartbeat(trial._trial_id)
            study.tell(finished, 1.0)
            time.sleep(3.5)  # past the grace period
            storage.record_heartbeat(fresh._trial_id)
        sent: list[str] = []
        listen = lambda conn, cursor, statement, *rest: sent.append(statement)  # noqa: E731
        sqlalchemy.event.listen(storage.engine, "before_cursor_execute", listen)
        storage._stale_checked.clear()
        found = storage._get_stale_trial_ids(study_id(study))
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", listen)
        assert found == [stale._trial_id]
        assert found == optuna.storages.RDBStorage._get_stale_trial_ids(storage, study_id(study))
        assert len([s for s in sent if s.lstrip().upper().startswith("SELECT")]) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_trials_note_as_it_ends_is_inserted_unread_and_replaces_one_written_meanwhile(kind, tmp_path) -> None:
    """A trial's note is written once, as it ends: inserted without reading its version first (one
    statement of every trial). A note that is there after all (written in the dashboard while the
    trial ran) is read and replaced, its version bumped, as without ``new``."""
    from optuna_dashboard import get_note

    from hpo.analysis.notes import save_note

    with storage_for(kind, tmp_path) as storage:
        study = optuna.create_study(study_name="notes", storage=storage)
        fresh, edited = study.ask(), study.ask()
        if kind != "memory":
            with statements(storage) as seen:
                save_note(fresh, "ended", new=True)
            assert [s for s, _ in seen if "study_system_attributes" in s and s.lstrip().startswith("SELECT")] == []
        else:
            save_note(fresh, "ended", new=True)
        save_note(edited, "a user's remark")
        save_note(edited, "ended too", new=True)
        assert (get_note(fresh), get_note(edited)) == ("ended", "ended too")
        attrs = storage.get_study_system_attrs(study_id(study))
        assert (attrs[f"dashboard:{fresh._trial_id}:note_ver"], attrs[f"dashboard:{edited._trial_id}:note_ver"]) == (1, 2)
