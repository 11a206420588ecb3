"""The stability report: what a practitioner would otherwise tabulate by hand after a study.

Per learning rate (one per layer group: ``lr_embedding``, ``lr_encoder``, ``lr_head``), the
finished trials are binned on a 1-3-10 grid (1e-3 <= lr < 3e-3, 3e-3 <= lr < 1e-2, ...); each bin
gives its number of trials, the mean and max best validation accuracy (pruned trials at the best
value they reported), the divergence rate and the median epoch of divergence. Then the trials by
state, the best trial, the epochs spent on diverged trials and saved by pruning (against running
every pruned trial to ``max_epochs``), and a paragraph that reads the result in plain words.
The classes, with their rows per split and the best trial's validation accuracy on each at its
best epoch, and its macro-F1: a small class the model never predicts shows there, not in the
accuracy.

Example::

    report = build_report(load_study_data("imdb", storage))
    print(render(report, "markdown"))
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from hpo import record
from hpo.analysis.trials import StudyData, TrialRecord
from hpo.errors import HpoError
from hpo.record import Tally, best_trial, rate_text, rates_text

FORMATS = ("table", "markdown", "csv", "json")
_GRID = (1.0, 3.0)  # bin edges within each decade
_NICE = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)  # thresholds the reading may quote


@dataclass(frozen=True)
class Bin:
    """Trials whose rate is in ``[low, high)``."""

    low: float
    high: float
    trials: int
    mean_accuracy: float | None
    max_accuracy: float | None
    diverged: int
    divergence_rate: float | None
    median_diverged_epoch: float | None


@dataclass(frozen=True)
class RateTable:
    param: str
    bins: list[Bin]


@dataclass(frozen=True)
class BestTrial:
    number: int
    params: dict[str, Any]
    val_accuracy: float
    test_accuracy: float | None
    best_epoch: int | None


@dataclass(frozen=True)
class ClassRow:
    """One class: its rows per split and the best trial's validation accuracy on it (at its best epoch)."""

    name: str
    train: int | None
    valid: int | None
    test: int | None
    accuracy: float | None


@dataclass(frozen=True)
class Report:
    study: str
    states: dict[str, int]  # complete, diverged, pruned_other, failed, running, waiting
    rate_tables: list[RateTable]
    best: BestTrial | None
    max_epochs: int
    max_epochs_source: str
    epochs_run: int  # by every finished trial
    epochs_diverged: int  # of which by diverged trials
    epochs_saved: int  # pruned trials stopped before max_epochs
    epochs_saved_diverged: int  # of which by diverged trials
    reading: str
    artifacts: dict[str, Any] | None = None  # bytes the study's artifacts take, and where (hpo.storage.artifacts)
    classes: list[ClassRow] = dataclasses.field(default_factory=list)  # empty: a study made before classes were stored
    macro_f1: float | None = None  # the best trial's, on validation at its best epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_report(data: StudyData) -> Report:
    """The report for one study's finished trials (see the module docstring)."""
    trials = data.finished
    diverged = [t for t in trials if t.diverged]
    pruned = [t for t in trials if t.pruned]
    saved = {t.number: max(data.max_epochs - t.epochs_run, 0) for t in pruned}
    tables = [RateTable(p, rate_bins(trials, p)) for p in _rate_params(trials)]
    report = Report(
        study=data.name,
        states=(data.tally or Tally.of(data.finished)).to_dict(),
        rate_tables=tables,
        best=_best(data.finished),
        max_epochs=data.max_epochs,
        max_epochs_source=data.max_epochs_source,
        epochs_run=sum(t.epochs_run for t in trials),
        epochs_diverged=sum(t.epochs_run for t in diverged),
        epochs_saved=sum(saved.values()),
        epochs_saved_diverged=sum(saved[t.number] for t in diverged),
        reading="",
    )
    classes, macro_f1 = class_rows(data, best_trial(trials))
    report = dataclasses.replace(report, classes=classes, macro_f1=macro_f1)
    return dataclasses.replace(report, reading=_reading(report, trials))


