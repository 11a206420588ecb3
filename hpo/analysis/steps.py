"""The step-level figure of one trial: what the loss, gradients, updates and rates did, step by step.

Four panels on one shared step axis (ticks at epoch starts): the train loss (each sampled step,
and the mean since the sample before), each group's pre-clip gradient norm (log; dotted: the
maximum since the sample before), each group's update-to-weight ratio ``|dw|/|w|`` (log; the
dash-dot line at 1e-3 is the usual healthy size), and each group's learning rate (log). Dashed grey
lines mark SGDR warm restarts, a red line the divergence point. The title names the trial, its
state and its group rates.

Two renderings of the same panels: :func:`step_figure` (plotly, interactive: ``hpo plot --trial``
writes it as HTML) and :func:`step_figure_png` (matplotlib: the image optuna-dashboard shows on
the trial's page, since the dashboard previews image artifacts only and a plotly export needs
kaleido and a browser).

Example::

    telemetry = load_telemetry(frozen_trial, storage, artifact_store(study))
    step_figure(TrialRecord.from_trial(frozen_trial), telemetry).write_html("trial-7-steps.html")
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import HpoError
from hpo.record import TrialRecord
from hpo.storage.artifacts.stores import artifact_store, read_upload, upload_bytes
from hpo.storage.database.studies import load_existing
from hpo.training.telemetry import StepTelemetry, artifact_name

HEALTHY_UPDATE_RATIO = 1e-3
PNG_NAME = "steps.png"


@dataclass(frozen=True)
class Series:
    name: str
    x: np.ndarray
    y: np.ndarray
    group: int | None  # colour index; None: black
    dotted: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    log: bool
    series: tuple[Series, ...]
    reference: float | None = None  # a dash-dot horizontal line


def restart_steps(t: StepTelemetry) -> list[int]:
    """The first step of every SGDR cycle after the first (warm restarts), from the run's settings."""
    cycle_len, mult = int(t.meta.get("cycle_len") or 0), int(t.meta.get("cycle_mult") or 1)
    max_epochs = int(t.meta.get("max_epochs") or (int(t.epoch.max()) if len(t) else 0))
    if cycle_len <= 0:
        return []
    out, start, length = [], cycle_len, cycle_len
    while start < max_epochs:
        out.append(start * t.steps_per_epoch)
        length *= mult
        start += length
    return out


def visible_restarts(trial: TrialRecord, t: StepTelemetry) -> list[int]:
    """The warm restarts the trial reached: a run stopped early never saw the later ones, and a
    line there would only stretch the step axis past the data."""
    return [s for s in restart_steps(t) if s <= _last_step(trial, t)]


def _last_step(trial: TrialRecord, t: StepTelemetry) -> int:
    last = int(t.step.max()) if len(t) else 0
    diverged = divergence_step(trial, t)
    return max(last, diverged) if diverged is not None else last


def divergence_step(trial: TrialRecord, t: StepTelemetry) -> int | None:
    """Where the trial was judged diverged: the step the guard stopped at, else the end of the epoch."""
    verdict = trial.verdict
    if verdict is None:
        return None
    if verdict.step is not None:
        return (verdict.epoch - 1) * t.steps_per_epoch + verdict.step
    return verdict.epoch * t.steps_per_epoch - 1


def panels(t: StepTelemetry) -> list[Panel]:
    """The figure's four panels, whatever draws them."""
    x = t.step

    def per_group(name: str, dotted: str | None = None) -> tuple[Series, ...]:
        out = []
        for g, group in enumerate(t.groups):
            out.append(Series(group, x, _positive(t.column(name, group)), g))
            if dotted:
                out.append(Series(f"{group} max", x, _positive(t.column(dotted, group)), g, dotted=True))
        return tuple(out)

    return [
        Panel("train loss (dots: mean since the last sample)", False,
              (Series("loss", x, t.loss, None), Series("loss (mean)", x, t.loss_mean, None, dotted=True))),
        Panel("pre-clip gradient norm (dotted: max since the last sample)", True, per_group("grad_norm", "grad_norm_max")),
        Panel("update |dw|/|w| (dash-dot: 1e-3)", True, per_group("update_ratio"), HEALTHY_UPDATE_RATIO),
        Panel("learning rate", True, per_group("lr")),
    ]


