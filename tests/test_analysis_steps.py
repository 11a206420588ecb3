"""The step-level trial figure, from real telemetry, and ``hpo plot --trial``."""

import io

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner

from hpo.analysis.steps import divergence_step, restart_steps, step_figure, step_figure_png, title, visible_restarts
from hpo.cli import main
from hpo.record import PRUNED, Outcome, TrialRecord


@pytest.fixture(scope="module")
def diverged(diverged_run):
    """A real run at a rate of 5, stopped by the divergence monitor, as its trial record and telemetry."""
    result, lrs, steps = diverged_run
    assert result.verdict is not None
    record = TrialRecord(
        number=7, state=PRUNED, params={}, distributions={}, accuracy=0.5, epochs=tuple(result.history),
        outcome=Outcome(result.verdict, result.best_epoch, result.epochs_run, steps, "fp32"),
        lrs={f"lr_{g}": v for g, v in lrs.items()},
    )
    return record, result.telemetry


def test_restarts_follow_the_sgdr_settings(diverged):
    _, t = diverged
    spe = t.steps_per_epoch
    assert restart_steps(t) == [spe, 2 * spe, 3 * spe]  # cycle_len 1 of 4 epochs
    doubling = type(t)(**{**t.__dict__, "meta": {**t.meta, "cycle_mult": 2, "max_epochs": 7}})
    assert restart_steps(doubling) == [spe, 3 * spe]  # cycles of 1, 2, 4 epochs


def test_the_figure_has_four_panels_on_one_step_axis_with_the_marks(diverged):
    trial, t = diverged
    fig = step_figure(trial, t)
    assert title(trial).startswith("trial 7: diverged (") and "lr_head 5" in fig.layout.title.text
    # loss + mean, 3 groups x (norm + max), 3 ratios, 3 rates
    assert len(fig.data) == 2 + 6 + 3 + 3
    assert [fig.layout[f"yaxis{i}"].type for i in ("", 2, 3, 4)] == [None, "log", "log", "log"]
    lines = [s for s in fig.layout.shapes if s.x0 == s.x1]
    red = [s for s in lines if s.line.color == "red"]
    assert len(red) == 4 and {s.x0 for s in red} == {divergence_step(trial, t)}  # across all four panels
    # only the restarts the run reached: it stopped before its fourth epoch
    visible = visible_restarts(trial, t)
    assert visible == [s for s in restart_steps(t) if s <= divergence_step(trial, t)] and len(visible) < len(restart_steps(t))
    assert len(lines) - len(red) == 4 * len(visible_restarts(trial, t))
    assert divergence_step(trial, t) >= t.step.max()  # the mark is where the samples end
    assert list(fig.layout.xaxis4.ticktext)[:1] == ["epoch 1"]
    png = step_figure_png(trial, t)
    height, width, _ = matplotlib.image.imread(io.BytesIO(png)).shape
    assert (width, height) == (720, 648)  # constrained layout keeps the size


def test_hpo_plot_trial_writes_the_step_figure_and_refuses_unknown_trials(trained_study, tmp_path, monkeypatch):
    study = trained_study.copy(tmp_path / "study")  # its trials' step telemetry, in the copy's folder store
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_ARTIFACTS", raising=False)
    ok = CliRunner().invoke(main, ["plot", "--study", "imdb", "--storage", study.url, "--trial", "0", "--out", "out"])
    assert ok.exit_code == 0, ok.output
    html = (tmp_path / "out" / "trial-0-steps.html").read_text()
    assert "plotly.min.js" in html and "update |dw|" in html and (tmp_path / "out" / "plotly.min.js").exists()
    assert (tmp_path / "out" / "trial-0-steps.png").read_bytes().startswith(b"\x89PNG")
    bad = CliRunner().invoke(main, ["plot", "--study", "imdb", "--storage", study.url, "--trial", "4"])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: study 'imdb' has no trial 4 (trials 0 to 3)"


def test_a_diverged_trials_note_says_what_happened_in_one_or_two_lines(diverged):
    import re

    from hpo.analysis.notes import spike, trial_note

    trial, t = diverged
    note = trial_note(trial, t)
    assert note.count("\n") == 1, note
    group, ratio, step = spike(t, divergence_step(trial, t))
    assert ratio > 1 and step <= divergence_step(trial, t)
    assert note.startswith(f"**diverged**: {trial.verdict.describe()}; {group} grad norm peaked {ratio:.0f}x its median at step {step}")
    assert re.search(r"\|dw\|/\|w\| up to [0-9.e-]+ \(healthy ~1e-3\)", note), note
    assert note.endswith("rates: lr_embedding 5, lr_encoder 5, lr_head 5")


def test_notes_that_cannot_be_written_warn_and_never_raise(caplog):
    import logging

    import optuna

    from hpo.search.callbacks import DashboardNotes

    lines = []
    notes = DashboardNotes(every_s=3600, log=lines.append)
    study = optuna.create_study()  # no finished trial: the report cannot be built
    with caplog.at_level(logging.WARNING):
        notes(study, None)
        notes(study, None)  # throttled: not tried again within the hour
    assert len(lines) == 1 and lines[0].startswith("  warning: study note not saved: study ")
    # logged once too; Optuna's own INFO line ("A new study created"), logged before the block, is not ours
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [lines[0].strip().removeprefix("warning: ")]


