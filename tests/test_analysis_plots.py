import io
import logging

import matplotlib.image
import optuna
import pytest

import synthetic
from hpo.record import rates_text
from hpo.analysis.plots import grad_norm_figure, lr_accuracy_figure, lr_schedule_figure, trial_figure_png, val_loss_figure
from hpo.analysis.trials import load_study_data
from hpo.record import TrialRecord
from analysis_helpers import known_study


@pytest.fixture(scope="module")
def data():
    storage = optuna.storages.InMemoryStorage()
    known_study(storage, [5e-4, 2.5e-3, 7e-3, 9e-3, 2e-2], name="k")
    return load_study_data("k", storage)


def _marks(ax):
    return [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.get_lines() if line.get_marker() == "x"]


def test_gradient_jump_is_marked_at_the_divergence_epoch(data):
    fig = grad_norm_figure(data)
    assert [ax.get_title() for ax in fig.axes] == ["embedding", "encoder", "head"]
    head = fig.axes[2]
    diverged = [t for t in data.finished if t.diverged]
    marks = sorted(_marks(head))
    assert marks == sorted(((t.diverged_epoch,), (t.epochs[t.diverged_epoch - 1].grad_norm_mean["head"],)) for t in diverged)
    best_line = [line for line in head.get_lines() if line.get_label().startswith("best")]
    best = max(data.complete, key=lambda t: t.accuracy)
    assert best_line and best_line[0].get_label().startswith(f"best: trial {best.number} (lr_embedding ")


def test_val_loss_and_lr_figures_separate_diverged_trials(data):
    legend = [t.get_text() for t in val_loss_figure(data).legends[0].get_texts()]
    diverged = sorted((t for t in data.finished if t.diverged), key=lambda t: t.number)
    best = max(data.complete, key=lambda t: t.accuracy)
    assert legend[0].startswith(f"best: trial {best.number} (") and legend[1] == "complete (2 trials)"
    assert legend[2:] == [f"diverged: trial {t.number} ({rates_text(t.lrs)})" for t in diverged] + [
                          "divergence detected"]
    fig = lr_accuracy_figure(data, {"lr_head": 6e-3})
    head = next(ax for ax in fig.axes if ax.get_xlabel() == "lr_head")
    assert head.get_xscale() == "log"
    assert any(line.get_linestyle() == "--" and line.get_xdata()[0] == 6e-3 for line in head.get_lines())
    # the boundary is in the figure's legend, and each diverged trial has a marker where it ended
    assert "lr_head diverges above 0.006" in [t.get_text() for t in fig.legends[0].get_texts()]
    ends = [c for c in head.collections if c.get_offsets().shape[0] == len(diverged)
            and c.get_paths() and c.get_offsets()[:, 1].max() <= 0.5 + 1e-9]
    assert ends, "no 'where it ended' markers at the diverged trials' last accuracy (0.5)"


def test_schedule_goes_through_the_recorded_rates(data):
    fig = lr_schedule_figure(data)
    ax = fig.axes[0]
    best = max(data.complete, key=lambda t: t.accuracy)
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(dots) == 3
    curves = [line for line in ax.get_lines() if line.get_marker() in ("None", "", None)]
    for curve, group in zip(curves, ("embedding", "encoder", "head")):
        xs, ys = curve.get_xdata(), curve.get_ydata()
        for epoch, row in enumerate((e.lr for e in best.epochs), start=1):
            i = min(range(len(xs)), key=lambda k: abs(xs[k] - epoch))
            assert ys[i] == pytest.approx(row[group], rel=1e-6)


def test_trial_figure_is_a_small_png():
    study = optuna.create_study(direction="maximize")
    synthetic.add_known_trials(study, [8e-3])
    png = trial_figure_png(TrialRecord.from_trial(study.trials[0]))
    height, width, _ = matplotlib.image.imread(io.BytesIO(png)).shape
    assert (width, height) == (720, 244) and len(png) < 100_000


def test_a_failed_upload_does_not_fail_the_trial(tmp_path, caplog, small_spec):
    from optuna.artifacts import FileSystemArtifactStore

    from hpo.search.callbacks import FigureUpload
    from hpo.data import load_dataset
    from hpo.search.objective import Objective

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    broken = FileSystemArtifactStore(str(blocker))  # every write fails: it is a file, not a folder
    spec = small_spec("train.max_epochs=1", "data.max_train=200", "data.max_valid=100")
    lines = []
    objective = Objective(spec, load_dataset(spec.data), listeners=[FigureUpload(broken, lines.append)],
                          store=FileSystemArtifactStore(str(tmp_path)))
    study = optuna.create_study(direction="maximize")
    with caplog.at_level(logging.WARNING):
        study.optimize(objective, n_trials=1, catch=())
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert any(line.startswith("  warning: trial 0: figure not uploaded:") for line in lines), lines
    assert "figure not uploaded" in caplog.text
