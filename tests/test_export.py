"""The model a study found: kept by score, exported to one file, used without the study.

A real small study (real data, model and training, SQLite and a folder store) is run once; its
best trial is exported, the study's database and artifacts are moved away, and the file then
predicts the test split with the accuracy the trial recorded, from the CLI and from Python.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

import hpo
from conftest import SMALL, TRAINED_KEEP, TrainedStudy
from hpo import record
from hpo.cli import main
from hpo.data import split_reviews
from hpo.errors import HpoError
from hpo.export import FORMAT_VERSION, accuracy, export_model, read_payload
from hpo.search.workers import run_worker, run_workers
from hpo.spec import load_spec
from hpo.storage.artifacts.keys import weights_id
from hpo.storage.artifacts.retention import kept_trials, sweep_weights, top_trials
from hpo.storage.artifacts.stores import FolderStore, artifact_store
from hpo.storage.database.resilient import open_storage
from hpo.training.checkpoints import save_weights

KEEP = TRAINED_KEEP


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory, trained_study: TrainedStudy) -> dict:
    """The session's 4-trial study keeping the top 3, its best exported as model.pt and its top 3 as top3.pt."""
    folder = tmp_path_factory.mktemp("export-study")
    trained = trained_study.copy(folder)
    spec, outcome = trained.spec, trained.outcome
    study = trained.study()
    best = study.best_trial
    exported = export_model(study, folder / "model.pt")
    ensemble = export_model(study, folder / "top3.pt", top=3)
    ranked = top_trials(study, KEEP)
    # nothing of the study is left where predict runs
    for part in folder.glob("hpo.db*"):  # with SQLite's -wal and -shm files, if any
        shutil.move(str(part), str(folder / f"moved-{part.name}"))
    shutil.move(str(folder / "hpo-artifacts"), str(folder / "moved-artifacts"))
    test = split_reviews(spec.data)["test"]
    with (folder / "test.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows([text, ("negative", "positive")[y]] for text, y in test)
    return {"folder": folder, "spec": spec, "outcome": outcome, "best": best, "exported": exported,
            "ensemble": ensemble, "ranked": ranked, "test": test}


def test_a_copy_of_the_trained_study_is_a_study_of_its_own(trained_study: TrainedStudy, tmp_path: Path) -> None:
    """What the tests that share the session's study rely on: a copy reads its own artifacts, and
    what a test does to its copy (here: `hpo clean`'s sweep with keep 1) leaves the original alone."""
    copy = trained_study.copy(tmp_path / "copy")
    study = copy.study()
    store = artifact_store(study)
    assert isinstance(store, FolderStore) and store.folder == copy.artifacts
    assert len(kept_trials(study, store)) == KEEP  # the weights files are there, in the copy's folder
    sweep_weights(study, store, 1)
    assert len(kept_trials(study, store)) == 1
    original = trained_study.study()
    assert len(kept_trials(original, artifact_store(original))) == KEEP
    assert artifact_store(original).folder == trained_study.artifacts


def test_the_summary_names_the_trials_whose_weights_are_kept(study_dir: dict) -> None:
    ranked = study_dir["ranked"]
    assert study_dir["exported"].trials == (study_dir["best"].number,)
    assert study_dir["ensemble"].trials == tuple(ranked)
    names = ", ".join(str(n) for n in sorted(ranked))
    assert f"weights of trials {names} kept" in study_dir["outcome"].artifacts


def test_predict_from_python_reproduces_the_recorded_test_accuracy_without_the_study(study_dir: dict) -> None:
    recorded = record.TrialRecord.from_trial(study_dir["best"]).test_accuracy
    assert recorded is not None
    model = hpo.load_model(study_dir["folder"] / "model.pt")
    texts = [t for t, _ in study_dir["test"]]
    labels = [("negative", "positive")[y] for _, y in study_dir["test"]]
    assert abs(accuracy(model.predict(texts), labels) - recorded) <= 0.001
    assert model.classes == ("negative", "positive") and model.trials == (study_dir["best"].number,)


def test_loading_a_model_leaves_the_callers_random_state_alone(study_dir: dict) -> None:
    # Building the network seeds torch for training's sake; a user's own seeded code must not feel it.
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    hpo.load_model(study_dir["folder"] / "model.pt")
    assert torch.equal(torch.rand(3), expected)


def test_predict_from_the_cli_reproduces_the_recorded_test_accuracy(study_dir: dict, tmp_path: Path) -> None:
    folder = study_dir["folder"]
    recorded = record.TrialRecord.from_trial(study_dir["best"]).test_accuracy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "predict", "--model", str(folder / "model.pt"), "--file", str(folder / "test.csv"),
         "--text-column", "review", "--format", "csv", "--batch-size", "128"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(study_dir["test"])
    truth = [("negative", "positive")[y] for _, y in study_dir["test"]]
    hits = sum(row["label"] == y for row, y in zip(rows, truth))
    assert abs(hits / len(rows) - recorded) <= 0.001
    assert all(row["text"] == t for row, (t, _) in zip(rows, study_dir["test"]))  # in the order given


def test_the_ensemble_averages_its_members_probabilities(study_dir: dict) -> None:
    folder = study_dir["folder"]
    texts = [t for t, _ in study_dir["test"][:40]]
    ensemble = hpo.load_model(folder / "top3.pt")
    assert len(ensemble.networks) == 3
    payload = read_payload(folder / "top3.pt")
    singles = []
    for member in payload["members"]:
        one = {**payload, "members": [member]}
        path = folder / f"member-{member['trial']}.pt"
        torch.save(one, path)
        singles.append(hpo.load_model(path).probabilities(texts))
    assert torch.allclose(ensemble.probabilities(texts), torch.stack(singles).mean(0), atol=1e-5)
    # the members really differ, so the average is not one of them
    assert not torch.allclose(singles[0], singles[1], atol=1e-3)


def test_the_file_loads_with_weights_only_and_holds_what_it_needs(study_dir: dict) -> None:
    payload = torch.load(study_dir["folder"] / "model.pt", weights_only=True)
    best = study_dir["best"]
    assert payload["format_version"] == FORMAT_VERSION and payload["hpo_version"]
    assert payload["classes"] == ["negative", "positive"] and len(payload["vocab"].split("\n")) > 1000
    assert payload["tokenizer"]["max_len"] == study_dir["spec"].data.max_len
    assert payload["spec"]["model"]["hidden_size"] == 32
    (member,) = payload["members"]
    assert member["trial"] == best.number and member["params"] == best.params
    assert member["val_accuracy"] == pytest.approx(best.value)


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_bad_input_is_one_line_and_exit_2(study_dir: dict, tmp_path: Path) -> None:
    folder = study_dir["folder"]
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("hello")
    newer = tmp_path / "newer.pt"
    torch.save({**read_payload(folder / "model.pt"), "format_version": FORMAT_VERSION + 1, "hpo_version": "9.0"}, newer)
    cases = {
        "is not an hpo model file": ["predict", "--model", str(not_a_model), "good film"],
        "written by a newer hpo": ["predict", "--model", str(newer), "good film"],
        "text 2 is empty": ["predict", "--model", str(folder / "model.pt"), "good film", "  "],
        "has no column 'text'": ["predict", "--model", str(folder / "model.pt"), "--file", str(folder / "test.csv")],
        "does not exist": ["predict", "--model", str(tmp_path / "missing.pt"), "good film"],
    }
    for expected, args in cases.items():
        result = _cli(*args)
        assert result.exit_code == 2, (expected, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (expected, result.output)


def test_export_refuses_a_trial_without_kept_weights(study_dir: dict, tmp_path: Path) -> None:
    folder = study_dir["folder"]
    url = f"sqlite:///{folder / 'moved-hpo.db'}"
    study = optuna.load_study(study_name="imdb", storage=open_storage(url))
    store = FolderStore(folder / "moved-artifacts")
    dropped = next(t.number for t in study.trials if t.number not in study_dir["ranked"])
    with pytest.raises(HpoError, match=f"trial {dropped} of study 'imdb' has no kept weights"):
        export_model(study, tmp_path / "x.pt", trial=dropped, store=store)
    with pytest.raises(HpoError, match="--top 4 at most"):
        export_model(study, tmp_path / "x.pt", top=5, store=store)


def test_a_running_trial_keeps_its_weights_through_another_workers_sweep(tmp_path: Path) -> None:
    """The race: worker A has written trial 0's weights and not yet completed it when worker B's
    trial completes better and B sweeps with keep 1. Trial 0's weights survive until it has
    completed; the sweep after that removes them, as trial 0 ranks second."""
    storage = open_storage(f"sqlite:///{tmp_path / 'race.db'}")
    study = optuna.create_study(study_name="race", storage=storage, direction="maximize")
    store = FolderStore(tmp_path / "store")
    state = {"w": torch.zeros(2)}

    def keep(trial: optuna.Trial) -> str:
        artifact_id = weights_id("race", trial.number)
        record.write_weights(trial, artifact_id)
        save_weights(store, artifact_id, state, ["<pad>", "<unk>"], ("negative", "positive"), 1)
        return artifact_id

    a = study.ask()
    keep(a)  # A: weights written, trial still RUNNING
    b = study.ask()
    keep(b)
    study.tell(b, 0.9)
    sweep_weights(study, store, 1)  # B's sweep
    assert sorted(kept_trials(study, store)) == [a.number, b.number]
    study.tell(a, 0.8)
    assert sweep_weights(study, store, 1)[0] == 1  # A's sweep, after its completion
    assert list(kept_trials(study, store)) == [b.number]
    c = study.ask()
    keep(c)
    study.tell(c, 0.95)
    sweep_weights(study, store, 1)
    assert list(kept_trials(study, store)) == [c.number]


@pytest.mark.e2e
def test_a_20_trial_study_of_two_workers_ends_with_exactly_k_trials_holding_weights(
        tmp_path: Path, data_cache_dir: str) -> None:
    """Two worker processes (trials finishing at the same moment), one epoch on a tiny subset."""
    spec = load_spec("imdb", [*SMALL, f"data.cache_dir={data_cache_dir!r}", "data.max_train=200", "data.max_valid=100",
                              "data.max_test=100", "data.max_len=60", "model.embedding_dim=8", "model.hidden_size=8",
                              "train.max_epochs=1", "train.telemetry_every=-1", "pruner.type=none",
                              f"artifacts.keep_best={KEEP}", "name=keep-best"])
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    outcome = run_workers(spec, url, trials=20, jobs=2, seed=3)
    study = optuna.load_study(study_name="keep-best", storage=open_storage(url))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 20
    kept = kept_trials(study, artifact_store(study))
    assert sorted(kept) == sorted(top_trials(study, KEEP))
    assert len(kept) == KEEP
    written = {t.number for t in study.trials if record.weights_of(t)}
    assert len(written) > KEEP  # trials entered the top and dropped out again, losing their weights
    assert f"weights of trials {', '.join(map(str, sorted(kept)))} kept" in outcome.artifacts
    cleaned = _cli("clean", "--study", "keep-best", "--storage", url)
    assert cleaned.exit_code == 0 and "weights of trials" in cleaned.output


def test_the_guide_example_exports_and_predicts(tmp_path: Path, monkeypatch, data_cache_dir: str, capsys) -> None:
    """docs/guide/export.rst's Python example runs as written."""
    from test_readme import DOCS, _block_after

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_CACHE_DIR", data_cache_dir)
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    code = _block_after(DOCS / "guide" / "export.rst", "From Python")
    exec(compile(code, "docs/guide/export.rst", "exec"), {})
    out = capsys.readouterr().out
    assert "wrote model.pt (trial " in out and "wrote top2.pt (ensemble of trials " in out
    assert out.count("positive ") + out.count("negative ") >= 2 and "single model from study 'imdb-export'" in out


def test_a_four_class_model_exports_and_reproduces_its_test_accuracy(tmp_path: Path, data_cache_dir: str) -> None:
    """Your own data with K classes: the file carries the class names, the head has K outputs."""
    from test_data_files import _four_class, _script, _write_csv

    rows = _script().packaged_rows()
    imdb, rt = [r for r in rows if r[1] == "imdb"], [r for r in rows if r[1] != "imdb"]
    path = _write_csv(tmp_path / "four.csv", ["text", "label"], _four_class(imdb[:150] + imdb[-150:] + rt[:150] + rt[-150:]))
    spec = load_spec("imdb", [*SMALL, f"data.cache_dir={str(tmp_path / 'cache')!r}", f"data.path={str(path)!r}",
                              "data.max_train=0", "data.max_valid=0", "data.max_test=0", "train.max_epochs=1",
                              "train.telemetry_every=-1", "name=four"])
    url = f"sqlite:///{tmp_path / 'four.db'}"
    run_worker(spec, url, trials=2, seed=0)
    study = optuna.load_study(study_name="four", storage=open_storage(url))
    export_model(study, tmp_path / "four.pt")
    model = hpo.load_model(tmp_path / "four.pt")
    assert model.classes == ("imdb-neg", "imdb-pos", "rt-neg", "rt-pos")
    test = split_reviews(spec.data)["test"]
    predicted = model.predict([t for t, _ in test])
    assert len(predicted[0].probabilities) == 4 and abs(sum(predicted[0].probabilities) - 1) < 1e-5
    recorded = record.TrialRecord.from_trial(study.best_trial).test_accuracy
    assert abs(accuracy(predicted, [model.classes[y] for _, y in test]) - recorded) <= 0.001


def test_model_knobs_give_each_trial_its_shape_and_its_file_rebuilds_it(tmp_path: Path, data_cache_dir: str) -> None:
    """[space] bidirectional (sampled) and hidden_size (fixed, unlike [model]'s): each trial trains its own
    shape, and its exported file, read without the study, rebuilds that shape and reproduces its accuracy."""
    spec = load_spec("imdb", [*SMALL, f"data.cache_dir={data_cache_dir!r}", "train.max_epochs=1", "name=shapes", "data.max_len=80",
                              "train.telemetry_every=-1", "sampler.type=grid", "pruner.type=none",
                              "space.bidirectional={type='categorical',choices=[false,true]}", "space.hidden_size=24",
                              "space.embed_dropout=0.1", "space.lr_embedding=0.1", "space.lr_encoder=0.01",
                              "space.lr_head=0.01", "space.clip_norm=1.0", "space.cycle_len=1", "space.dropout=0.2",
                              "space.weight_decay=0.0001", "artifacts.keep_best=2"])
    url = f"sqlite:///{tmp_path / 'shapes.db'}"
    run_worker(spec, url, trials=2, seed=0)
    study = optuna.load_study(study_name="shapes", storage=open_storage(url))
    trials = {t.params["bidirectional"]: t for t in study.trials}
    assert set(trials) == {False, True}
    for bidirectional, trial in trials.items():
        export_model(study, tmp_path / f"{bidirectional}.pt", trial=trial.number)
    valid = split_reviews(spec.data)["valid"]
    for part in tmp_path.glob("shapes*"):
        shutil.move(str(part), str(tmp_path / f"moved-{part.name}"))
    for bidirectional, trial in trials.items():
        model = hpo.load_model(tmp_path / f"{bidirectional}.pt")
        encoder = model.networks[0].encoder
        assert encoder.bidirectional == bidirectional and encoder.layers[0][0].hidden_size == 24
        assert len(encoder.layers[0]) == (2 if bidirectional else 1) and encoder.word_dropout.p == 0.1
        predicted = model.predict([t for t, _ in valid])
        recorded = record.TrialRecord.from_trial(trial).accuracy
        assert abs(accuracy(predicted, [model.classes[y] for _, y in valid]) - recorded) <= 0.001