def class_rows(data: StudyData, best: TrialRecord | None) -> tuple[list[ClassRow], float | None]:
    """Per class: rows in train / valid / test (as stored with the study) and the best trial's
    validation accuracy at its best epoch; and that epoch's macro-F1."""
    epoch = next((e for e in (best.epochs if best else ()) if e.epoch == best.best_epoch), None)
    names = list(data.classes) or (list(epoch.val_class_accuracy) if epoch else [])
    counts = {split: list(c) for split, c in data.class_counts.items()}

    def count(split: str, i: int) -> int | None:
        c = counts.get(split)
        return c[i] if c is not None and i < len(c) else None

    rows = [ClassRow(name, count("train", i), count("valid", i), count("test", i),
                     epoch.val_class_accuracy.get(name) if epoch else None) for i, name in enumerate(names)]
    return rows, epoch.val_macro_f1 if epoch else None


def bin_edges(value: float) -> tuple[float, float]:
    """The 1-3-10 bin holding ``value``: 2e-3 -> (1e-3, 3e-3), 3e-3 -> (3e-3, 1e-2)."""
    exp = math.floor(math.log10(value))
    mantissa = value / 10**exp
    if mantissa >= 10 * (1 - 1e-9):  # log10 rounding just below a power of ten
        exp, mantissa = exp + 1, 1.0
    if mantissa < 1 - 1e-9:
        exp, mantissa = exp - 1, mantissa * 10
    if mantissa >= _GRID[1] * (1 - 1e-9):
        return _round(_GRID[1] * 10**exp), _round(10 ** (exp + 1))
    return _round(10**exp), _round(_GRID[1] * 10**exp)


def rate_bins(trials: Sequence[TrialRecord], param: str) -> list[Bin]:
    """Every bin from the lowest to the highest rate of ``param``, empty ones included."""
    by_bin: dict[tuple[float, float], list[TrialRecord]] = {}
    for t in trials:
        if param in t.lrs and t.lrs[param] > 0:
            by_bin.setdefault(bin_edges(t.lrs[param]), []).append(t)
    if not by_bin:
        return []
    edges = [min(by_bin)]
    while edges[-1] < max(by_bin):
        edges.append(bin_edges(edges[-1][1]))
    return [_bin(low, high, by_bin.get((low, high), [])) for low, high in edges]


def _bin(low: float, high: float, members: list[TrialRecord]) -> Bin:
    accs = [t.accuracy for t in members if t.accuracy is not None]
    div_epochs = [t.diverged_epoch for t in members if t.diverged and t.diverged_epoch is not None]
    n_div = sum(t.diverged for t in members)
    return Bin(
        low=low,
        high=high,
        trials=len(members),
        mean_accuracy=statistics.fmean(accs) if accs else None,
        max_accuracy=max(accs) if accs else None,
        diverged=n_div,
        divergence_rate=n_div / len(members) if members else None,
        median_diverged_epoch=float(statistics.median(div_epochs)) if div_epochs else None,
    )


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def _rate_params(trials: Sequence[TrialRecord]) -> list[str]:
    names = sorted({name for t in trials for name in t.lrs})
    return [n for n in names if len({t.lrs[n] for t in trials if n in t.lrs}) > 1]


def _best(trials: Sequence[TrialRecord]) -> BestTrial | None:
    best = best_trial(trials)
    if best is None:
        return None
    return BestTrial(best.number, dict(best.params), float(best.accuracy), best.test_accuracy, best.best_epoch)


# --- the plain-language reading ---------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    param: str
    threshold: float
    above: int
    above_diverged: int
    below: int
    below_diverged: int
    score: float  # Youden's J: rate above minus rate of stable trials above


def divergence_rule(trials: Sequence[TrialRecord]) -> _Rule | None:
    """The learning rate and round threshold that best split diverged from stable trials.

    For each rate and each round threshold (1, 1.5, 2, 3, 4, 5, 6, 8 times a power of ten)
    between its lowest and highest value, score the rule "diverged when above" by the share
    of diverged trials above it minus the share of stable trials above it. Ties (a gap between
    samples holds several thresholds) take the middle one.
    """
    n_div = sum(t.diverged for t in trials)
    if n_div == 0:
        return None
    best: list[_Rule] = []
    # a sampled rate before one derived from it (imdb-seed samples lr_head and divides it for the
    # lower groups): both split the trials alike, and the knob is the one a user can turn
    sampled = {name for t in trials for name in t.params}
    for param in sorted(_rate_params(trials), key=lambda name: name not in sampled):
        members = [t for t in trials if param in t.lrs]
        n_stable = sum(not t.diverged for t in members)
        n_dv = len(members) - n_stable
        if n_dv == 0 or n_stable == 0:
            continue
        values = [t.lrs[param] for t in members]
        for threshold in _nice_between(min(values), max(values)):
            above = [t for t in members if t.lrs[param] > threshold]
            a_div = sum(t.diverged for t in above)
            score = a_div / n_dv - (len(above) - a_div) / n_stable
            rule = _Rule(param, threshold, len(above), a_div, len(members) - len(above), n_dv - a_div, score)
            if not best or score > best[0].score + 1e-12:
                best = [rule]
            elif abs(score - best[0].score) <= 1e-12 and rule.param == best[0].param:
                best.append(rule)
    return best[len(best) // 2] if best else None


def _nice_between(low: float, high: float) -> list[float]:
    out = []
    for exp in range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1):
        out.extend(_round(m * 10**exp) for m in _NICE if low < _round(m * 10**exp) < high)
    return out


