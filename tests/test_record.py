"""The trial record's study side: schema versions, the stored spec read back, rates as text."""

from __future__ import annotations

import optuna
import pytest

from hpo import record
from hpo.errors import HpoError
from hpo.record import SCHEMA_VERSION, StudyRecord, check_schema, rate_text, rates_text
from hpo.spec import load_spec


def test_a_new_study_is_written_at_this_schema() -> None:
    assert check_schema("new", {}, writing=True) == SCHEMA_VERSION


def test_a_schema_1_study_is_read_but_not_extended() -> None:
    old = {"spec": {"name": "old"}}  # a stored spec and no schema attribute: written before the record
    assert check_schema("old", old, writing=False) == 1
    with pytest.raises(HpoError, match="older hpo .*schema 1.*--set name=NEW_NAME"):
        check_schema("old", old, writing=True)


def test_a_study_from_a_newer_hpo_is_neither_read_nor_extended() -> None:
    newer = {record.SCHEMA_ATTR: SCHEMA_VERSION + 1, "spec": {"name": "x"}}
    for writing in (False, True):
        with pytest.raises(HpoError, match="newer hpo .*upgrade hpo"):
            check_schema("x", newer, writing=writing)


def test_the_stored_spec_reads_back_as_the_spec_and_schema_1_keys_are_translated() -> None:
    spec = load_spec("imdb", ["train.max_epochs=3", "pruner.warmup_epochs=1"])
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), study_name="s")
    record.write_spec(study, spec.to_dict())
    record.write_uid(study, "abc123")
    stored = StudyRecord.of(study)
    assert stored.parsed_spec() == spec and stored.key == "abc123"
    v1 = {**spec.to_dict(), "pruner": {**spec.to_dict()["pruner"], "n_warmup_steps": 3}}
    del v1["pruner"]["warmup_epochs"]
    assert StudyRecord.from_attrs("old", {"spec": v1}).parsed_spec().pruner.warmup_epochs == 2  # 1-based steps


def test_rates_are_written_one_way_in_name_order() -> None:
    assert [rate_text(x) for x in (0.0025, 0.01, 0.5, 1.0, 0.000334)] == ["2.5e-3", "1e-2", "5e-1", "1", "3.3e-4"]
    lrs = {"lr_head": 0.0291, "lr_embedding": 0.001, "lr_encoder": 0.003}
    assert rates_text(lrs) == "lr_embedding 1e-3, lr_encoder 3e-3, lr_head 2.9e-2"
    assert rates_text(lrs, exclude=["lr_encoder"]) == "lr_embedding 1e-3, lr_head 2.9e-2"
