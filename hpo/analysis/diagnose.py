"""Judge a finished training run from its log: ``diverged``, ``overfitting``, ``stable`` or ``cannot judge``.

:func:`diagnose` applies the project's divergence rules (:func:`hpo.divergence.check_divergence`,
the same ones that stop hpo's own trials) to the epochs of a :class:`~hpo.analysis.logs.TrainingLog`
that have a validation loss, and says in the log's own epoch numbers:

``diverged``
    the rules found a ``jump`` (validation loss more than ``threshold`` above its best so far,
    the train loss up too), a NaN/inf loss, or ``no_progress``; with how far the loss jumped
    against its best (``ratio``) and whether the run came back (``recovered``: its last
    validation loss is finite and within the threshold of its best, as
    :func:`hpo.divergence.recovered` has it for replays; None when the log ends at the verdict).
``overfitting``
    not divergence in the rules' sense (they leave it to the pruner), defined here: the
    validation loss ends more than :data:`OVERFIT_RISE` (20%) above its best and has stayed
    above that for the last :data:`OVERFIT_EPOCHS` (2) or more epochs, while the train loss at
    the end is below its value at the best epoch. 20% is above the 6-11% bumps that SGDR warm
    restarts cause and below the rules' jump threshold (50%); two epochs, so that one bump at
    the end of a log is not called overfitting. ``epoch``: the first epoch of that final rise.
``stable``
    neither; ``ratio`` is the largest rise of the validation loss above its best so far (after
    the warm-up), None when it never rose.
``cannot judge``
    no validation loss, or fewer epochs with one than the rules need to call a run stable
    (``warmup_epochs + 2``: the warm-up, a best, an epoch after it). A NaN or a jump in a short
    log is still ``diverged``.

Advice is in the seed's terms: lower the rate of the group that moved (named when the log has
per-group gradient norms or rates), clip tighter, shorten the restart cycle (when a rate went
back up just before the jump), stop at the best epoch (overfitting).

Example::

    d = diagnose("fit.log")                        # or a TrainingLog: diagnose(parse_log(text))
    d.verdict, d.epoch, d.ratio, d.recovered       # 'diverged', 8, 2.41, False
    print(d.render()); d.to_json(); d.figure("out/")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from hpo.analysis.logs import Columns, TrainingLog, choose_columns, read_log
from hpo.divergence import chance_loss, check_divergence, recovered
from hpo.errors import HpoError
from hpo.record import Verdict
from hpo.spec.schema import DivergenceSpec

VERDICTS = ("diverged", "overfitting", "stable", "cannot judge")
OVERFIT_RISE = 0.2
OVERFIT_EPOCHS = 2
RESTART_RISE = 2.0  # a group's rate at least doubled since the epoch before: a warm restart
MOVED_RISE = 10.0  # a group's gradient norm this many times its median before the jump: it moved
# --rules keys: the epoch rules (the step guard's keys need step losses, which a log does not have)
RULE_KEYS = ("threshold", "train_rise", "warmup_epochs", "confirm_epochs", "no_progress_epochs", "chance_margin",
             "grad_norm_limit")
JSON_KEYS = ("verdict", "reason", "epoch", "ratio", "recovered", "best_epoch", "columns", "advice")


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` found; epochs as the log numbers them, None where a field does not apply."""

    verdict: str
    reason: str
    epoch: int | None
    ratio: float | None
    recovered: bool | None
    best_epoch: int | None
    columns: Columns
    advice: tuple[str, ...] | None
    log: TrainingLog = field(repr=False, compare=False)
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON form as a dict: exactly :data:`JSON_KEYS`."""
        ratio = None if self.ratio is None else round(self.ratio, 4)
        return {"verdict": self.verdict, "reason": self.reason, "epoch": self.epoch, "ratio": ratio,
                "recovered": self.recovered, "best_epoch": self.best_epoch, "columns": self.columns.as_dict(),
                "advice": list(self.advice) if self.advice else None}

    def to_json(self) -> str:
        """One JSON object (``hpo diagnose --format json``)."""
        return json.dumps(self.as_dict(), indent=2)

    def render(self) -> str:
        """The text for people (``hpo diagnose``)."""
        lines = [f"{self.log.source}: {self.log.describe()}", f"columns: {self.columns.describe()}",
                 f"verdict: {self.verdict}" + (f" at epoch {self.epoch}" if self.epoch is not None else ""),
                 f"  {self.reason}"]
        if self.best_epoch is not None:
            lines.append(f"best epoch: {self.best_epoch} (lowest validation loss)")
        if self.advice:
            lines.append("what to try:")
            lines.extend(f"  - {a}" for a in self.advice)
        lines.extend(f"note: {n}" for n in (*self.log.notes, *self.notes))
        return "\n".join(lines)

    def figure(self, out_dir: str | Path) -> Path:
        """Draw the curves with the verdict marked into ``out_dir``; returns the PNG's path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{_file_stem(self.log.source)}-diagnose.png"
        _draw(self).savefig(path, dpi=110)
        return path


