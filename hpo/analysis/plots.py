"""Figures of a study (``hpo plot``) and of one trial (uploaded to the dashboard after each trial).

Study figures, as PNG files (matplotlib):

* ``val_loss.png``: validation loss per epoch, complete vs pruned vs diverged trials, the best
  in black; a pruned trial ends in a dot (one epoch: a dot alone), a diverged one in an x;
* ``grad_norms.png``: one panel per layer group on shared axes, the mean pre-clip gradient norm
  per epoch of the best trial and of diverged trials, with each divergence marked;
* ``lr_vs_accuracy.png``: each learning rate against best accuracy, diverged trials marked;
* ``lr_schedule.png``: the SGDR schedule the best trial used, per group, through the rates it
  recorded at the start of every epoch.

and Optuna's plotly views as self-contained HTML: ``importance.html`` (this package's
log-scale, pruned-included importances), ``parallel_coordinate.html``, ``slice.html`` and
``contour.html`` (the learning rates).

Figures are drawn on :class:`matplotlib.figure.Figure` objects without pyplot, so no global
backend is switched and nothing needs a display. Constrained layout places one legend per
figure below the axes, off the data, and a title explains a mark only where one is drawn
(``tests/test_figure_layout.py`` measures both on the rendered figures).

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
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, MaxNLocator

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
_MAX_LINES = 200  # per category: beyond that a plot shows a sample, and its legend says so
_DPI = 100
PNG_NAME = "curves.png"  # a trial's epoch curves are trial-N-curves.png (hpo.analysis.notes links them)
DIVERGENCE_MARK = "x = divergence detected"  # in a title only where such a mark is drawn
_MARK = {"marker": "x", "color": "darkred", "ms": 7, "mew": 1.5, "ls": "none"}
_MEASURE = RendererAgg(1, 1, 72)  # measures legend labels in points


def _kind(t: TrialRecord) -> str:
    return "diverged" if t.diverged else ("pruned" if t.pruned else "complete")


_NAMED = 4  # up to this many diverged trials get a legend entry each, with their rates


def _rates(t: TrialRecord) -> str:
    return rates_text(t.lrs)


def _count(kind: str, members: Sequence[TrialRecord], drawn: int, note: str = "") -> str:
    """``pruned (9 trials; dot: where stopped)``, or ``... 200 of 1,234 drawn`` for a sample."""
    n = len(members)
    what = f"{n:,} trial{'s' if n != 1 else ''}" + (f", {drawn:,} drawn" if drawn < n else "")
    return f"{kind} ({what}{'; ' + note if note else ''})"


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if v is not None and math.isfinite(v) else math.nan for v in values]


def _has_finite(values: Sequence[Any]) -> bool:
    return any(math.isfinite(v) for v in _finite(values))


def _sample(trials: Sequence[TrialRecord]) -> list[TrialRecord]:
    if len(trials) <= _MAX_LINES:
        return list(trials)
    step = len(trials) / _MAX_LINES
    return [trials[int(i * step)] for i in range(_MAX_LINES)]


def _best(data: StudyData) -> TrialRecord | None:
    return best_trial(data.finished)


def _curve(ax: Any, values: Sequence[Any], gid: str, **style: Any) -> Any:
    """One trial's per-epoch series; a lone finite value (one epoch, or a gap around it) gets a dot,
    which a line through a single point would not draw."""
    ys = _finite(values)
    finite = [i for i, y in enumerate(ys) if math.isfinite(y)]
    lone = [i for i in finite if (i - 1 not in finite) and (i + 1 not in finite)]
    if lone and "marker" not in style:
        style = {"marker": "o", "ms": 3.5, "markevery": lone, **style}
    (line,) = ax.plot(range(1, len(ys) + 1), ys, gid=gid, **style)
    return line


def _mark(ax: Any, t: TrialRecord, values: Sequence[Any]) -> bool:
    """The x where ``t`` was judged diverged: its verdict's epoch, or its last epoch when the step
    guard stopped it within the next one (that epoch has no row). False when nothing is drawn."""
    ys = _finite(values)
    epoch = t.diverged_epoch
    if not epoch or not ys:
        return False
    epoch = min(epoch, len(ys))
    if not math.isfinite(ys[epoch - 1]):
        return False
    ax.plot([epoch], [ys[epoch - 1]], gid=f"mark:trial-{t.number}", **_MARK)
    return True


def _epoch_axis(ax: Any, epochs: int) -> None:
    """Whole epochs only (each of a few, or a round subset), with room for a dot at the first and the last."""
    epochs = max(epochs, 1)
    # MaxNLocator wants two ticks: over one epoch it would fall back to 0.96, 1.00, 1.04
    ax.xaxis.set_major_locator(FixedLocator(range(1, epochs + 1)) if epochs <= 12 else MaxNLocator(integer=True))
    ax.set_xlim(0.7, epochs + 0.3)


def _mark_handle() -> Line2D:
    return Line2D([], [], label="divergence detected", **_MARK)


def _proxy(color: str, label: str, marker: str | None = None) -> Line2D:
    """A legend entry standing for many lines."""
    return Line2D([], [], color=color, label=label, marker=marker, ms=3.5)


def _figure_legend(fig: Figure, handles: Sequence[Any], where: str = "lower center", fontsize: float = 8) -> Any:
    """One legend for the whole figure, outside every axes (constrained layout makes room for it).

    One row when the entries fit across the figure, else as many columns as the widest entry
    allows: the labels are measured in the font they are drawn in, with a tenth to spare, since
    hinting makes small text a little wider at some resolutions.
    """
    if not handles:
        return None
    font = FontProperties(size=fontsize)
    texts = [1.1 * _MEASURE.get_text_width_height_descent(h.get_label(), font, ismath=False)[0] for h in handles]
    # handle 2 em, pad 0.8 em, column gap 2 em (matplotlib's defaults); points, as the renderer is at 72 dpi
    width = fig.get_figwidth() * 72 - 4 * fontsize
    if sum(texts) + len(texts) * 4.8 * fontsize <= width:
        ncols = len(handles)
    else:
        ncols = max(1, min(len(handles), int(width // (max(texts) + 4.8 * fontsize))))
    return fig.legend(handles=list(handles), loc=f"outside {where}", ncols=ncols, fontsize=fontsize, frameon=False)


# --- study figures ---------------------------------------------------------------------------


def val_loss_figure(data: StudyData) -> Figure:
    """Validation loss per epoch: complete, pruned (underperforming) and diverged trials.

    The best trial is drawn in black on top, each pruned trial ends in a dot (so a trial pruned
    after one epoch shows as a dot), each diverged trial in an x. The legend sits below the
    axes and names the best and up to four diverged trials with their rates; others are counted.
    """
    fig = Figure(figsize=(9, 5.5), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    best = _best(data)
    handles, marked = [], False
    for kind in ("complete", "pruned", "diverged"):
        members = [t for t in data.finished if _kind(t) == kind and _has_finite(t.series("val_loss"))]
        others = [t for t in members if t is not best]  # the best is drawn last, on top
        drawn = _sample(others)
        named = kind == "diverged" and len(members) <= _NAMED
        for t in drawn:
            losses = t.series("val_loss")
            style = {"color": _COLORS[kind], "alpha": 0.8 if named else 0.5, "lw": 1.5 if named else 1}
            if kind == "pruned":
                style.update(marker="o", ms=3.5, markevery=[len(losses) - 1])
            line = _curve(ax, losses, f"{kind}:trial-{t.number}", **style,
                          label=f"diverged: trial {t.number} ({_rates(t)})" if named else None)
            if named:
                handles.append(line)
            if kind == "diverged":
                marked |= _mark(ax, t, losses)
        if others and not named:
            note = "dot: where stopped" if kind == "pruned" else ""
            shown = len(drawn) + len(members) - len(others)
            handles.append(_proxy(_COLORS[kind], _count(kind, members, shown, note), "o" if kind == "pruned" else None))
    if best is not None and _has_finite(best.series("val_loss")):
        handles.insert(0, _curve(ax, best.series("val_loss"), f"complete:trial-{best.number}", color="black",
                                 lw=2.2, zorder=3, label=f"best: trial {best.number} ({_rates(best)})"))
    if marked:
        handles.append(_mark_handle())
    ax.set_yscale("log")
    _epoch_axis(ax, max([data.max_epochs] + [len(t.epochs) for t in data.finished]))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (log scale)")
    ax.set_title(f"study {data.name}: validation loss per epoch" + (f", {DIVERGENCE_MARK}" if marked else ""))
    ax.grid(alpha=0.3)
    _figure_legend(fig, handles)
    return fig


def grad_norm_figure(data: StudyData) -> Figure:
    """Mean pre-clip gradient norm per epoch, one panel per layer group: the best trial vs the diverged ones.

    The panels share both axes (log scale), so a group whose norms run higher or jump stands out
    against the others; an x marks where each diverged trial was judged diverged.
    """
    best = _best(data)
    diverged_all = [t for t in data.finished if t.diverged and t.epochs]
    diverged = _sample(diverged_all)
    groups = _groups(data.finished) or list(LAYER_GROUPS)
    ncols = min(len(groups), 4)
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(1 + 3.2 * ncols, 1.4 + 2.9 * nrows), dpi=_DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    named = len(diverged_all) <= _NAMED
    handles: dict[str, Any] = {}
    marked = False
    for ax, group in zip(axes, groups):
        if best is not None and best.epochs:  # first: the legend names the best trial first
            label = f"best: trial {best.number} ({_rates(best)})"
            handles.setdefault(label, _curve(ax, best.group_series("grad_norm_mean", group), f"complete:trial-{best.number}",
                                             color="black", lw=2.2, zorder=3, label=label))
        for t in diverged:
            norms = t.group_series("grad_norm_mean", group)
            label = f"diverged: trial {t.number} ({_rates(t)})" if named else None
            line = _curve(ax, norms, f"diverged:trial-{t.number}", color=_COLORS["diverged"],
                          alpha=0.8 if named else 0.5, lw=1.5 if named else 1, label=label)
            if named:
                handles.setdefault(label, line)
            marked |= _mark(ax, t, norms)
        ax.set_title(group)
        ax.grid(alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    if diverged and not named:
        handles["diverged"] = _proxy(_COLORS["diverged"], _count("diverged", diverged_all, len(diverged)))
    if marked:
        handles["mark"] = _mark_handle()
    if any(ax.lines for ax in axes):
        axes[0].set_yscale("log")
    _epoch_axis(axes[0], max([data.max_epochs] + [len(t.epochs) for t in data.finished]))
    for ax in axes[len(groups) - ncols:len(groups)]:
        ax.set_xlabel("epoch")  # on the bottom row: a figure-wide label would sit in the legend's place
    fig.supylabel("mean pre-clip gradient norm (log scale)", fontsize=10)
    drawn = [what for what, shown in (("best trial", best is not None and best.epochs), ("diverged trials", diverged)) if shown]
    fig.suptitle(f"study {data.name}: gradient norm per layer group, "
                 + (" vs ".join(drawn) if drawn else "no complete or diverged trial to draw")
                 + (f"; {DIVERGENCE_MARK}" if marked else ""))
    _figure_legend(fig, list(handles.values()))
    return fig


def lr_accuracy_figure(data: StudyData, thresholds: Mapping[str, float] | None = None) -> Figure:
    """Each learning rate against best validation accuracy; ``thresholds`` draws a dashed line.

    A diverged trial is drawn at its best epoch (x) with a line down to where it ended (its last
    epoch's accuracy, a triangle): its best came before the jump, and the end is what it left.
    The panels share the accuracy axis; one legend below them says what each marker is.
    """
    params = sorted({name for t in data.finished for name in t.lrs})
    fig = Figure(figsize=(0.6 + 3.6 * max(len(params), 1), 4.6), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, max(len(params), 1), squeeze=False, sharey=True)[0]
    markers = {"complete": "o", "pruned": "s", "diverged": "x"}
    handles: dict[str, Any] = {}
    for ax, param in zip(axes, params):
        for kind in ("complete", "pruned", "diverged"):
            members = [t for t in data.finished if _kind(t) == kind and param in t.lrs and t.accuracy is not None]
            if not members:
                continue
            xs, ys = [t.lrs[param] for t in members], [t.accuracy for t in members]
            label = f"{kind} ({len(members)})" + (": best epoch (x), end (v)" if kind == "diverged" else "")
            handles.setdefault(label, ax.scatter(xs, ys, marker=markers[kind], color=_COLORS[kind], s=18, alpha=0.7,
                                                 label=label, gid=kind))
            if kind == "diverged":
                ends = [_finite(t.series("val_accuracy"))[-1] if t.epochs else math.nan for t in members]
                ax.vlines(xs, ends, ys, color=_COLORS[kind], lw=0.8, alpha=0.5)
                ax.scatter(xs, ends, marker="v", color=_COLORS[kind], s=14, alpha=0.7)
        if thresholds and param in thresholds:
            label = f"{param} diverges above {thresholds[param]:.2g}"
            handles[label] = ax.axvline(thresholds[param], ls="--", color="darkred", lw=1, label=label)
        ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best validation accuracy\n(pruned: best reported)")
    fig.suptitle(f"study {data.name}: each learning rate vs best validation accuracy")
    _figure_legend(fig, list(handles.values()))
    return fig


def lr_schedule_figure(data: StudyData, trial: TrialRecord | None = None) -> Figure:
    """The best trial's learning rate per group over training (log scale).

    Lines follow SGDR with the trial's ``cycle_len`` and the study's ``cycle_mult`` and
    ``lr_min_ratio``; dots are the rates the trial recorded at the start of each epoch, so the
    figure shows the schedule that was actually applied, not only the intended one.
    """
    trial = trial or _best(data) or data.finished[0]
    fig = Figure(figsize=(9, 4.5), dpi=_DPI, layout="constrained")
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
            ax.plot(*zip(*pts), "o", color=color, ms=5, label=None if group in peaks and cycle_len else group)
    if any(ax.lines):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.8, epochs + 1.1)
    ax.set_xlabel("epoch (dots: rate recorded at the epoch's first step)")
    ax.set_ylabel("learning rate (log scale)")
    note = f"; assumed {assumed}" if assumed else ""
    which = "best trial" if trial is _best(data) else "trial"
    fig.suptitle(f"study {data.name}, {which} {trial.number}: SGDR, cycle_len {cycle_len}, cycle_mult {cycle_mult}{note}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    _figure_legend(fig, handles)
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
    """Learning curves (losses, accuracy) and per-group gradient norms of one trial.

    Three panels on whole epochs, one legend below them; a trial that ran one epoch shows dots.
    A red dashed line marks the epoch a diverged trial was judged at.
    """
    fig = Figure(figsize=(10, 3.4), dpi=72, layout="constrained")
    ax_loss, ax_acc, ax_grad = fig.subplots(1, 3, sharex=True)
    n = len(trial.epochs)
    epochs = list(range(1, n + 1))
    handles = [
        *ax_loss.plot(epochs, _finite(trial.series("train_loss")), "o-", ms=3, color="0.55", label="train loss"),
        *ax_loss.plot(epochs, _finite(trial.series("val_loss")), "o-", ms=3, color="black", label="validation loss"),
    ]
    ax_loss.set_title("loss", fontsize=10)
    ax_acc.plot(epochs, _finite(trial.series("val_accuracy")), "o-", ms=3, color="black")
    ax_acc.set_title("validation accuracy", fontsize=10)
    for i, group in enumerate(trial.groups if trial.epochs else ()):
        handles += ax_grad.plot(epochs, _finite(trial.group_series("grad_norm_mean", group)), "o-", ms=3, color=f"C{i}",
                                label=group)
        ax_grad.plot(epochs, _finite(trial.group_series("grad_norm_max", group)), ":", color=f"C{i}")
    if trial.epochs:
        ax_grad.set_yscale("log")
        handles.append(Line2D([], [], ls=":", color="0.3", label="max (dotted)"))
    ax_grad.set_title("gradient norm (mean; log)", fontsize=10)
    epoch = trial.diverged_epoch
    for ax in (ax_loss, ax_acc, ax_grad):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if epoch:
            ax.axvline(epoch, color="tab:red", ls="--", lw=1)
    if epoch:
        handles.append(Line2D([], [], ls="--", color="tab:red", lw=1, label=f"judged diverged (epoch {epoch})"))
    _epoch_axis(ax_loss, max(n, epoch or 0))
    fig.suptitle(title or trial_title(trial), fontsize=11)
    _figure_legend(fig, handles)
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
    """`hpo lr-find`: smoothed loss against rate (log) per group; steepest (o), minimum (v), blow-up (x), suggested range shaded.

    One panel per group on the same rate axis; each panel's numbers sit in a legend below it,
    outside the curve; the loss axis ends a little above the starting loss, cutting off the blow-up.
    """
    fig = Figure(figsize=(0.6 + 4.2 * len(results), 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False, sharex=True)[0]
    for ax, r in zip(axes, results):
        ax.plot(r.lrs, r.losses, color="tab:blue", lw=1.5, label="smoothed loss (faint: raw)")
        ax.plot(r.lrs, r.raw, color="tab:blue", lw=0.5, alpha=0.3)
        low, high = r.suggested()
        ax.axvspan(low, high, color="tab:green", alpha=0.12, label=f"suggested {low:.2g} to {high:.2g}")
        at = lambda lr: float(np.interp(np.log(lr), np.log(r.lrs), r.losses))  # noqa: E731
        ax.plot(r.steepest, at(r.steepest), "o", color="tab:green", label=f"steepest descent {r.steepest:.2g}")
        ax.plot(r.minimum, at(r.minimum), "v", color="tab:orange", label=f"minimum {r.minimum:.2g}")
        if r.blowup is not None:
            ax.axvline(r.blowup, color="tab:red", ls="--", lw=1, label=f"blow-up {r.blowup:.2g}")
        ax.set_xscale("log")
        finite = r.losses[np.isfinite(r.losses)]
        if len(finite):
            # up to the starting loss (or 3x the minimum): the whole way down shows, the blow-up is cut
            low_y, high_y = min(finite), min(max(finite), max(3 * min(finite), 1.1 * finite[0]))
            pad = 0.06 * (high_y - low_y or low_y)  # room for the minimum's marker at the bottom
            ax.set_ylim(low_y - pad, high_y + pad)
        held = rates_text({f"lr_{k}": v for k, v in r.held.items()})
        ax.set_title(f"{r.group}\n(others held: {held})", fontsize=9)
        ax.set_xlabel(f"lr_{r.group}")
        ax.grid(alpha=0.3)
        # below the axes, where constrained layout makes room: the curve runs through every corner
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False)
    axes[0].set_ylabel("train loss")
    fig.suptitle(title, fontsize=10)
    return fig
