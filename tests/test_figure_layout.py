"""Layout facts measured on the rendered figures (Agg, as ``savefig`` draws them).

Every legend lies inside the figure and off every axes' data area, tick labels and titles; every
trial a legend lists (by number or by count) has a drawn artist with a finite point, a line or
a marker that shows; a title explains the divergence mark only where one is drawn; the
gradient figure has one panel per layer group, on shared axes. Synthetic studies keep it fast.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import optuna
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import synthetic
from hpo.analysis.plots import (
    lr_find_figure,
    DIVERGENCE_MARK,
    grad_norm_figure,
    lr_accuracy_figure,
    lr_schedule_figure,
    trial_figure,
    val_loss_figure,
)
from hpo.analysis.steps import divergence_step, static_step_figure, visible_restarts
from hpo.analysis.trials import load_study_data
from hpo.training.lrfind import RangeTest
from hpo.record import PRUNED, Outcome, TrialRecord, Verdict
from hpo.training.telemetry import StepTelemetry
from analysis_helpers import add_pruned_after_one_epoch, known_study


@pytest.fixture(scope="module")
def studies():
    """mixed: 9 diverged (counted in legends), pruned after 1 and 2 epochs; stable: none diverged;
    few: two diverged trials, named one by one."""
    storage = optuna.storages.InMemoryStorage()
    mixed = known_study(storage, synthetic.random_lr_heads(30, seed=1), name="mixed", seed=1)
    add_pruned_after_one_epoch(mixed, [3e-4, 4e-3, 1.5e-4], seed=2)
    stable = known_study(storage, [1e-4, 1.5e-4, 5e-4, 2.5e-3, 5e-3], name="stable")
    add_pruned_after_one_epoch(stable, [3e-4, 2e-3])
    known_study(storage, [2.5e-3, 4e-3, 8e-3, 2e-2], name="few")
    return {name: load_study_data(name, storage) for name in ("mixed", "stable", "few")}


def _drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _legends(fig):
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def _finite_points(line) -> list[int]:
    ys = np.asarray(line.get_ydata(), dtype=float)
    xs = np.asarray(line.get_xdata(), dtype=float)
    return [i for i in range(len(ys)) if math.isfinite(ys[i]) and math.isfinite(xs[i])]


def _shows(line) -> bool:
    """A line is seen: two finite points joined by a line, or a finite point with a marker on it."""
    finite = _finite_points(line)
    if len(finite) >= 2 and line.get_linestyle() not in ("None", "", " ") and line.get_linewidth() > 0:
        return True
    if line.get_marker() in (None, "None", "", " "):
        return False
    every = line.get_markevery()
    return any(i in finite for i in every) if isinstance(every, list) else bool(finite)


def _trial_artists(fig) -> dict[str, set[int]]:
    """kind -> numbers of the trials drawn and seen, from the artists' ids (``pruned:trial-7``)."""
    out: dict[str, set[int]] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            match = re.fullmatch(r"(complete|pruned|diverged|mark):trial-(\d+)", line.get_gid() or "")
            if match and _shows(line):
                out.setdefault(match[1], set()).add(int(match[2]))
    return out


def _texts(fig) -> list[str]:
    return [t.get_text() for t in [fig._suptitle, *(ax.title for ax in fig.axes)] if t is not None]


def assert_legends_fit(fig) -> None:
    """At the figure's own resolution and at 80 dpi (the docs' copies), where hinting widens small text."""
    own = fig.get_dpi()
    for dpi in (own, 80):
        fig.set_dpi(dpi)
        _assert_legends_fit(fig)
    fig.set_dpi(own)


def _assert_legends_fit(fig) -> None:
    renderer = _drawn(fig)
    legends = _legends(fig)
    assert legends, "no legend"
    blocked = [ax.bbox for ax in fig.axes if ax.get_visible()]
    blocked += [box for ax in fig.axes if ax.get_visible() and (box := ax.xaxis.get_tightbbox(renderer)) is not None]
    blocked += [t.get_window_extent(renderer) for t in [fig._suptitle, *(ax.title for ax in fig.axes)]
                if t is not None and t.get_text()]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        texts = [t.get_text() for t in legend.get_texts()]
        assert (box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= fig.bbox.x1 + 0.5
                and box.y1 <= fig.bbox.y1 + 0.5), f"legend {texts} at {box.bounds} leaves the figure {fig.bbox.bounds}"
        for other in blocked:
            assert not (box.overlaps(other) and box.intersection(box, other).width * box.intersection(box, other).height > 1), \
                f"legend {texts} covers {other.bounds}"


