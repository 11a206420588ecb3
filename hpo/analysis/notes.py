"""Dashboard notes: each trial's page says what happened; the study's page holds the report's reading.

optuna-dashboard shows a Markdown note on every trial and study page (kept in the study's system
attributes, so any storage works; written by :func:`save_note`, as ``optuna_dashboard.save_note``
would). :func:`trial_note` writes one or two lines from the trial's record and step telemetry, e.g.::

    **diverged**: loss jumped 2.40x above its best at epoch 11; head grad norm peaked 40x its
    median at step 4211, 2 steps after a warm restart; head |dw|/|w| up to 3e-2 (healthy ~1e-3)
    rates: lr_embedding 1e-3, lr_encoder 1e-3, lr_head 1e-2

:class:`hpo.search.callbacks.DashboardNotes` writes them from a worker: a trial's note as it ends (a listener), the
study's note after trials finish (an Optuna callback), at most once per ``every_s`` seconds per
worker. A note that cannot be written costs a warning, never the trial.

The study's note links to the top figures (:func:`top_figures`): the best trial's step-level
figure and epoch curves, and the step-level figure of the diverged trial that got furthest before
it jumped. They are the trials' own artifacts, linked by the path optuna-dashboard serves them
under (``/artifacts/<study_id>/<trial_id>/<artifact_id>``, the image itself), so nothing is
uploaded twice and a refresh adds nothing to the artifact store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import optuna

from hpo.analysis import plots, steps
from hpo.record import TrialRecord, rate_text
from hpo.storage.database.bounded import rewrite_study_attrs
from hpo.storage.optuna_private import storage_of, study_id, trial_id
from hpo.training.telemetry import StepTelemetry

CURVES_SUFFIX = "-" + plots.PNG_NAME  # the file names the trials' figures were uploaded under
STEPS_SUFFIX = "-" + steps.PNG_NAME

# optuna-dashboard's note format (optuna_dashboard/_note.py, unchanged since 0.8): in the study's
# system attributes, a version under "dashboard:note_ver" ("dashboard:<trial_id>:note_ver" for a
# trial's note) and the Markdown in chunks of at most 2045 characters under "dashboard:note_str:<i>"
# ("dashboard:<trial_id>:note_str:<i>"); a shorter note blanks the chunks it no longer needs.
NOTE_CHUNK = 2045
_SPARE_CHUNKS = 2  # a note may shrink by this many chunks (4 kB) before save_note reads every attribute


def save_note(study_or_trial: Any, body: str, new: bool = False) -> None:
    """``optuna_dashboard.save_note``, without importing optuna_dashboard: that imports its web app
    and, through ``optuna.importance``, scikit-learn and SciPy, ~2 s of CPU in every worker process
    (on a quiet core; as much as PyTorch's import) for one function that writes a few attributes.
    tests/test_analysis_steps.py reads what this writes with optuna-dashboard's own ``get_note``.

    It reads the note's own keys only: the study's system attributes hold every trial's note, and
    reading them all for each trial's note made a trial's cost grow with the study. ``new``: a note
    expected not to exist yet (a trial's, as it ends) is inserted without reading even its version
    (one statement of each trial; one that exists after all is read and rewritten)."""
    if isinstance(study_or_trial, optuna.Study):
        study, prefix = study_or_trial, "dashboard:"
    else:
        study, prefix = study_or_trial.study, f"dashboard:{trial_id(study_or_trial)}:"
    chunks = [body[i:i + NOTE_CHUNK] for i in range(0, len(body), NOTE_CHUNK)]
    # The chunks a longer note before this one left: some spare keys past ours, more when those run out.
    keys = [prefix + "note_ver", *(f"{prefix}note_str:{i}" for i in range(len(chunks) + _SPARE_CHUNKS))]
    storage, sid = storage_of(study), study_id(study)

    def rewrite(found: dict[str, Any], more: Callable[[list[str]], dict[str, Any]]) -> dict[str, Any]:
        before = sum(key.startswith(prefix + "note_str:") for key in found)
        read = len(keys) - 1  # the chunk keys read so far
        while before == read:  # a note that was longer still: read on, a few chunks at a time
            extra = more([f"{prefix}note_str:{i}" for i in range(read, read + 8)])
            found, before, read = {**found, **extra}, before + len(extra), read + 8
        out: dict[str, Any] = {prefix + "note_ver": found.get(prefix + "note_ver", 0) + 1}
        out.update({f"{prefix}note_str:{i}": chunk for i, chunk in enumerate(chunks)})
        out.update({f"{prefix}note_str:{i}": "" for i in range(len(chunks), before)})
        return out

    rewrite_study_attrs(storage, sid, keys, rewrite, new=new)


def spike(t: StepTelemetry, before: int | None = None) -> tuple[str, float, int] | None:
    """(group, peak / median, step) of the largest gradient-norm spike up to step ``before``.

    The median is each group's over the whole run so far, a robust "usual size"; the peak is the
    window maximum, so a spike between two samples counts. The first tenth of the first epoch is
    left out: a new head on a pretrained encoder starts with gradients many times their usual size
    (the loss of random weights), which says nothing about the rates; a run that blows up that
    early is caught by the divergence rules themselves (NaN/inf, the step guard).
    """
    keep = t.step >= t.steps_per_epoch // 10
    if before is not None:
        keep &= t.step <= before
    if not keep.any():
        return None
    best: tuple[str, float, int] | None = None
    for g, group in enumerate(t.groups):
        peaks, norms = t.grad_norm_max[keep, g], t.grad_norm[keep, g]
        finite = np.isfinite(norms) & (norms > 0)
        if not finite.any():
            continue
        median = float(np.median(norms[finite]))
        peaks = np.where(np.isfinite(peaks), peaks, np.inf)
        i = int(np.argmax(peaks))
        ratio = float(peaks[i] / median) if median > 0 else float("inf")
        if best is None or ratio > best[1]:
            best = (group, ratio, int(t.step[keep][i]))
    return best


def _after_restart(t: StepTelemetry, step: int) -> str:
    before = [r for r in steps.restart_steps(t) if r <= step]
    if not before:
        return ""
    gap = step - before[-1]
    return f", {gap} step{'s' if gap != 1 else ''} after a warm restart" if gap < t.steps_per_epoch else ""


def telemetry_line(trial: TrialRecord, t: StepTelemetry | None) -> str:
    """What the gradients and updates did: the largest spike, and the update ratios."""
    if t is None or not len(t):
        return ""
    parts = []
    cut = steps.divergence_step(trial, t)  # a study that records verdicts trains on: what came after is not the cause
    found = spike(t, cut)
    if found is not None:
        group, ratio, step = found
        # An overflowed norm (inf) has no ratio to its median worth printing
        size = "overflowed (inf)" if not np.isfinite(ratio) else f"peaked {ratio:.0f}x its median"
        parts.append(f"{group} grad norm {size} at step {step}{_after_restart(t, step)}")
    ratios = np.where(np.isfinite(t.update_ratio) & (t.update_ratio > 0), t.update_ratio, np.nan)
    if cut is not None:
        ratios = ratios[t.step <= cut]
    if trial.diverged and np.isfinite(ratios).any():
        g = int(np.nanargmax(np.nanmax(ratios, axis=0)))
        parts.append(f"{t.groups[g]} |dw|/|w| up to {rate_text(float(np.nanmax(ratios[:, g])))} (healthy ~1e-3)")
    elif np.isfinite(ratios).any():
        medians = ", ".join(f"{group} {rate_text(float(np.nanmedian(ratios[:, g])))}" for g, group in enumerate(t.groups)
                            if np.isfinite(ratios[:, g]).any())
        parts.append(f"median |dw|/|w| {medians}")
    return "; ".join(parts)


def classes_line(trial: TrialRecord) -> str:
    """``classes at epoch 3: billing 0.91, bugs 0.62, sales 0.88; macro-F1 0.80``: the trial's
    validation accuracy per class at its best epoch (its last when it has none); empty when the
    record has no per-class figures (older trials)."""
    epoch = next((e for e in trial.epochs if e.epoch == trial.best_epoch), trial.epochs[-1] if trial.epochs else None)
    if epoch is None or not epoch.val_class_accuracy:
        return ""
    per_class = ", ".join(f"{name} {acc:.2f}" for name, acc in epoch.val_class_accuracy.items())
    f1 = f"; macro-F1 {epoch.val_macro_f1:.2f}" if epoch.val_macro_f1 is not None else ""
    return f"classes at epoch {epoch.epoch}: {per_class}{f1}"


def trial_note(trial: TrialRecord, t: StepTelemetry | None = None) -> str:
    """Two or three Markdown lines: what happened to the trial, its rates, its accuracy per class."""
    if trial.diverged and trial.verdict is not None:
        head = f"**diverged**: {trial.verdict.describe()}"
    elif trial.pruned:
        pruned = trial.outcome.pruned_epoch if trial.outcome else None
        head = "**pruned** as underperforming" + (f" after epoch {pruned}" if pruned else "") + \
            (f" (best validation accuracy {trial.accuracy:.4f})" if trial.accuracy is not None else "")
    else:
        best = f" at epoch {trial.best_epoch}" if trial.best_epoch else ""
        head = f"**{trial.state.lower()}**" + (f": validation accuracy {trial.accuracy:.4f}{best}" if trial.accuracy is not None else "")
    line = telemetry_line(trial, t)
    rates = trial.rates_text()
    classes = "" if trial.diverged else classes_line(trial)
    return f"{head}{'; ' + line if line else ''}  \nrates: {rates}" + (f"  \n{classes}" if classes else "")


@dataclass(frozen=True)
class FigureLink:
    """One figure the study's note links to: ``[label](path)``."""
    label: str
    path: str  # the dashboard's URL path of the image, from its root


def artifact_path(study_id: int, trial_id: int, artifact_id: str) -> str:
    """Where optuna-dashboard serves a trial's artifact (its ``/artifacts/<study>/<trial>/<id>`` route)."""
    return f"/artifacts/{study_id}/{trial_id}/{artifact_id}"


def most_informative_diverged(finished: Sequence[TrialRecord]) -> TrialRecord | None:
    """The diverged trial that got furthest before it jumped: the best validation accuracy it
    reached (then the latest jump). Its rates were nearly right, so its steps show the boundary."""
    diverged = [r for r in finished if r.diverged]
    if not diverged:
        return None
    return max(diverged, key=lambda r: (r.accuracy or 0.0, r.diverged_epoch or 0, -r.number))


def top_figures(study: Any, finished: Sequence[TrialRecord], best: TrialRecord | None) -> list[FigureLink]:
    """Links to the best trial's step figure and epoch curves and to the most informative diverged
    trial's step figure, as far as those trials uploaded them (one artifact listing per trial)."""
    storage = storage_of(study)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    wanted: list[tuple[TrialRecord, str, str]] = []
    if best is not None:
        wanted += [(best, STEPS_SUFFIX, f"best trial {best.number}: steps ({best.rates_text()})"),
                   (best, CURVES_SUFFIX, f"best trial {best.number}: epochs")]
    diverged = most_informative_diverged(finished)
    if diverged is not None:
        wanted.append((diverged, STEPS_SUFFIX, f"diverged trial {diverged.number}: steps ({diverged.rates_text()})"))
    links, listed = [], {}
    for r, suffix, label in wanted:
        t = frozen.get(r.number)
        if t is None:
            continue
        if r.number not in listed:
            listed[r.number] = optuna.artifacts.get_all_artifact_meta(t, storage=storage)
        found = [m for m in listed[r.number] if m.filename.endswith(suffix)]
        if found:  # the latest upload, should a re-run have uploaded twice
            links.append(FigureLink(label, artifact_path(study_id(study), trial_id(t), found[-1].artifact_id)))
    return links


def study_note(reading: str, finished: int, links: Sequence[FigureLink] = (), classes: str = "") -> str:
    """The study's note: the report's reading, when it was written, the best trial's accuracy per
    class (``classes``: :func:`classes_line`), and links to the top figures."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    figures = "".join(f"* [{link.label}]({link.path})\n" for link in links)
    return (f"### Reading ({finished} finished trials, {stamp})\n\n{reading}\n\n"
            + (f"Best trial's {classes}\n\n" if classes else "")
            + (f"### Figures\n\n{figures}\n" if figures else "")
            + "Each trial's page has its step-level figure (loss, gradient norms, update ratios and rates per step); "
            "`hpo report` and `hpo plot` have the rest.")