def diagnose(log: TrainingLog | str | os.PathLike[str], rules: DivergenceSpec | None = None,
             columns: Mapping[str, str] | None = None, num_classes: int | None = None) -> Diagnosis:
    """Judge ``log`` (a parsed log, or a file or folder to read) with ``rules`` (default: the
    project's); ``columns`` names roles' columns. ``num_classes`` (K) sets the chance loss, ln K,
    that the rules measure a rise and "no progress" against: default the log's own count (an hpo
    trial's study knows it), else 2."""
    if not isinstance(log, TrainingLog):
        log = read_log(log)
    k = num_classes or log.num_classes or 2
    if k < 2:
        raise HpoError(f"num_classes = {k}: a classifier chooses among 2 classes or more")
    log = dataclasses.replace(log, num_classes=k)
    rules = rules or DivergenceSpec()
    cols = choose_columns(log, columns)
    make = lambda verdict, reason, **kw: Diagnosis(verdict, reason, columns=cols, log=log, **kw)  # noqa: E731
    if cols.val_loss is None:
        reason = f"the log has no validation-loss column (its columns: {', '.join(log.columns) or 'none'})"
        return make("cannot judge", reason + _train_nan(log, cols), epoch=None, ratio=None, recovered=None,
                    best_epoch=None, advice=("log a validation loss every epoch, or name its column: "
                                             "--columns val_loss=NAME",))
    curves = _Curves.of(log, cols)
    if not curves.val:
        return make("cannot judge", f"its validation-loss column {cols.val_loss!r} is empty" + _train_nan(log, cols),
                    epoch=None, ratio=None, recovered=None, best_epoch=None,
                    advice=("log a validation loss every epoch",))
    notes = ()
    if curves.train is None:
        rules = dataclasses.replace(rules, train_rise=0.0)
        notes = ("no train loss in the log: the jump rule judged the validation loss alone",)
    verdict = check_divergence(curves.val, curves.train or [], curves.grad, rules, k)
    if verdict is None and log.recorded is not None:
        return _recorded(log.recorded, curves, cols, log, notes)
    if verdict is not None:
        return _diverged(verdict, curves, cols, log, rules, notes)
    need = rules.warmup_epochs + 2
    if len(curves.val) < need:
        reason = (f"only {len(curves.val)} epoch(s) with a validation loss: the rules need {need} to call a run "
                  f"stable (warm-up {rules.warmup_epochs}, a best, an epoch after it)")
        return make("cannot judge", reason, epoch=None, ratio=None, recovered=None, best_epoch=curves.best_epoch,
                    advice=("train, or log, more epochs",), notes=notes)
    overfit = _overfitting(curves, cols, log, notes)
    return overfit or _stable(curves, cols, log, rules, notes)


