import time

import optuna
import pytest
from click.testing import CliRunner

from hpo.cli import main
from hpo.divergence import check_divergence
from hpo.record import TrialRecord
from hpo.spec import load_spec
from conftest import SMALL


@pytest.fixture
def run(tmp_path, data_cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "artifacts"))
    small = [a for o in [*SMALL, f"data.cache_dir={data_cache_dir!r}"] for a in ("--set", o)]

    def invoke(*args: str, small_data: bool = True):
        extra = small if small_data and args and args[0] == "optimize" else []
        if args and args[0] == "optimize" and "--jobs" not in args:
            extra = [*extra, "--jobs", "1"]  # in this process, where the runner sees the output
        # the small settings first: a test's own --set comes later, and the last setting of a key wins
        return CliRunner().invoke(main, [*args[:1], *extra, *args[1:]])

    return invoke


def _one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output + err
    for w in words:
        assert w in err


def test_unknown_study_is_one_line_exit_2(run):
    _one_line_error(run("optimize", "--study", "imbd", "--trials", "1"), "unknown study 'imbd'")


def test_bad_override_is_one_line_exit_2(run, tmp_path):
    result = run("optimize", "--study", "imdb", "--trials", "1", "--set", "space.lr_head.low=0")
    _one_line_error(result, "space.lr_head")
    assert not (tmp_path / "hpo.db").exists()  # failed before touching any storage


def test_unreachable_storage_fails_fast_without_the_password(run):
    t0 = time.monotonic()
    result = run("optimize", "--study", "imdb", "--trials", "1", "--storage", "postgresql+psycopg://me:s3cret-pw@127.0.0.1:1/nodb")
    assert time.monotonic() - t0 < 15
    _one_line_error(result, "cannot open storage", "me:***@127.0.0.1:1/nodb")
    assert "s3cret-pw" not in result.output + result.stderr


def test_not_a_url_is_explained(run):
    _one_line_error(run("optimize", "--study", "imdb", "--trials", "1", "--storage", "hpo.db"), "not a database URL")


def test_two_trial_study_resumes_to_three(run, tmp_path):
    # the smallest subset that still trains in several batches: the test reads the study, not the accuracy
    sets = ["--set", "data.max_train=256", "--set", "data.max_valid=128"]
    first = run("optimize", "--study", "imdb", "--trials", "2", *sets)
    assert first.exit_code == 0, first.output + first.stderr
    assert f"storage: sqlite:///{tmp_path / 'hpo.db'} (default)" in first.output  # where it is, from anywhere
    assert "trial 1 epoch 2/2" in first.output and "2 finished trials (2 run now)" in first.output
    second = run("optimize", "--study", "imdb", "--trials", "3", *sets)
    assert second.exit_code == 0, second.output + second.stderr
    assert "2 finished, running 1 more" in second.output and "(1 run now)" in second.output
    study = optuna.load_study(study_name="imdb", storage="sqlite:///hpo.db")
    assert [t.number for t in study.trials] == [0, 1, 2]
    for t in study.trials:
        r = TrialRecord.from_trial(t)
        assert r.finished and len(r.epochs) == r.epochs_run >= 1
        assert set(r.epochs[0].grad_norm_mean) == {"embedding", "encoder", "head"}
        # Only a trial that was the best when it finished is evaluated on the test split.
        assert (r.test_accuracy is not None) <= (r.state == "COMPLETE")
    assert 0.0 <= TrialRecord.from_trial(study.best_trial).test_accuracy <= 1.0
    third = run("optimize", "--study", "imdb", "--trials", "3", *sets)
    assert third.exit_code == 0 and "nothing to run" in third.output
    # finished trials keep no checkpoints; the summary says what the figures take
    assert list((tmp_path / "artifacts").glob("checkpoint-*")) == []
    assert "  artifacts: " in second.output and "no checkpoints left" in second.output