def test_the_study_note_links_the_best_and_the_diverged_trials_step_figures(diverged, tmp_path):
    """The links are the dashboard's own artifact routes for the trials' uploaded PNGs."""
    import dataclasses

    import optuna

    from hpo.analysis.notes import artifact_path, study_note, top_figures
    from hpo.record import COMPLETE

    trial, _ = diverged
    study = optuna.create_study(direction="maximize")
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    ids = {}
    for number, names in ((0, ["curves", "steps"]), (1, ["steps"])):
        running = study.ask()
        for name in names:
            path = tmp_path / f"trial-{number}-{name}.png"
            path.write_bytes(b"\x89PNG")
            ids[number, name] = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                                                 study_or_trial=running, mimetype="image/png")
        study.tell(running, 0.8)
    best = dataclasses.replace(trial, number=0, state=COMPLETE)
    jumped = dataclasses.replace(trial, number=1)
    links = top_figures(study, [best, jumped], best)
    trial_ids = [t._trial_id for t in study.trials]
    assert [link.path for link in links] == [
        artifact_path(study._study_id, trial_ids[0], ids[0, "steps"]),
        artifact_path(study._study_id, trial_ids[0], ids[0, "curves"]),
        artifact_path(study._study_id, trial_ids[1], ids[1, "steps"])]
    assert [link.label.split(":")[0] for link in links] == ["best trial 0", "best trial 0", "diverged trial 1"]
    note = study_note("reading", 2, links)
    assert f"* [diverged trial 1: steps (lr_embedding 5, lr_encoder 5, lr_head 5)]({links[2].path})" in note
    assert "### Figures" not in study_note("reading", 2)


def test_a_new_heads_first_steps_are_not_the_spike_a_note_names():
    from hpo.analysis.notes import spike
    from hpo.training.telemetry import StepTelemetry

    # 2 epochs of 100 steps, sampled every step: the random head's first steps are 50x the usual
    # norm, a real spike 8x it comes right after the warm restart at step 100.
    n, groups = 200, ("encoder", "head")
    norms = np.ones((n, 2), dtype=np.float32)
    norms[:3, 1] = 50.0
    norms[102, 0] = 8.0
    t = StepTelemetry(groups=groups, every=1, steps_per_epoch=100, step=np.arange(n), epoch=1 + np.arange(n) // 100,
                      loss=np.ones(n, np.float32), loss_mean=np.ones(n, np.float32), clipped=np.zeros(n, bool),
                      lr=np.full((n, 2), 1e-3, np.float32), grad_norm=norms, grad_norm_max=norms,
                      update_ratio=np.full((n, 2), 1e-3, np.float32))
    assert spike(t) == ("encoder", 8.0, 102)
    assert spike(t, before=50) == ("encoder", 1.0, 10)  # nothing but the usual size before step 50


def test_a_diverged_trials_note_reads_the_update_ratios_up_to_its_verdict_only():
    import numpy as np

    from hpo.analysis.notes import telemetry_line
    from hpo.record import Verdict
    from hpo.training.telemetry import StepTelemetry

    # 2 epochs of 100 steps; judged diverged at the end of epoch 1 (action "record" trains on),
    # the head's |dw|/|w| 5e-2 before it and 0.9 after it
    n = 200
    ratios = np.full((n, 2), 1e-3, np.float32)
    ratios[50, 1], ratios[150, 1] = 0.05, 0.9
    t = StepTelemetry(groups=("encoder", "head"), every=1, steps_per_epoch=100, step=np.arange(n),
                      epoch=1 + np.arange(n) // 100, loss=np.ones(n, np.float32), loss_mean=np.ones(n, np.float32),
                      clipped=np.zeros(n, bool), lr=np.full((n, 2), 1e-3, np.float32),
                      grad_norm=np.ones((n, 2), np.float32), grad_norm_max=np.ones((n, 2), np.float32), update_ratio=ratios)
    trial = TrialRecord(number=3, state=PRUNED, params={}, distributions={}, accuracy=0.5, epochs=(),
                        outcome=Outcome(Verdict("jump", 1, 2.0), 1, 2, 100, "fp32"), lrs={})
    assert trial.diverged
    assert "head |dw|/|w| up to 5e-2 (healthy ~1e-3)" in telemetry_line(trial, t)


def test_notes_are_written_as_optuna_dashboard_reads_them():
    """hpo writes notes without importing optuna_dashboard; its own get_note reads them back: study
    and trial notes apart, a long note in chunks, and a shorter rewrite leaves no old tail."""
    import optuna
    from optuna_dashboard import get_note

    from hpo.analysis.notes import NOTE_CHUNK, save_note

    study = optuna.create_study()
    trials = [study.ask() for _ in range(2)]
    long = "".join(f"line {i}: {'x' * 70}\n" for i in range(2 * NOTE_CHUNK // 70))  # three chunks
    assert len(long) > 2 * NOTE_CHUNK
    save_note(study, "**study** note")
    save_note(trials[0], long)
    save_note(trials[1], "trial 1")
    assert (get_note(study), get_note(trials[0]), get_note(trials[1])) == ("**study** note", long, "trial 1")
    save_note(trials[0], "shorter")
    assert (get_note(study), get_note(trials[0]), get_note(trials[1])) == ("**study** note", "shorter", "trial 1")
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs[f"dashboard:{trials[0]._trial_id}:note_ver"] == 2 and attrs["dashboard:note_ver"] == 1