# --- the curves the rules read ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curves:
    """The epochs of a log that have a validation loss, as the rules read them."""

    epochs: list[int]  # the log's numbers
    rows: list[int]  # their positions in the log
    val: list[float]
    train: list[float] | None  # None: no train loss in the log
    grad: list[float]  # the largest gradient norm of any group (0 when the log has none)

    @classmethod
    def of(cls, log: TrainingLog, cols: Columns) -> "_Curves":
        val_col = log.columns[cols.val_loss or ""]
        rows = [i for i, v in enumerate(val_col) if v is not None]
        train = None
        if cols.train_loss is not None:
            train = _filled([log.columns[cols.train_loss][i] for i in rows])
        grads = [[log.columns[c][i] for c in cols.grad_norm.values()] for i in rows]
        grad = [max((g for g in gs if g is not None), default=0.0) for gs in grads]
        return cls([log.epochs[i] for i in rows], rows, [float(val_col[i]) for i in rows], train, grad)  # type: ignore[arg-type]

    @property
    def best_index(self) -> int | None:
        finite = [(v, i) for i, v in enumerate(self.val) if math.isfinite(v)]
        return min(finite)[1] if finite else None

    @property
    def best_epoch(self) -> int | None:
        i = self.best_index
        return None if i is None else self.epochs[i]