def assert_listed_trials_drawn(fig) -> None:
    drawn = _trial_artists(fig)
    for legend in _legends(fig):
        for text in (t.get_text() for t in legend.get_texts()):
            named = re.search(r"trial (\d+)", text)
            if named:
                assert any(int(named[1]) in numbers for numbers in drawn.values()), f"{text!r}: not drawn"
            counted = re.match(r"(complete|pruned|diverged) \(([\d,]+) trials?(?:, ([\d,]+) drawn)?", text)
            if counted:
                expected = int((counted[3] or counted[2]).replace(",", ""))
                assert len(drawn.get(counted[1], ())) == expected, f"{text!r}: {sorted(drawn.get(counted[1], ()))} drawn"


def assert_mark_explained_only_when_drawn(fig) -> None:
    marked = bool(_trial_artists(fig).get("mark"))
    assert any(DIVERGENCE_MARK in t for t in _texts(fig)) == marked, (_texts(fig), marked)


@pytest.mark.parametrize("name", ["mixed", "stable", "few"])
@pytest.mark.parametrize("make", [val_loss_figure, grad_norm_figure], ids=["val_loss", "grad_norms"])
def test_study_curves_list_only_what_they_draw_and_keep_legends_off_the_data(studies, name, make):
    fig = make(studies[name])
    assert_legends_fit(fig)
    assert_listed_trials_drawn(fig)
    assert_mark_explained_only_when_drawn(fig)


def test_every_trial_of_the_study_is_drawn_in_val_loss_even_after_one_epoch(studies):
    data = studies["mixed"]
    drawn = _trial_artists(val_loss_figure(data))
    one_epoch = {t.number for t in data.finished if len(t.epochs) == 1}
    assert one_epoch and one_epoch <= drawn["pruned"]
    assert {t.number for t in data.finished} == drawn["complete"] | drawn["pruned"] | drawn["diverged"]
    assert drawn["mark"] == {t.number for t in data.finished if t.diverged}


def test_diverged_trials_are_named_when_few_and_counted_when_many(studies):
    def legend(data):
        return [t.get_text() for t in val_loss_figure(data).legends[0].get_texts()]

    few = studies["few"]
    named = [text for text in legend(few) if text.startswith("diverged: trial")]
    assert len(named) == sum(t.diverged for t in few.finished) == 2
    mixed = studies["mixed"]
    assert f"diverged ({sum(t.diverged for t in mixed.finished)} trials)" in legend(mixed)


@pytest.mark.parametrize("name", ["mixed", "stable"])
def test_accuracy_and_schedule_legends_fit_and_count_what_is_drawn(studies, name):
    data = studies[name]
    fig = lr_accuracy_figure(data, {"lr_head": synthetic.DIVERGE_ABOVE})
    assert_legends_fit(fig)
    for text in (t.get_text() for t in fig.legends[0].get_texts()):
        counted = re.match(r"(complete|pruned|diverged) \((\d+)\)", text)
        if counted:
            for ax in fig.axes:
                points = [c.get_offsets() for c in ax.collections if c.get_gid() == counted[1]]
                assert len(points) == 1 and np.isfinite(points[0]).all(axis=1).sum() == int(counted[2]), (ax.get_xlabel(), text)
    assert_legends_fit(lr_schedule_figure(data))


def test_one_gradient_panel_per_layer_group_on_shared_axes(studies):
    data = studies["mixed"]
    per_layer = {"embedding": "embedding", "encoder1": "encoder", "encoder2": "encoder", "head": "head"}

    def split(t):
        rows = tuple(dataclasses.replace(e, grad_norm_mean={g: e.grad_norm_mean[src] for g, src in per_layer.items()})
                     for e in t.epochs)
        return dataclasses.replace(t, epochs=rows)

    for study, groups in ((data, ["embedding", "encoder", "head"]),
                          (dataclasses.replace(data, finished=[split(t) for t in data.finished]), list(per_layer))):
        fig = grad_norm_figure(study)
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in panels] == groups
        assert all(panels[0].get_shared_y_axes().joined(panels[0], ax) for ax in panels)
        assert all(panels[0].get_shared_x_axes().joined(panels[0], ax) for ax in panels)
        assert_legends_fit(fig)
        assert_listed_trials_drawn(fig)