def _positive(values: np.ndarray) -> np.ndarray:
    """Zeros (a frozen group) and non-finite values become gaps on a log axis."""
    out = values.astype(np.float64)
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def title(trial: TrialRecord) -> str:
    """``trial 7: diverged (jump at epoch 3, step 12) | lr_embedding 1e-3, lr_head 2.9e-1``."""
    verdict = trial.verdict
    state = "diverged" if trial.diverged else ("pruned" if trial.pruned else trial.state.lower())
    if verdict is not None:
        where = f"epoch {verdict.epoch}" + (f", step {verdict.step}" if verdict.step is not None else "")
        state += f" ({verdict.reason} at {where})"
    rates = trial.rates_text()
    return f"trial {trial.number}: {state} | {rates}"


def _epoch_ticks(t: StepTelemetry) -> tuple[list[int], list[str]]:
    epochs = int(t.epoch.max()) if len(t) else 1
    return [e * t.steps_per_epoch for e in range(epochs)], [f"epoch {e + 1}" for e in range(epochs)]


def step_figure(trial: TrialRecord, t: StepTelemetry) -> Any:
    """The plotly figure (shared step axis, epoch ticks, restart and divergence marks)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    ps = panels(t)
    fig = make_subplots(rows=len(ps), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[p.title for p in ps])
    colors = qualitative.Plotly
    for row, p in enumerate(ps, start=1):
        for s in p.series:
            color = "black" if s.group is None else colors[s.group % len(colors)]
            fig.add_trace(go.Scattergl(
                x=s.x, y=s.y, name=s.name, legendgroup=s.name.split()[0], showlegend=row == 1 or (row == 2 and not s.dotted),
                mode="lines", line={"color": color, "width": 1 if s.dotted else 1.5, "dash": "dot" if s.dotted else "solid"},
            ), row=row, col=1)
        if p.log:
            fig.update_yaxes(type="log", row=row, col=1)
        if p.reference is not None:
            fig.add_hline(y=p.reference, line={"dash": "dashdot", "color": "green", "width": 1}, row=row, col=1)
    for step in visible_restarts(trial, t):
        fig.add_vline(x=step, line={"dash": "dash", "color": "grey", "width": 1})
    diverged = divergence_step(trial, t)
    if diverged is not None:
        fig.add_vline(x=diverged, line={"color": "red", "width": 2}, annotation_text="diverged",
                      annotation_font_color="red")
    tickvals, ticktext = _epoch_ticks(t)
    fig.update_xaxes(tickvals=tickvals, ticktext=ticktext, showgrid=True)
    marks = "; dashed: warm restarts" if visible_restarts(trial, t) else ""
    fig.update_xaxes(title_text=f"step (sampled every {t.every}{marks})", row=len(ps), col=1)
    fig.update_layout(title=title(trial), height=900, hovermode="x unified", template="plotly_white")
    return fig


def step_figure_png(trial: TrialRecord, t: StepTelemetry) -> bytes:
    """The same panels as a PNG (matplotlib, no display): what the dashboard shows."""
    buf = io.BytesIO()
    static_step_figure(trial, t).savefig(buf, format="png")
    return buf.getvalue()


def static_step_figure(trial: TrialRecord, t: StepTelemetry) -> Any:
    """The matplotlib ``Figure`` behind :func:`step_figure_png`.

    One legend below the panels names the groups and the marks that are drawn; the step axis
    ends where the samples (or the divergence mark) do.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ps = panels(t)
    fig = Figure(figsize=(10, 9), dpi=72, layout="constrained")
    axes = fig.subplots(len(ps), 1, sharex=True)
    diverged = divergence_step(trial, t)
    restarts = visible_restarts(trial, t)
    handles: dict[str, Any] = {}
    for ax, p in zip(axes, ps):
        for s in p.series:
            color = "black" if s.group is None else f"C{s.group}"
            (line,) = ax.plot(s.x, s.y, ls=":" if s.dotted else "-", lw=0.8 if s.dotted else 1.2, color=color,
                              label=None if s.dotted else s.name)
            if not s.dotted:
                if s.group is None:
                    line.set_label("train loss")
                handles.setdefault(line.get_label(), line)
        if p.log and any(np.isfinite(s.y).any() for s in p.series):
            ax.set_yscale("log")
        if p.reference is not None:
            handles["reference"] = ax.axhline(p.reference, ls="-.", color="tab:green", lw=1,
                                              label=f"healthy |dw|/|w| {p.reference:g}")
        for step in restarts:
            ax.axvline(step, ls="--", color="grey", lw=0.8)
        if diverged is not None:
            ax.axvline(diverged, color="red", lw=1.5)
        ax.set_title(p.title, fontsize=9)
        ax.grid(alpha=0.3)
    handles["dotted"] = Line2D([], [], ls=":", color="0.3", label="dotted: mean / max since the last sample")
    if restarts:
        handles["restart"] = Line2D([], [], ls="--", color="grey", lw=0.8, label="SGDR warm restart")
    if diverged is not None:
        handles["diverged"] = Line2D([], [], color="red", lw=1.5, label=f"judged diverged (step {diverged})")
    tickvals, ticktext = _epoch_ticks(t)
    axes[-1].set_xticks(tickvals, ticktext)
    pad = max(1, _last_step(trial, t) // 50)
    axes[-1].set_xlim(-pad, _last_step(trial, t) + pad)
    axes[-1].set_xlabel(f"step (sampled every {t.every})")
    fig.suptitle(title(trial), fontsize=11)
    fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=min(len(handles), 4), fontsize=9,
               frameon=False)
    return fig