def _filled(values: Sequence[float | None]) -> list[float] | None:
    """Missing train losses take the nearest earlier value (the first known one at the start)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    out, last = [], known[0]
    for v in values:
        last = v if v is not None else last
        out.append(last)
    return out


def _train_nan(log: TrainingLog, cols: Columns) -> str:
    if cols.train_loss is None:
        return ""
    for epoch, v in zip(log.epochs, log.columns[cols.train_loss]):
        if v is not None and not math.isfinite(v):
            return f"; its train loss became NaN/inf at epoch {epoch}"
    return ""


# --- verdicts ---------------------------------------------------------------------------------------------


def _diverged(verdict: Verdict, c: _Curves, cols: Columns, log: TrainingLog, rules: DivergenceSpec,
              notes: tuple[str, ...]) -> Diagnosis:
    j = verdict.epoch - 1
    back = recovered(c.val, verdict.epoch, verdict, rules, log.num_classes or 2)
    epoch = c.epochs[j]
    if verdict.reason == "jump":
        before = min(c.val[:j])
        where = c.epochs[c.val.index(before)]
        reason = (f"validation loss jumped {verdict.ratio:.2f}x above its best so far ({before:.4g}, epoch {where}) "
                  f"at epoch {epoch}")
        if c.train is not None:
            reason += f", the train loss up too ({min(c.train[:j]):.4g} -> {c.train[j]:.4g})"
    elif verdict.reason == "nan":
        which = [name for name, v in (("validation", c.val[j]), ("train", (c.train or [0.0] * len(c.val))[j]))
                 if not math.isfinite(v)]
        reason = f"{' and '.join(which)} loss became NaN/inf at epoch {epoch}"
    else:
        k = log.num_classes or 2
        reason = (f"the validation loss never got below chance (ln {k} = {chance_loss(k):.3f}) by epoch {epoch} while a "
                  f"gradient norm reached {max(c.grad[:j + 1]):.3g} (limit {rules.grad_norm_limit:g})")
    reason += _came_back(back, c, j, rules)
    ratio = verdict.ratio if verdict.reason == "jump" else None
    advice = _divergence_advice(verdict, c, cols, log, j, back, rules)
    return Diagnosis("diverged", reason, epoch, ratio, back, c.best_epoch, cols, advice, log, notes)


def _came_back(back: bool | None, c: _Curves, j: int, rules: DivergenceSpec) -> str:
    if back is None:
        return "; the log ends there"
    last = c.val[-1]
    if back:
        return (f"; it came back: its last validation loss ({last:.4g}, epoch {c.epochs[-1]}) is within "
                f"{rules.threshold:.0%} of its best")
    if not math.isfinite(last):
        return f"; it never came back (still NaN/inf at epoch {c.epochs[-1]})"
    best = min(v for v in c.val if math.isfinite(v))
    return f"; it never came back (epoch {c.epochs[-1]}: {last / best:.2f}x its best)"


def _recorded(verdict: Verdict, c: _Curves, cols: Columns, log: TrainingLog, notes: tuple[str, ...]) -> Diagnosis:
    """A verdict the training process recorded that the finished epochs do not show (hpo's step guard)."""
    reason = f"stopped while training: {verdict.describe()} (the finished epochs before it look stable)"
    advice = ("lower the learning rate of the group that moved (hpo plot --trial N shows each group's "
              "update ratio and gradient norm step by step)", "clip gradients tighter")
    return Diagnosis("diverged", reason, verdict.epoch, verdict.ratio, None, c.best_epoch, cols, advice, log, notes)


def _overfitting(c: _Curves, cols: Columns, log: TrainingLog, notes: tuple[str, ...]) -> Diagnosis | None:
    b = c.best_index
    if b is None or c.train is None:
        return None
    best, limit = c.val[b], c.val[b] * (1 + OVERFIT_RISE)
    k = 0
    while k < len(c.val) - b - 1 and c.val[-1 - k] > limit:
        k += 1
    if k < OVERFIT_EPOCHS or not c.train[-1] < c.train[b]:
        return None
    start = len(c.val) - k
    ratio = c.val[-1] / best
    reason = (f"the validation loss ends {ratio:.2f}x its best ({best:.4g}, epoch {c.epochs[b]}) and stayed more "
              f"than {OVERFIT_RISE:.0%} above it from epoch {c.epochs[start]} on, while the train loss kept falling "
              f"({c.train[b]:.4g} -> {c.train[-1]:.4g})")
    advice = (f"stop at the best epoch, {c.epochs[b]}: early stopping on the validation loss, or keep that "
              "epoch's weights",
              "to move the best epoch later: more regularisation (dropout, weight decay) or more data")
    return Diagnosis("overfitting", reason, c.epochs[start], ratio, None, c.epochs[b], cols, advice, log, notes)


def _stable(c: _Curves, cols: Columns, log: TrainingLog, rules: DivergenceSpec, notes: tuple[str, ...]) -> Diagnosis:
    rises = [(c.val[e] / min(c.val[:e]), e) for e in range(max(1, rules.warmup_epochs), len(c.val))]
    top, at = max(rises, default=(0.0, 0))
    b = c.best_index
    reason = (f"no divergence: the validation loss never rose more than {rules.threshold:.0%} above its best so far "
              f"with the train loss up too; best {c.val[b]:.4g} at epoch {c.epochs[b]}") if b is not None else ""
    if top > 1:
        reason += f"; its largest rise was {top:.2f}x its best so far (epoch {c.epochs[at]})"
    return Diagnosis("stable", reason, None, top if top > 1 else None, None, c.best_epoch, cols, None, log, notes)


# --- advice -----------------------------------------------------------------------------------------------


def _divergence_advice(verdict: Verdict, c: _Curves, cols: Columns, log: TrainingLog, j: int, back: bool | None,
                       rules: DivergenceSpec) -> tuple[str, ...]:
    epoch = c.epochs[j]
    advice = [_lower_rate(c, cols, log, j)]
    if verdict.reason == "no_progress":
        advice[0] += "; about 10x: the model never learned"
    norms = [g for g in c.grad[:j] if g > 0]
    if norms:
        typical = statistics.median(norms)
        there = f"it reached {c.grad[j]:.3g} there" if math.isfinite(c.grad[j]) else "it was NaN/inf there"
        advice.append(f"clip gradients tighter: at about {typical:.3g} or below (the median of the epochs' largest "
                      f"pre-clip norms before epoch {epoch}; {there})")
    else:
        advice.append("clip gradients tighter (torch.nn.utils.clip_grad_norm_ at about the norm of the "
                      "stable epochs)")
    restart = _restart_before(c, cols, log, j)
    if restart:
        advice.append(restart)
    elif not cols.lr and verdict.reason == "jump":
        advice.append(f"if the learning rate restarted (SGDR) just before epoch {epoch}: shorten the restart "
                      "cycle, or restart at a lower peak")
    if back:
        advice.append("it came back: with --rules confirm_epochs=1 the rules wait an epoch before calling a jump "
                      "(a bump that an SGDR cycle's end brings back passes)")
    return tuple(advice)


def _lower_rate(c: _Curves, cols: Columns, log: TrainingLog, j: int) -> str:
    """Name the groups that moved: those whose gradient norm rose :data:`MOVED_RISE` times its own
    median before the jump or more (else the one that rose most); without norms, the group with
    the highest rate there."""
    row = c.rows[j]
    rises = []
    for group, col in cols.grad_norm.items():
        before = [v for v in (log.columns[col][i] for i in c.rows[:j]) if v is not None and v > 0]
        now = log.columns[col][row]
        if group != "all" and before and now is not None and math.isfinite(now):
            rises.append((now / statistics.median(before), group))
    if len(cols.grad_norm) >= 2 and rises:
        rises.sort(reverse=True)
        moved = [(r, g) for r, g in rises if r >= MOVED_RISE] or rises[:1]
        if len(moved) == 1:
            rise, group = moved[0]
            return (f"lower the learning rate of group {group!r} (e.g. 3x): its gradient norm rose {rise:.3g}x its "
                    f"earlier median at epoch {c.epochs[j]}, the most of any group")
        names = " and ".join(f"{g!r}" for _, g in moved)
        how = " and ".join(f"{r:.3g}x" for r, _ in moved)
        return (f"lower the learning rates of groups {names} (e.g. 3x): their gradient norms rose {how} their "
                f"earlier medians at epoch {c.epochs[j]}")
    rates = {g: log.columns[col][row] for g, col in cols.lr.items() if g != "all"}
    top = sorted((r, g) for g, r in rates.items() if r is not None and math.isfinite(r))
    if len(top) >= 2 and top[-1][0] > top[-2][0]:  # a tie names no group
        rate, group = top[-1]
        return (f"lower the learning rate of group {group!r} (e.g. 3x): at {rate:.3g} it had the highest "
                f"rate of the groups at epoch {c.epochs[j]}")
    return "lower the learning rate (e.g. 3x)"


def _restart_before(c: _Curves, cols: Columns, log: TrainingLog, j: int) -> str | None:
    """Advice when a group's rate went back up (a warm restart) at the jump's epoch or the one before."""
    row = c.rows[j]
    for col in cols.lr.values():
        rates = log.columns[col]
        for at in (row, row - 1):
            if at < 1 or rates[at] is None or rates[at - 1] is None or not rates[at - 1]:
                continue
            if rates[at] >= RESTART_RISE * rates[at - 1]:
                return (f"shorten the restart cycle, or restart at a lower peak: the rate went back up "
                        f"{rates[at] / rates[at - 1]:.3g}x at epoch {log.epochs[at]}, as it diverged")
    return None


# --- options ----------------------------------------------------------------------------------------------


def rules_from_pairs(pairs: Sequence[str], base: DivergenceSpec | None = None) -> DivergenceSpec:
    """``["threshold=1.0", "confirm_epochs=1"]`` over ``base`` (default: the project's rules)."""
    known = {f.name: f for f in dataclasses.fields(DivergenceSpec)}
    values = dataclasses.asdict(base) if base is not None else {}
    allowed = f"rules: {', '.join(RULE_KEYS)}"
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or key not in RULE_KEYS:
            raise HpoError(f"--rules {pair}: expected KEY=VALUE with a known key ({allowed})")
        try:
            number = float(text)
        except ValueError:
            raise HpoError(f"--rules {pair}: {text.strip()!r} is not a number ({allowed})") from None
        if known[key].type == "int":
            if number != int(number):
                raise HpoError(f"--rules {pair}: {key} takes a whole number")
            values[key] = int(number)
        else:
            values[key] = number
    return DivergenceSpec(**values)


def columns_from_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["val_loss=my_col"]`` -> ``{"val_loss": "my_col"}`` (roles are checked by choose_columns)."""
    out = {}
    for pair in pairs:
        role, sep, name = pair.partition("=")
        if not sep or not role.strip() or not name.strip():
            raise HpoError(f"--columns {pair}: expected ROLE=NAME, e.g. --columns val_loss=valid_loss")
        out[role.strip()] = name.strip()
    return out


# --- the figure -------------------------------------------------------------------------------------------

_COLOURS = {"diverged": "tab:red", "overfitting": "tab:orange", "stable": "tab:green", "cannot judge": "tab:gray"}


def _file_stem(source: str) -> str:
    """``logs/fit.txt`` -> ``fit``, ``run3/metrics.csv`` -> ``run3``, ``study 'x', trial 3`` ->
    ``study-x-trial-3``, ``<stdin>`` -> ``stdin``."""
    path = Path(source)
    if path.name == "metrics.csv" or "tfevents" in path.name:  # Lightning's and TensorBoard's names say nothing
        name = f"{path.parent.name}-{'tensorboard' if 'tfevents' in path.name else 'metrics'}"
    else:
        name = path.stem if "/" in source or "." in source else source
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "log"


def _draw(d: Diagnosis) -> Any:
    """The curves with the verdict marked: matplotlib's object API, no pyplot state (the one import)."""
    from matplotlib.figure import Figure

    log, cols = d.log, d.columns
    lower = [(what, groups) for what, groups in (("pre-clip gradient norm", cols.grad_norm), ("learning rate", cols.lr))
             if groups]
    fig = Figure(figsize=(9, 4.2 + 2.3 * len(lower)), layout="constrained")
    axes = fig.subplots(1 + len(lower), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [2] + [1] * len(lower)})[:, 0]
    ax = axes[0]
    finite: list[float] = []
    for role in ("train_loss", "val_loss"):
        name = getattr(cols, role)
        if name:
            xs, ys = _points(log, name)
            finite += ys
            ax.plot(xs, ys, marker=".", label=f"{role.replace('_', ' ')} ({name})")
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_yscale("log")  # a jump to 50x would flatten everything else
    for role in ("train_loss", "val_loss"):
        name = getattr(cols, role)
        bad = [e for e, v in zip(log.epochs, log.columns[name]) if v is not None and not math.isfinite(v)] if name else []
        if bad:
            ax.plot(bad, [max(finite, default=1.0)] * len(bad), "x", color="tab:red", ms=9, label=f"{name}: NaN/inf")
    ax.set_ylabel("loss")
    if cols.accuracy:
        twin = ax.twinx()
        twin.plot(*_points(log, cols.accuracy), "--", color="tab:gray", alpha=0.7)
        twin.set_ylabel(f"accuracy ({cols.accuracy}), dashed", color="tab:gray")
    if d.best_epoch is not None:
        ax.axvline(d.best_epoch, color="tab:green", ls=":", lw=1.2, label=f"best epoch {d.best_epoch}")
    for a in axes:
        if d.epoch is not None:
            a.axvline(d.epoch, color=_COLOURS[d.verdict], lw=2, alpha=0.7,
                      label=f"{d.verdict} at epoch {d.epoch}" if a is ax else None)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("\n".join(textwrap.wrap(f"{d.verdict}: {d.reason}", 120)[:3]), fontsize=9,
                 color=_COLOURS[d.verdict])
    for a, (what, groups) in zip(axes[1:], lower):
        for group, name in groups.items():
            a.plot(*_points(log, name, positive=True), marker=".", label=group)
        a.set_yscale("log")
        a.set_ylabel(what, fontsize=9)
        a.legend(fontsize=8, title="group", title_fontsize=8)
    axes[-1].set_xlabel(f"epoch, as the log numbers it ({log.source})")
    return fig


def _points(log: TrainingLog, name: str, positive: bool = False) -> tuple[list[int], list[float]]:
    """The epochs where the column has a finite value (a positive one for a log axis)."""
    pairs = [(e, v) for e, v in zip(log.epochs, log.columns[name])
             if v is not None and math.isfinite(v) and (v > 0 or not positive)]
    return [e for e, _ in pairs], [v for _, v in pairs]