@pytest.mark.parametrize("which", ["diverged", "pruned after one epoch", "complete"])
def test_the_trial_figure_draws_one_epoch_and_keeps_its_legend_below(studies, which):
    data = studies["mixed"]
    trial = next(t for t in data.finished if {"diverged": t.diverged, "complete": t.state == "COMPLETE",
                                               "pruned after one epoch": len(t.epochs) == 1}[which])
    fig = trial_figure(trial)
    assert_legends_fit(fig)
    for ax in fig.axes:
        assert any(_shows(line) for line in ax.get_lines()), ax.get_title()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(label.startswith("judged diverged") for label in labels) == trial.diverged
    _drawn(fig)
    for ax in fig.axes:  # whole epochs, even for a trial that ran one
        low, high = ax.get_xlim()
        ticks = [x for x in ax.get_xticks() if low <= x <= high]
        assert ticks and all(float(x).is_integer() for x in ticks), ticks


def _telemetry(n: int, max_epochs: int) -> StepTelemetry:
    """``n`` steps sampled every step, 10 to an epoch, SGDR cycles of one epoch."""
    spe, groups = 10, ("embedding", "encoder", "head")
    ones = np.ones((n, 3), np.float32)
    return StepTelemetry(groups=groups, every=1, steps_per_epoch=spe, step=np.arange(n), epoch=1 + np.arange(n) // spe,
                         loss=np.linspace(0.7, 0.3, n, dtype=np.float32), loss_mean=np.full(n, 0.5, np.float32),
                         clipped=np.zeros(n, bool), lr=ones * 1e-3, grad_norm=ones, grad_norm_max=2 * ones,
                         update_ratio=ones * 1e-3, meta={"cycle_len": 1, "cycle_mult": 1, "max_epochs": max_epochs})


def test_the_step_figure_ends_where_the_run_did(studies):
    """A run stopped in epoch 2 of 6: no warm restarts past it, the axis ends at the mark."""
    t = _telemetry(15, 6)
    trial = TrialRecord(number=4, state=PRUNED, params={}, distributions={}, accuracy=0.5, epochs=(),
                        outcome=Outcome(Verdict("jump", 2, 3.0, step=5), 1, 2, 10, "fp32"), lrs={"lr_head": 0.5})
    fig = static_step_figure(trial, t)
    assert_legends_fit(fig)
    assert visible_restarts(trial, t) == [10]  # epoch 2's start; not 20, 30, 40, 50
    assert fig.axes[-1].get_xlim()[1] < divergence_step(trial, t) + 5
    labels = [x.get_text() for x in fig.legends[0].get_texts()]
    assert "SGDR warm restart" in labels and f"judged diverged (step {divergence_step(trial, t)})" in labels
    stable = dataclasses.replace(trial, outcome=Outcome(None, 3, 3, 10, "fp32"))
    labels = [x.get_text() for x in static_step_figure(stable, _telemetry(30, 3)).legends[0].get_texts()]
    assert not any(label.startswith("judged diverged") for label in labels)


def test_the_lr_find_legends_sit_below_their_panels():
    lrs = np.logspace(-6, 1, 150)
    x = np.log10(lrs)
    losses = 0.7 - 0.5 / (1 + np.exp(-3 * (x + 2))) + np.where(x > 0.5, (x - 0.5) * 4, 0)
    results = [RangeTest(group, lrs, losses, losses + 0.02, {"other": 1e-3}, blew_up=True) for group in ("encoder", "head")]
    fig = lr_find_figure(results, "range test")
    assert_legends_fit(fig)
    for ax, r in zip(fig.axes, results):
        low, high = ax.get_ylim()
        assert low < r.losses.min() and high > r.losses[0], "the way down from the starting loss is cut off"