def upload_step_figure(trial: TrialRecord, t: StepTelemetry, running: Any, store: Any) -> str:
    """Upload the PNG as an artifact of ``running`` (the live ``optuna.Trial``); returns its id."""
    return upload_bytes(step_figure_png(trial, t), f"trial-{trial.number}-{PNG_NAME}", running, store, "image/png")


def write_trial_figures(trial: TrialRecord, t: StepTelemetry, out_dir: str | Path) -> list[Path]:
    """``trial-N-steps.html`` (plotly.min.js beside it) and ``trial-N-steps.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html, png = out / f"trial-{trial.number}-steps.html", out / f"trial-{trial.number}-{PNG_NAME}"
    step_figure(trial, t).write_html(html, include_plotlyjs="directory", full_html=True)
    png.write_bytes(step_figure_png(trial, t))
    return [html, png]


def load_telemetry(trial: Any, storage: Any, store: Any) -> StepTelemetry | None:
    """The step telemetry a finished trial (``FrozenTrial``) uploaded, or None when it has none."""
    data = read_upload(trial, storage, store, artifact_name(trial.number))
    return StepTelemetry.from_bytes(data) if data is not None else None


def trial_step_figures(study_name: str, storage: Any, number: int, out_dir: str | Path) -> list[Path]:
    """``hpo plot --trial N``: read trial ``number``'s telemetry from its study and write its figures.

    An HpoError when the study or trial does not exist, or the trial stored no telemetry.
    """
    study = load_existing(study_name, storage)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise HpoError(f"study {study_name!r} has no trial {number} (trials 0 to {len(trials) - 1})")
    frozen = trials[number]
    telemetry = load_telemetry(frozen, storage, artifact_store(study))
    if telemetry is None or not len(telemetry):
        raise HpoError(f"trial {number} of study {study_name!r} stored no step telemetry "
                       f"(it is {frozen.state.name}; trials record it from this version on, unless train.telemetry_every = -1)")
    return write_trial_figures(TrialRecord.from_trial(frozen), telemetry, out_dir)