def test_huge_learning_rates_end_as_diverged_within_two_of_five_epochs(run):
    result = run("optimize", "--study", "imdb", "--trials", "2", "--set", "space.lr_head=5.0",
                 "--set", "space.lr_encoder=5.0", "--set", "train.max_epochs=5")
    assert result.exit_code == 0, result.output + result.stderr
    study = optuna.load_study(study_name="imdb", storage="sqlite:///hpo.db")
    assert len(study.trials) == 2
    rules = load_spec("imdb").divergence
    for t in study.trials:
        r = TrialRecord.from_trial(t)
        assert r.diverged and r.verdict.epoch <= 2 and r.epochs_run <= 2  # of 5: stopped early, not at the end
        if r.verdict.step is None:  # the epoch rules fired: they say the same of the stored epochs
            assert check_divergence(r.series("val_loss"), r.series("train_loss"),
                                    [e.max_grad_norm for e in r.epochs], rules) == r.verdict
        else:  # the step guard stopped it inside the epoch it names, before that epoch was recorded
            assert len(r.epochs) == r.verdict.epoch - 1 and r.verdict.reason in ("jump", "nan")
        assert f"diverged: {r.verdict.describe()}" in result.output
        if hasattr(t, "constraints"):  # Optuna 5: the sampler sees the divergence as a violated constraint
            assert t.constraints == {"diverged": 1.0}
    assert "pruned-diverged 2" in result.output
    assert "lr_head 5" in result.output  # the rates of a diverged trial are on its line


@pytest.mark.e2e
def test_ctrl_c_stops_the_trial_and_says_how_to_resume(tmp_path, data_cache_dir):
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HPO_ARTIFACTS": str(tmp_path / "artifacts")}
    env.pop("HPO_STORAGE", None)
    small = [a for o in [*SMALL, f"data.cache_dir={data_cache_dir!r}", "train.max_epochs=50"] for a in ("--set", o)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "optimize", "--study", "imdb", "--trials", "1", *small],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    for line in proc.stdout:  # interrupt in the middle of the trial, after its first epoch's checkpoint
        if "trial 0 epoch 1/50" in line:
            deadline = time.monotonic() + 60
            while not list((tmp_path / "artifacts").glob("checkpoint-*")) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert f"resume with: hpo optimize --study imdb --trials 1 --storage sqlite:///{tmp_path / 'hpo.db'} --set" in err
    assert "failed with value" not in out + err  # Optuna's own line would repeat ours
    study = optuna.load_study(study_name="imdb", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    # its checkpoints stay for the re-run
    assert list((tmp_path / "artifacts").glob("checkpoint-*"))
    # --jobs auto: every worker's running trial is stopped, not counted, and queued again as it was
    assert failed and len(waiting) == len(failed)
    assert sorted(map(str, (t.params for t in failed))) == sorted(map(str, (t.params for t in waiting)))


def test_studies_are_listed_and_optimize_help_names_them(run):
    listed = run("studies")
    assert listed.exit_code == 0 and listed.output.startswith("imdb ")
    help_text = run("optimize", "--help", small_data=False)
    assert "Built-in studies" in help_text.output and "imdb" in help_text.output.split("Built-in studies")[1]
    assert "--jobs N|auto" in help_text.output and "one per core" in help_text.output


def test_resume_hint_keeps_the_storage_and_never_the_password():
    from hpo.cli import resume_command

    url = "postgresql+psycopg://hpo:s3cret@db/hpo"
    given = resume_command("imdb", 100, ("train.max_epochs=3",), url, "--storage", "2")
    assert given == ("hpo optimize --study imdb --trials 100 --storage 'postgresql+psycopg://hpo:***@db/hpo' "
                     "--jobs 2 --set train.max_epochs=3 (put the password back for ***, or keep it out of the "
                     "command line with $HPO_STORAGE_PASSWORD_FILE)")
    from_env = resume_command("imdb", 100, (), url, "$HPO_STORAGE", "auto")
    assert from_env == "hpo optimize --study imdb --trials 100 (with $HPO_STORAGE set as now)"
    assert "s3cret" not in given + from_env
