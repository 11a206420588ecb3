"""Figures of a study (``hpo plot``) and of one trial (uploaded to the dashboard after each trial).

Study figures, as PNG files (matplotlib):

* ``val_loss.png``: validation loss per epoch, complete vs pruned vs diverged trials;
* ``grad_norms.png``: per layer group, the mean pre-clip gradient norm per epoch of the best
  trial and of diverged trials, with each diverged trial's divergence epoch marked;
* ``lr_vs_accuracy.png``: each learning rate against best accuracy, diverged trials marked;
* ``lr_schedule.png``: the SGDR schedule the best trial used, per group, through the rates it
  recorded at the start of every epoch.

and Optuna's plotly views as self-contained HTML: ``importance.html`` (this package's
log-scale, pruned-included importances), ``parallel_coordinate.html``, ``slice.html`` and
``contour.html`` (the learning rates).

Figures are drawn on :class:`matplotlib.figure.Figure` objects without pyplot, so no global
backend is switched and nothing needs a display.

Example::

    paths = write_study_figures(load_study_data("imdb", storage), optuna_study, "figures/")
    png = trial_figure_png(TrialRecord.from_trial(frozen_trial))     # bytes, ~30 kB
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
from matplotlib.figure import Figure

from hpo.analysis.importance import param_importances
from hpo.analysis.report import divergence_rule
from hpo.analysis.trials import StudyData, TrialRecord
from hpo.errors import HpoError
from hpo.record import best_trial, rates_text
from hpo.spec import LAYER_GROUPS, TrainSpec
from hpo.storage.artifacts.stores import upload_bytes
from hpo.training.lrfind import RangeTest
from hpo.training.schedule import sgdr_factor

logger = logging.getLogger(__name__)
_COLORS = {"complete": "tab:blue", "pruned": "0.6", "diverged": "tab:red"}
_MAX_LINES = 200  # per category: beyond that a plot shows a sample, and says so
_DPI = 100
PNG_NAME = "curves.png"  # a trial's epoch curves are trial-N-curves.png (hpo.analysis.notes links them)


def _kind(t: TrialRecord) -> str:
    return "diverged" if t.diverged else ("pruned" if t.pruned else "complete")


_NAMED = 4  # up to this many trials of a kind get a legend entry each, with their rates


def _label(kind: str, t: TrialRecord, members: Sequence[TrialRecord], i: int) -> str | None:
    """A legend entry: each of a few trials by number and rates, or one entry for many."""
    if len(members) <= _NAMED and kind != "complete":
        rates = rates_text(t.lrs)
        return f"{kind}: trial {t.number} ({rates})"
    return f"{kind} ({len(members)} trials)" if i == 0 else None


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if v is not None and math.isfinite(v) else math.nan for v in values]


def _sample(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    if len(trials) <= _MAX_LINES:
        return list(trials)
    step = len(trials) / _MAX_LINES
    return [trials[int(i * step)] for i in range(_MAX_LINES)]


def _best(data: StudyData) -> TrialRecord | None:
    return best_trial(data.finished)


# --- study figures ---------------------------------------------------------------------------


def val_loss_figure(data: StudyData) -> Figure:
    """Validation loss per epoch: complete, pruned (underperforming) and diverged trials."""
    fig = Figure(figsize=(8, 5), dpi=_DPI)
    ax = fig.add_subplot()
    for kind in ("complete", "pruned", "diverged"):
        members = [t for t in data.finished if _kind(t) == kind and t.epochs]
        for i, t in enumerate(_sample(members)):
            losses = _finite(t.series("val_loss"))
            ax.plot(range(1, len(losses) + 1), losses, color=_COLORS[kind], alpha=0.5, lw=1,
                    label=_label(kind, t, members, i))
            if kind == "diverged" and t.diverged_epoch and t.diverged_epoch <= len(losses):
                ax.plot(t.diverged_epoch, losses[t.diverged_epoch - 1], "x", color="darkred", ms=6)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (log scale)")
    ax.set_title(f"study {data.name}: validation loss, x = divergence detected")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def grad_norm_figure(data: StudyData) -> Figure:
    """Mean pre-clip gradient norm per epoch and group: the best trial vs the diverged ones."""
    best = _best(data)
    diverged = _sample([t for t in data.finished if t.diverged and t.epochs])
    groups = _groups(data.finished)
    fig = Figure(figsize=(4 * len(groups), 4), dpi=_DPI)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups):
        for i, t in enumerate(diverged):
            norms = _finite(t.group_series("grad_norm_mean", group))
            ax.plot(range(1, len(norms) + 1), norms, color=_COLORS["diverged"], alpha=0.5, lw=1,
                    label=_label("diverged", t, diverged, i))
            if t.diverged_epoch and t.diverged_epoch <= len(norms):
                ax.plot(t.diverged_epoch, norms[t.diverged_epoch - 1], "x", color="darkred", ms=6)
        if best is not None and best.epochs:
            norms = _finite(best.group_series("grad_norm_mean", group))
            rates = rates_text(best.lrs)
            ax.plot(range(1, len(norms) + 1), norms, color="black", lw=2.5, label=f"best (trial {best.number}: {rates})")
        ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean pre-clip gradient norm")
    axes[0].legend(loc="upper left")
    fig.suptitle(f"study {data.name}: gradient norm per layer group, x = divergence detected")
    fig.tight_layout()
    return fig


def lr_accuracy_figure(data: StudyData, thresholds: Mapping[str, float] | None = None) -> Figure:
    """Each learning rate against best validation accuracy; ``thresholds`` draws a dashed line.

    A diverged trial is drawn at its best epoch (x) with a line down to where it ended (its last
    epoch's accuracy, a triangle): its best came before the jump, and the end is what it left.
    """
    params = sorted({name for t in data.finished for name in t.lrs})
    fig = Figure(figsize=(4 * max(len(params), 1), 4.4), dpi=_DPI)
    axes = fig.subplots(1, max(len(params), 1), squeeze=False, sharey=True)[0]
    markers = {"complete": "o", "pruned": "s", "diverged": "x"}
    for ax, param in zip(axes, params):
        for kind in ("complete", "pruned", "diverged"):
            members = [t for t in data.finished if _kind(t) == kind and param in t.lrs and t.accuracy is not None]
            if not members:
                continue
            xs, ys = [t.lrs[param] for t in members], [t.accuracy for t in members]
            label = f"{kind} ({len(members)})" + (": best epoch (x), end (v)" if kind == "diverged" else "")
            ax.scatter(xs, ys, marker=markers[kind], color=_COLORS[kind], s=18, alpha=0.7, label=label)
            if kind == "diverged":
                ends = [_finite(t.series("val_accuracy"))[-1] if t.epochs else math.nan for t in members]
                ax.vlines(xs, ends, ys, color=_COLORS[kind], lw=0.8, alpha=0.5)
                ax.scatter(xs, ends, marker="v", color=_COLORS[kind], s=14, alpha=0.7)
        if thresholds and param in thresholds:
            ax.axvline(thresholds[param], ls="--", color="darkred", lw=1, label=f"diverges above {thresholds[param]:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=7)
    axes[0].set_ylabel("best validation accuracy (pruned: best reported)")
    fig.suptitle(f"study {data.name}: learning rate vs accuracy")
    fig.tight_layout()
    return fig


def lr_schedule_figure(data: StudyData, trial: TrialRecord | None = None) -> Figure:
    """The best trial's learning rate per group over training (log scale).

    Lines follow SGDR with the trial's ``cycle_len`` and the study's ``cycle_mult`` and
    ``lr_min_ratio``; dots are the rates the trial recorded at the start of each epoch, so the
    figure shows the schedule that was actually applied, not only the intended one.
    """
    trial = trial or _best(data) or data.finished[0]
    fig = Figure(figsize=(8, 4.5), dpi=_DPI)
    ax = fig.add_subplot()
    recorded = [e.lr for e in trial.epochs]
    peaks = {name.removeprefix("lr_"): rate for name, rate in trial.lrs.items()}
    cycle_len, cycle_mult, min_ratio, assumed = _schedule_settings(data, trial)
    epochs = max(len(recorded), trial.epochs_run, 1)
    per_epoch = 40  # points per epoch; epoch starts fall on the grid, where the dots are
    for i, group in enumerate(_groups([trial]) or LAYER_GROUPS):
        color = f"C{i}"
        if group in peaks and cycle_len:
            xs = [k / per_epoch for k in range(epochs * per_epoch)]
            ax.plot([1 + x for x in xs], [peaks[group] * sgdr_factor(x, cycle_len, cycle_mult, min_ratio) for x in xs],
                    color=color, lw=1.5, label=f"{group} (peak {peaks[group]:.2g})")
        pts = [(e, row[group]) for e, row in enumerate(recorded, start=1) if group in row]
        if pts:
            ax.plot(*zip(*pts), "o", color=color, ms=5)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (dots: rate recorded at the epoch's first step)")
    ax.set_ylabel("learning rate")
    note = f"; assumed {assumed}" if assumed else ""
    ax.set_title(f"trial {trial.number}: SGDR, cycle_len {cycle_len}, cycle_mult {cycle_mult}{note}", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _schedule_settings(data: StudyData, trial: TrialRecord) -> tuple[int | None, int, float, str]:
    spec = data.spec
    train = spec.train if spec is not None else TrainSpec()
    cycle = trial.params.get("cycle_len", spec.space.get("cycle_len") if spec is not None else None)
    assumed = "" if spec is not None else "default cycle_mult, lr_min_ratio"
    return (int(cycle) if isinstance(cycle, (int, float)) else None, train.cycle_mult, train.lr_min_ratio, assumed)


def _groups(trials: Sequence[TrialRecord]) -> list[str]:
    seen: dict[str, None] = {}
    for t in trials:
        seen.update(dict.fromkeys(t.groups))
    return list(seen)


def _precomputed(importances: Mapping[str, float]) -> Any:
    """An Optuna evaluator that hands importances computed by :mod:`hpo.analysis.importance` to its plot.

    Built on demand: ``optuna.importance`` imports scikit-learn (a second or more), which the
    per-trial figure, drawn in every trial, does not need.
    """
    class _Precomputed(optuna.importance.BaseImportanceEvaluator):
        def evaluate(self, study: optuna.Study, params: list[str] | None = None, *, target: Callable | None = None) -> dict[str, float]:
            return dict(importances)

    return _Precomputed()


def write_study_figures(data: StudyData, study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """Write every study figure into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rule = divergence_rule(data.finished)
    thresholds = {rule.param: rule.threshold} if rule and rule.score >= 0.5 else {}
    figures = {
        "val_loss.png": val_loss_figure(data),
        "grad_norms.png": grad_norm_figure(data),
        "lr_vs_accuracy.png": lr_accuracy_figure(data, thresholds),
        "lr_schedule.png": lr_schedule_figure(data),
    }
    paths = []
    for name, fig in figures.items():
        fig.savefig(out / name)
        paths.append(out / name)
    import optuna.visualization as vis

    # Only parameters that vary: a fixed one would only make Optuna warn once per view.
    varying = sorted({n for t in data.complete for n in t.params if len({x.params.get(n) for x in data.complete}) > 1})
    views: dict[str, Callable[[], Any]] = {
        "parallel_coordinate.html": lambda: vis.plot_parallel_coordinate(study, params=varying or None),
        "slice.html": lambda: vis.plot_slice(study, params=varying or None),
    }
    try:
        imp = param_importances(data, "accuracy")
        views["importance.html"] = lambda: vis.plot_param_importances(
            study, evaluator=_precomputed(imp.importances), target_name=f"best validation accuracy ({imp.evaluator}, pruned included)")
    except HpoError as exc:
        logger.warning("importance view skipped: %s", exc)
    lrs = [p for p in varying if p.startswith("lr_")]
    if len(lrs) >= 2:
        views["contour.html"] = lambda: vis.plot_contour(study, params=lrs)
    for name, make in sorted(views.items()):
        # "directory": plotly.min.js (4.8 MB) is written once beside the pages, which load it from
        # there: self-contained offline, without a copy inlined in every page.
        make().write_html(out / name, include_plotlyjs="directory", full_html=True)
        paths.append(out / name)
    return paths


# --- the per-trial figure --------------------------------------------------------------------


def trial_title(trial: TrialRecord) -> str:
    """``trial 7: diverged (jump at epoch 3; dashed line)`` for a figure's title."""
    outcome = "diverged" if trial.diverged else ("pruned" if trial.pruned else "finished")
    verdict = trial.verdict
    if verdict is not None:
        outcome += f" ({verdict.reason} at epoch {verdict.epoch}; dashed line)"
    return f"trial {trial.number}: {outcome}"


def trial_figure(trial: TrialRecord, title: str = "") -> Figure:
    """Learning curves (losses, accuracy) and per-group gradient norms of one trial."""
    fig = Figure(figsize=(10, 3.2), dpi=72)
    ax_loss, ax_acc, ax_grad = fig.subplots(1, 3)
    epochs = list(range(1, len(trial.epochs) + 1))
    ax_loss.plot(epochs, _finite(trial.series("train_loss")), "o-", ms=3, label="train")
    ax_loss.plot(epochs, _finite(trial.series("val_loss")), "o-", ms=3, label="validation")
    ax_loss.set_title("loss")
    ax_loss.legend(fontsize=8)
    ax_acc.plot(epochs, _finite(trial.series("val_accuracy")), "o-", ms=3, color="tab:green")
    ax_acc.set_title("validation accuracy")
    for i, group in enumerate(trial.groups if trial.epochs else ()):
        ax_grad.plot(epochs, _finite(trial.group_series("grad_norm_mean", group)), "o-", ms=3, color=f"C{i}", label=group)
        ax_grad.plot(epochs, _finite(trial.group_series("grad_norm_max", group)), ":", color=f"C{i}")
    if trial.epochs:
        ax_grad.set_yscale("log")
        ax_grad.legend(fontsize=8)
    ax_grad.set_title("grad norm (mean; dotted: max)")
    epoch = trial.diverged_epoch
    for ax in (ax_loss, ax_acc, ax_grad):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if epoch:
            ax.axvline(epoch, color="tab:red", ls="--", lw=1)
    fig.suptitle(title or trial_title(trial), fontsize=10)
    fig.tight_layout()
    return fig


def trial_figure_png(trial: TrialRecord, title: str = "") -> bytes:
    buf = io.BytesIO()
    trial_figure(trial, title).savefig(buf, format="png")
    return buf.getvalue()


def upload_trial_figure(trial: TrialRecord, running: optuna.Trial, store: Any) -> str:
    """Draw ``trial`` and upload it to ``store`` as an artifact of ``running``, its live trial.

    A finished trial cannot take artifacts any more (Optuna records them on the trial), so this
    runs as the trial ends. Returns the artifact id; optuna-dashboard shows the PNG on the
    trial's page.
    """
    return upload_bytes(trial_figure_png(trial), f"trial-{trial.number}-{PNG_NAME}", running, store, "image/png")


def lr_find_figure(results: Sequence[RangeTest], title: str) -> Figure:
    """`hpo lr-find`: smoothed loss against rate (log) per group; steepest (o), minimum (v), blow-up (x),
    the suggested range shaded."""
    fig = Figure(figsize=(4.2 * len(results), 4), dpi=100)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, r in zip(axes, results):
        ax.plot(r.lrs, r.losses, color="tab:blue", lw=1.5)
        ax.plot(r.lrs, r.raw, color="tab:blue", lw=0.5, alpha=0.3)
        low, high = r.suggested()
        ax.axvspan(low, high, color="tab:green", alpha=0.12, label=f"suggested {low:.2g} to {high:.2g}")
        at = lambda lr: float(np.interp(np.log(lr), np.log(r.lrs), r.losses))  # noqa: E731
        ax.plot(r.steepest, at(r.steepest), "o", color="tab:green", label=f"steepest {r.steepest:.2g}")
        ax.plot(r.minimum, at(r.minimum), "v", color="tab:orange", label=f"minimum {r.minimum:.2g}")
        if r.blowup is not None:
            ax.axvline(r.blowup, color="tab:red", ls="--", lw=1, label=f"blow-up {r.blowup:.2g}")
        ax.set_xscale("log")
        finite = r.losses[np.isfinite(r.losses)]
        if len(finite):
            ax.set_ylim(min(finite) * 0.95, min(max(finite), 3 * min(finite)) * 1.05)
        held = rates_text({f"lr_{k}": v for k, v in r.held.items()})
        ax.set_title(f"{r.group} (held: {held})", fontsize=8)
        ax.set_xlabel(f"lr_{r.group}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("train loss (smoothed; faint: raw)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
