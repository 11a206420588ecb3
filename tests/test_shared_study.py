"""One spec per study, and one study however many workers create it at the same moment."""

from __future__ import annotations

import multiprocessing

import optuna
import pytest
from click.testing import CliRunner

import spawned
from db_servers import fresh_database
from hpo.cli import main
from hpo.errors import HpoError
from hpo.storage.database.resilient import open_storage
from hpo.record import SPEC_ATTR
from hpo.search.study import open_study


def test_the_creating_workers_spec_is_stored_and_others_must_match(small_spec, tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    spec = small_spec("name=shared")
    study = open_study(spec, storage)
    assert study.user_attrs[SPEC_ATTR]["train"]["max_epochs"] == 2
    assert study.user_attrs[SPEC_ATTR]["space"]["lr_head"]["high"] == pytest.approx(3e-1)

    # Per-machine settings may differ: threads, device, data cache, sampler seed.
    same = small_spec("name=shared", "train.threads=1", "train.device=cpu", "sampler.seed=7", "data.cache_dir='/elsewhere'")
    assert open_study(same, storage).study_name == "shared"

    other = small_spec("name=shared", "train.max_epochs=3", "space.lr_head=0.003")
    with pytest.raises(HpoError) as info:
        open_study(other, storage)
    message = str(info.value)
    assert message.startswith("study 'shared' was created with a different spec (")
    assert "train.max_epochs: study 2, yours 3" in message
    assert "space.lr_head: study (unset), yours 0.003" in message
    assert "space.lr_head.high: study 0.3, yours (unset)" in message
    assert "--set name=NEW_NAME" in message
    assert "threads" not in message and "cache_dir" not in message


def test_a_study_stored_before_a_setting_existed_joins_at_its_default_only(small_spec, tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    study = open_study(small_spec("name=older"), storage)
    stored = study.user_attrs[SPEC_ATTR]
    del stored["divergence"]["confirm_epochs"]  # as an hpo before divergence.confirm_epochs wrote it
    study.set_user_attr(SPEC_ATTR, stored)
    assert open_study(small_spec("name=older"), storage).study_name == "older"  # the default: same behaviour
    with pytest.raises(HpoError, match=r"divergence.confirm_epochs: study \(unset\), yours 1"):
        open_study(small_spec("name=older", "divergence.confirm_epochs=1"), storage)


def test_a_worker_with_another_spec_is_refused_in_one_line(small_spec, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_study(small_spec("name=cli-shared"), open_storage("sqlite:///hpo.db"))
    from conftest import SMALL

    args = ["optimize", "--study", "imdb", "--trials", "1", "--set", "name=cli-shared"]
    for override in [*SMALL, "train.max_epochs=5"]:
        args += ["--set", override]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: study 'cli-shared' was created with a different spec")
    assert "train.max_epochs: study 2, yours 5" in result.output
    assert "calibration" not in result.output  # refused before a minute of measuring, not after
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.e2e
def test_ten_workers_starting_at_once_on_empty_databases_make_one_study(small_spec, tmp_path) -> None:
    spec = small_spec("name=race")
    ctx = multiprocessing.get_context("spawn")
    with fresh_database("postgres") as pg, fresh_database("mysql") as my:
        urls = {"sqlite": f"sqlite:///{tmp_path / 'race.db'}", "postgres": pg, "mysql": my}
        results = ctx.Queue()
        barrier = ctx.Barrier(10)
        procs = [ctx.Process(target=spawned.join_all, args=(urls, spec, barrier, results)) for _ in range(10)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in range(10 * len(urls))]
        for p in procs:
            p.join(timeout=30)
        assert [o for o in outcomes if o[1] != "ok"] == []
        for kind, url in urls.items():
            assert len({study_id for k, _, study_id in outcomes if k == kind}) == 1, kind
            storage = open_storage(url)
            studies = optuna.get_all_study_summaries(storage, include_best_trial=False)
            assert [s.study_name for s in studies] == ["race"], kind
            assert studies[0].user_attrs[SPEC_ATTR]["name"] == "race"
            storage.engine.dispose()