FEW = 10  # below this many trials on a side, a reading says it is a small sample


def _constant_rates(trials: Sequence[TrialRecord]) -> dict[str, float]:
    """Learning rates that every trial shared: fixed in the spec, so they explain nothing here."""
    names = sorted({name for t in trials for name in t.lrs})
    out = {}
    for name in names:
        values = {t.lrs[name] for t in trials if name in t.lrs}
        if len(values) == 1:
            out[name] = values.pop()
    return out


def _reading(report: Report, trials: Sequence[TrialRecord]) -> str:
    s = report.states
    n = len(trials)
    parts = [
        f"Of {n} finished trial{'s' if n != 1 else ''}, {s['complete']} completed, {s['diverged']} diverged "
        f"({_pct(s['diverged'], n)}) and {s['pruned_other']} {'was' if s['pruned_other'] == 1 else 'were'} pruned as underperforming."
    ]
    if n < FEW:
        parts.append(f"With {n} trial{'s' if n != 1 else ''}, read what follows as a first look, not a finding.")
    constants = _constant_rates(trials)
    if constants:
        fixed = ", ".join(f"{name} {rate_text(value)}" for name, value in constants.items())
        parts.append(f"Fixed in every trial: {fixed}.")
    rule = divergence_rule(trials)
    focus = rule.param if rule else next((p for p in ("lr_head", *sorted({k for t in trials for k in t.lrs}))
                                          if p in _rate_params(trials)), None)
    if s["diverged"] == 0:
        parts.append("No trial diverged.")
    elif s["diverged"] == n:
        parts.append(f"All {n} finished trials diverged: no setting tried here trained stably"
                     + (" (every learning rate was fixed; lower them)." if not _rate_params(trials) else "."))
    elif rule is None or rule.score < 0.5:
        parts.append("No single learning rate separates the diverged trials from the stable ones.")
    else:
        few = min(rule.above, rule.below) < FEW // 2
        parts.append(
            f"{rule.param} above {rate_text(rule.threshold)} diverged in {rule.above_diverged} of {rule.above} trials, "
            f"at or below it in {rule.below_diverged} of {rule.below}"
            + (" (too few trials on one side to call it a boundary yet)." if few else ".")
        )
    complete = sorted((t for t in trials if t.state == record.COMPLETE), key=lambda t: -(t.accuracy or 0))
    best = report.best
    if complete and best is not None:
        test = f", {best.test_accuracy:.4f} test" if best.test_accuracy is not None else ""
        top = [t for t in complete[: max(3, len(complete) // 10)] if focus and focus in t.lrs]
        if focus and len(top) >= 2 and focus not in constants:
            lo, hi = min(t.lrs[focus] for t in top), max(t.lrs[focus] for t in top)
            span = f"{rate_text(lo)} to {rate_text(hi)}" if rate_text(lo) != rate_text(hi) else f"{rate_text(lo)}, all of them"
            parts.append(
                f"The best {len(top)} trials used {focus} {span} "
                f"(best: trial {best.number}, {best.val_accuracy:.4f} validation{test} accuracy)."
            )
        else:
            rates = rates_text(complete[0].lrs, exclude=constants)
            parts.append(f"The best trial, {best.number}, reached {best.val_accuracy:.4f} validation{test} accuracy"
                         + (f" with {rates}." if rates else "."))
    elif not complete:
        parts.append("No trial completed, so there is no best trial yet.")
    total = report.epochs_run + report.epochs_saved
    if report.epochs_saved:
        parts.append(
            f"Pruning saved {report.epochs_saved} of {total} epochs ({_pct(report.epochs_saved, total)}); "
            f"diverged trials still ran {report.epochs_diverged} epochs."
        )
    return " ".join(parts)


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}%" if b else "0%"


# --- rendering ---------------------------------------------------------------------------------


def render(report: Report, fmt: str = "table") -> str:
    """``table`` (aligned text), ``markdown``, ``csv`` (the per-bin rows) or ``json`` (everything)."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2)
    if fmt == "csv":
        return _csv(report)
    if fmt in ("table", "markdown"):
        return _text(report, markdown=fmt == "markdown")
    raise HpoError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")


_BIN_HEADER = ["bin", "trials", "mean acc", "max acc", "diverged", "div rate", "median div epoch"]


def _bin_row(b: Bin) -> list[str]:
    def num(x: float | None, f: str) -> str:
        return "-" if x is None else format(x, f)

    return [
        f"{rate_text(b.low)} - {rate_text(b.high)}", str(b.trials), num(b.mean_accuracy, ".4f"), num(b.max_accuracy, ".4f"),
        str(b.diverged), num(b.divergence_rate, ".0%"), num(b.median_diverged_epoch, "g"),
    ]


def _grid(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return out + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda r: "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header), *map(fmt, rows)]


def _text(r: Report, markdown: bool) -> str:
    h = (lambda t: f"## {t}") if markdown else (lambda t: t)
    lines = [("# " if markdown else "") + f"Stability report: study {r.study!r}", ""]
    for table in r.rate_tables:
        lines += [h(f"{table.param} (accuracy: pruned trials at their best reported value)"), ""]
        lines += _grid(_BIN_HEADER, [_bin_row(b) for b in table.bins], markdown) + [""]
    s = r.states
    lines += [h("Trials"), ""]
    lines += _grid(["state", "trials"], [[k.replace("_", " "), str(v)] for k, v in s.items()], markdown) + [""]
    lines += [h("Best trial"), ""]
    if r.best is None:
        lines += ["no trial completed yet", ""]
    else:
        b = r.best
        test = "-" if b.test_accuracy is None else f"{b.test_accuracy:.4f}"
        lines.append(f"trial {b.number}: validation accuracy {b.val_accuracy:.4f}, test accuracy {test}, best epoch {b.best_epoch}")
        lines += [""] + _grid(["param", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in sorted(b.params.items())], markdown) + [""]
    if r.classes:
        which = f"the best trial's validation accuracy at epoch {r.best.best_epoch}" if r.best else "no best trial yet"
        lines += [h(f"Classes ({len(r.classes)}; accuracy: {which})"), ""]
        lines += _grid(["class", "train", "valid", "test", "accuracy"], [
            [c.name, *("-" if n is None else f"{n:,}" for n in (c.train, c.valid, c.test)),
             "-" if c.accuracy is None else f"{c.accuracy:.4f}"] for c in r.classes], markdown)
        if r.macro_f1 is not None:
            lines += ["", f"macro-F1 {r.macro_f1:.4f} (the mean of the per-class F1 scores; accuracy weighs classes by size)"]
        lines.append("")
    lines += [h("Epochs"), ""]
    lines.append(
        f"{r.epochs_run} epochs run; {r.epochs_diverged} on diverged trials; pruning saved {r.epochs_saved} "
        f"({r.epochs_saved_diverged} on diverged trials) against running them to max_epochs = {r.max_epochs} "
        f"(from the {r.max_epochs_source})"
    )
    lines += ["", h("Reading"), "", r.reading]
    if r.artifacts is not None:
        lines += ["", h("Artifacts"), "", f"{r.artifacts['summary']} in {r.artifacts['store']}"]
    return "\n".join(lines)


def _csv(r: Report) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["param", "bin_low", "bin_high", "trials", "mean_accuracy", "max_accuracy", "diverged", "divergence_rate", "median_diverged_epoch"])
    for table in r.rate_tables:
        for b in table.bins:
            w.writerow([table.param, b.low, b.high, b.trials, _blank(b.mean_accuracy), _blank(b.max_accuracy), b.diverged, _blank(b.divergence_rate), _blank(b.median_diverged_epoch)])
    return out.getvalue().rstrip("\n")


def _blank(x: float | None) -> Any:
    return "" if x is None else x
