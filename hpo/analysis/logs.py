"""Training logs as people have them, read into one plain :class:`TrainingLog`.

:func:`read_log` takes a file or a folder, :func:`parse_log` the text of a log (a paste, stdin);
the format is detected:

``fastai``
    the epoch table of ``fit`` / ``fit_one_cycle`` / ``fit_sgdr`` (v2, and v1 from 1.0.4x on:
    0-based epochs and a ``time`` column; early v1: ``Total time:``, 1-based epochs and a
    ``(00:52)`` cell past the header), tab- or space-separated, ``#na#`` for a value it lacks,
    progress-bar lines in between, one table per ``fit`` call;
``keras``
    Keras console output: ``Epoch k/N`` lines, each followed by the progress bar whose last
    state (``\\r``, ``\\b`` and ANSI colours included) holds the epoch's ``loss: ... - val_loss:``;
``keras-csv``, ``lightning-csv``, ``csv``, ``table``
    any comma- or whitespace-separated table with a header: Keras' ``CSVLogger`` file (``epoch``,
    then its metrics in alphabetical order), PyTorch Lightning's ``CSVLogger`` ``metrics.csv``
    (``epoch`` and ``step`` columns; step rows and epoch rows interleaved, with empty cells);
``tensorboard``
    event files, or a folder of them (scalars; the optional ``tensorboard`` package reads them);
``hpo-trial``
    a trial of an hpo study (:func:`from_trial_record`).

Rows that share an epoch number are one epoch (Lightning writes a row per logging step and per
validation): each column keeps its value there, or combines several (a rate: the first; a
gradient norm: the largest; anything else: the mean; NaN wins, so a NaN step is not averaged
away). When the numbering starts again (``fit`` called twice) the later epochs are numbered on,
and a note says so. A cell the log leaves empty (``#na#``, an empty CSV cell, a metric missing
from an epoch's line) is ``None``: not a number, and not NaN either, which is a verdict.

:func:`choose_columns` then finds the train-loss, validation-loss and accuracy columns by their
usual names, and per-group learning rates and gradient norms (``lr_head``, ``lr-Adam/pg1``,
``grad_norm_max/head``...).

Example::

    log = parse_log("epoch train_loss valid_loss accuracy time\\n0 0.52 0.41 0.83 00:05\\n1 0.38 0.36 0.85 00:05")
    log.epochs, log.columns["valid_loss"], log.format       # [0, 1], [0.41, 0.36], 'fastai'
    choose_columns(log).val_loss                            # 'valid_loss'
    choose_columns(log, {"val_loss": "train_loss"})         # a column of your choice
"""

from __future__ import annotations

import csv
import math
import os
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from hpo.errors import HpoError
from hpo.record import TrialRecord, Verdict

EXPECTED = ("an epoch table with a header (fastai, CSV, Keras CSVLogger, Lightning metrics.csv), Keras console "
            "output (Epoch k/N lines), or TensorBoard event files")
ROLES = ("train_loss", "val_loss", "accuracy")


@dataclass(frozen=True)
class TrainingLog:
    """One run's epochs: the log's own epoch numbers and its numeric columns, one value per epoch.

    ``columns[name][i]`` belongs to epoch ``epochs[i]``; ``None`` where the log has no value (a
    NaN or inf the log printed stays NaN or inf). ``recorded``: the divergence verdict of the
    process that trained the run, when it left one (hpo's own trials). ``num_classes``: how many
    classes the run's model chose among, when the source says (an hpo study does); None: unknown.
    """

    epochs: list[int]
    columns: dict[str, list[float | None]]
    format: str
    source: str
    notes: tuple[str, ...] = ()
    recorded: Verdict | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        for name, values in self.columns.items():
            if len(values) != len(self.epochs):
                raise ValueError(f"column {name!r} has {len(values)} values for {len(self.epochs)} epochs")

    def __len__(self) -> int:
        return len(self.epochs)

    def describe(self) -> str:
        """``fastai table, 12 epochs numbered 0-11`` (for people)."""
        if not self.epochs:
            return f"{self.format}, no epochs"
        return f"{self.format}, {len(self.epochs)} epochs numbered {self.epochs[0]}-{self.epochs[-1]}"


@dataclass(frozen=True)
class Columns:
    """The columns a diagnosis reads: one per role, and per layer group its rate and gradient norm.

    ``lr`` and ``grad_norm`` map a group's name (as the log names it: ``head``, ``pg1``; ``all``
    for a single, unnamed one) to its column.
    """

    train_loss: str | None = None
    val_loss: str | None = None
    accuracy: str | None = None
    lr: Mapping[str, str] = field(default_factory=dict)
    grad_norm: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss, "accuracy": self.accuracy,
                "lr": dict(self.lr), "grad_norm": dict(self.grad_norm)}

    def describe(self) -> str:
        """``train loss 'loss', validation loss 'val_loss', accuracy none; rates: ...``."""
        def named(x: str | None) -> str:
            return repr(x) if x else "none"

        text = (f"train loss {named(self.train_loss)}, validation loss {named(self.val_loss)}, "
                f"accuracy {named(self.accuracy)}")
        for what, cols in (("rates", self.lr), ("gradient norms", self.grad_norm)):
            if cols:
                text += f"; {what} " + ", ".join(f"{g} {c!r}" for g, c in cols.items())
        return text


# --- choosing columns --------------------------------------------------------------------------------

# Normalised names (lower case, separators as "_"), most specific first.
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "train_loss": ("train_loss", "train_loss_epoch", "training_loss", "trn_loss", "loss_train", "train_epoch_loss",
                   "epoch_train_loss", "loss", "epoch_loss", "train_loss_step", "loss_train_mean"),
    "val_loss": ("val_loss", "valid_loss", "validation_loss", "val_loss_epoch", "loss_val", "loss_valid",
                 "loss_validation", "validation_epoch_loss", "val_epoch_loss", "epoch_val_loss", "eval_loss",
                 "dev_loss"),
    "accuracy": ("val_accuracy", "val_acc", "valid_accuracy", "valid_acc", "validation_accuracy", "val_acc_epoch",
                 "val_accuracy_epoch", "accuracy_val", "accuracy_valid", "accuracy_validation", "acc_val", "acc_valid",
                 "validation_epoch_accuracy", "epoch_val_accuracy",
                 "eval_accuracy", "accuracy", "acc", "train_accuracy", "train_acc", "epoch_accuracy"),
}
# Matched against normalised names; "group" is where the group's name starts (in the original too).
_LR = re.compile(r"^(?:lr|learning_rate)(?:_(?P<group>.+))?$")
_GRAD_NORM = re.compile(r"^grad_(?:\d+_\d+_)?norm(?:_(?P<kind>max|mean))?(?:_(?P<group>.+))?$")
_KIND_ORDER = {"max": 0, None: 1, "mean": 2}
_NOT_METRICS = {"epoch", "epochs", "step", "global_step", "time", "wall_time", "walltime"}


def normalise(name: str) -> str:
    """``lr-Adam/pg1`` -> ``lr_adam_pg1``: how column names are compared (one character for one)."""
    return re.sub(r"[^0-9a-z]", "_", name.lower())


def choose_columns(log: TrainingLog, overrides: Mapping[str, str] | None = None) -> Columns:
    """The log's columns by role; ``overrides`` (``{"val_loss": "my_col"}``) name them instead.

    An HpoError for an unknown role or a column the log does not have.
    """
    overrides = dict(overrides or {})
    for role, name in overrides.items():
        if role not in ROLES:
            raise HpoError(f"--columns {role}={name}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if name not in log.columns:
            raise HpoError(f"--columns {role}={name}: the log has no column {name!r} "
                           f"(it has: {', '.join(log.columns) or 'none'})")
    by_norm: dict[str, str] = {}
    for name in log.columns:
        by_norm.setdefault(normalise(name), name)
    chosen = {role: overrides.get(role) or _by_candidates(by_norm, _CANDIDATES[role]) for role in ROLES}
    taken = set(chosen.values())
    return Columns(**chosen, lr=_groups(log.columns, _LR, taken), grad_norm=_groups(log.columns, _GRAD_NORM, taken))


def _by_candidates(by_norm: Mapping[str, str], candidates: Sequence[str]) -> str | None:
    for candidate in candidates:
        if candidate in by_norm:
            return by_norm[candidate]
    return None


def _groups(names: Iterable[str], pattern: re.Pattern[str], taken: set[str | None]) -> dict[str, str]:
    """Group -> column for the columns ``pattern`` matches; of a group's ``max``, plain and ``mean``
    gradient norm the first there (the rules judge the largest norm of an epoch)."""
    found: dict[str, tuple[int, str]] = {}
    for name in names:
        match = pattern.match(normalise(name))
        if not match or name in taken:
            continue
        group = _group_name(name[match.start("group"):] if match.group("group") else "")
        order = _KIND_ORDER[match.groupdict().get("kind")]
        if group not in found or order < found[group][0]:
            found[group] = (order, name)
    return {g: name for g, (_, name) in found.items()}


def _group_name(tail: str) -> str:
    # lr-Adam/pg1 -> pg1 (Lightning: optimizer/group), grad_norm_max/head -> head, learning_rate -> all
    tail = tail.split("/")[-1] if "/" in tail else tail
    return tail if tail and tail.lower() != "total" else "all"


# --- reading ------------------------------------------------------------------------------------------


def read_log(source: str | os.PathLike[str]) -> TrainingLog:
    """The log in a file or folder: a table, Keras console output, TensorBoard events or a Lightning run."""
    path = Path(source)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise HpoError(f"{path}: no such file or folder")
    if "tfevents" in path.name:
        return read_tensorboard(path)
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise HpoError(f"cannot read {path}: a binary file; expected {EXPECTED}")
    return parse_log(data.decode("utf-8", errors="replace"), str(path))


def parse_log(text: str, source: str = "<stdin>") -> TrainingLog:
    """The log in ``text``: Keras console output, or a table with a header."""
    lines = _clean_lines(text)
    if any(_KERAS_EPOCH.match(line) for line in lines):
        return _keras_console(lines, source)
    table = _csv_table(lines) or _whitespace_table(lines)
    if table is None:
        raise HpoError(f"cannot read {source}: expected {EXPECTED}")
    return _from_table(table, source)


def _read_folder(path: Path) -> TrainingLog:
    if (path / "metrics.csv").is_file():
        return read_log(path / "metrics.csv")
    if any(path.rglob("*tfevents*")):
        return read_tensorboard(path)
    found = sorted(path.rglob("metrics.csv"))
    if len(found) == 1:
        return read_log(found[0])
    if found:
        raise HpoError(f"{path} holds {len(found)} runs: pass one of " + ", ".join(str(p.parent) for p in found[:5]))
    raise HpoError(f"cannot read the folder {path}: expected TensorBoard event files or a Lightning metrics.csv in it")


# --- text: lines, cells ---------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_KERAS_EPOCH = re.compile(r"^\s*Epoch\s+(\d+)\s*/\s*\d+\s*$")
_NUMBER = r"(?:nan|[-+]?inf(?:inity)?|[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)"
_KERAS_METRIC = re.compile(rf"(?:^|\s)-\s+([A-Za-z_][\w./]*)\s*:\s*({_NUMBER})(?=\s|$)", re.IGNORECASE)
_TIME = re.compile(r"^\(?\d{1,3}(?::\d{2}){1,2}\)?$")
_MISSING = {"", "#na#", "na", "n/a", "none", "null", "-"}
_NAME = re.compile(r"^[A-Za-z_#][\w./\-#@]*$")
_CSV_NAME = re.compile(r"^[A-Za-z_#][\w./\-#@ ()]*$")  # a CSV header may have spaces in a name


def _clean_lines(text: str) -> list[str]:
    """Lines as a terminal shows them last: ANSI colours dropped, every \\r or \\b rewrite its own line."""
    text = _ANSI.sub("", text)
    text = re.sub(r"\x08+", "\r", text)
    return [seg for line in text.splitlines() for seg in line.split("\r") if seg.strip()]


class _Time:
    """A ``00:05`` cell: fastai's time column, not a metric."""


def _cell(text: str) -> float | None | type[_Time] | str:
    text = text.strip()
    if text.lower() in _MISSING:
        return None
    try:
        return float(text)
    except ValueError:
        return _Time if _TIME.match(text) else text


def _is_header(fields: Sequence[str], pattern: re.Pattern[str] = _NAME) -> bool:
    if len(fields) < 2 or not all(f and pattern.match(f) for f in fields):
        return False
    if any(isinstance(_cell(f), float) for f in fields):
        return False
    norms = [normalise(f) for f in fields]
    return any("loss" in n or n in _NOT_METRICS or "acc" in n for n in norms)


# --- Keras console ---------------------------------------------------------------------------------------


def _keras_console(lines: Sequence[str], source: str) -> TrainingLog:
    rows: list[tuple[int, dict[str, float]]] = []
    epoch: int | None = None
    for line in lines:
        match = _KERAS_EPOCH.match(line)
        if match:
            epoch = int(match.group(1))
            rows.append((epoch, {}))
            continue
        metrics = {m.group(1): float(m.group(2)) for m in _KERAS_METRIC.finditer(line)}
        if epoch is not None and metrics:
            rows[-1] = (epoch, metrics)  # the bar's last state holds the epoch's numbers
    if not any(metrics for _, metrics in rows):
        raise HpoError(f"cannot read {source}: Epoch k/N lines without '- loss: ...' lines; expected {EXPECTED}")
    names = list(dict.fromkeys(name for _, metrics in rows for name in metrics))
    cells = [[float(e), *(metrics.get(n) for n in names)] for e, metrics in rows]
    # every Epoch line is an epoch of its own: a second fit call's "Epoch 1/N" starts the count again
    return _from_table(_Table(["epoch", *names], cells, list(range(len(cells))), "keras"), source)


# --- tables ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Table:
    """A table as read: its header, its rows of cells, and for each row the part of the log it
    came from (one ``fit`` call: rows of different parts are never one epoch)."""

    header: list[str]
    rows: list[list[Any]]
    parts: list[int]
    format: str
    notes: tuple[str, ...] = ()


def _csv_table(lines: Sequence[str]) -> _Table | None:
    """A comma-separated table: the first line that names columns, and the rows of its width after it."""
    start = next((i for i, line in enumerate(lines) if "," in line), None)
    if start is None:
        return None
    reader = list(csv.reader(lines[start:]))
    header = [h.strip() for h in reader[0]]
    if not _is_header(header, _CSV_NAME):
        return None
    rows = [[_cell(c) for c in row] for row in reader[1:] if len(row) == len(header)]
    if not rows:
        return None
    norms = [normalise(h) for h in header]
    if "epoch" in norms and "step" in norms:
        fmt = "lightning-csv"
    elif norms[0] == "epoch" and header[1:] == sorted(header[1:]) and "loss" in norms:
        fmt = "keras-csv"  # CSVLogger writes epoch, then the metrics sorted by name
    else:
        fmt = "csv"
    return _Table(header, rows, [0] * len(rows), fmt)


def _whitespace_table(lines: Sequence[str]) -> _Table | None:
    """Tables separated by spaces or tabs; a repeated header (another ``fit`` call) continues the table."""
    segments: list[tuple[list[str], list[list[Any]]]] = []
    for line in lines:
        fields = line.split()
        if _is_header(fields):
            segments.append((fields, []))
        elif segments and (row := _row(fields, len(segments[-1][0]))) is not None:
            segments[-1][1].append(row)
    filled = [s for s in segments if s[1]]
    if not filled:
        return None
    header = max(filled, key=lambda s: len(s[1]))[0]
    ours = [rows for h, rows in filled if h == header]
    notes = ()
    if len(ours) < len(filled):
        notes = (f"read the table with the header {' '.join(header)!r}; other tables in the log were left out",)
    norms = [normalise(h) for h in header]
    fastai = norms[0] == "epoch" and "train_loss" in norms and "valid_loss" in norms
    early_v1 = any(line.startswith("Total time:") for line in lines)
    fmt = "fastai v1" if fastai and early_v1 else "fastai" if fastai else "table"
    return _Table(header, [r for rows in ours for r in rows], [i for i, rows in enumerate(ours) for _ in rows],
                  fmt, notes)


def _row(fields: Sequence[str], width: int) -> list[Any] | None:
    """A data row of a ``width``-column table, or None; early fastai v1 adds a ``(00:52)`` cell past its header."""
    cells = [_cell(f) for f in fields]
    if len(cells) == width + 1 and cells[-1] is _Time:
        cells = cells[:-1]
    if len(cells) != width or any(isinstance(c, str) for c in cells):
        return None
    return cells


def _from_table(table: _Table, source: str) -> TrainingLog:
    """Rows -> one value per epoch and column (see the module docstring for how rows combine)."""
    norms = [normalise(h) for h in table.header]
    epoch_at = next((i for i, n in enumerate(norms) if n in ("epoch", "epochs")), None)
    # numeric columns, and empty ones (fastai's valid_loss is all #na# without a validation set)
    keep = [i for i, n in enumerate(norms) if n not in _NOT_METRICS
            and all(row[i] is None or isinstance(row[i], float) for row in table.rows)]
    notes = list(table.notes)
    rows = list(zip(table.rows, table.parts))
    if epoch_at is None:
        notes.append("the log has no epoch column: its rows are numbered from 1")
        named = [(float(i + 1), part, row) for i, (row, part) in enumerate(rows)]
    else:
        labels = _fill_back([row[epoch_at] if isinstance(row[epoch_at], float) else None for row, _ in rows])
        named = [(label, part, row) for label, (row, part) in zip(labels, rows)
                 if label is not None and math.isfinite(label)]
    epochs, index_of, restarts = _number([label for label, _, _ in named], [part for _, part, _ in named])
    if restarts:
        notes.append(f"the log has {restarts + 1} tables (one per fit call?), each numbering its epochs from the start: "
                     f"here they are numbered on, {epochs[0]}-{epochs[-1]}")
    points = {table.header[i]: [(index_of[r], row[i] if isinstance(row[i], float) else None)
                                for r, (_, _, row) in enumerate(named)] for i in keep}
    return TrainingLog(epochs, _combine_columns(points, len(epochs)), table.format, source, tuple(notes))


def _fill_back(labels: Sequence[float | None]) -> list[float | None]:
    """A row without an epoch number belongs to the next row's epoch (Lightning's
    LearningRateMonitor writes its rows before the step's own row, epoch cell empty)."""
    out = list(labels)
    for i in range(len(out) - 2, -1, -1):
        if out[i] is None:
            out[i] = out[i + 1]
    return out


def _number(labels: Sequence[float], parts: Sequence[int]) -> tuple[list[int], list[int], int]:
    """(epochs, each row's epoch index, how often the numbering started again).

    Consecutive rows of one part with the same number are one epoch. A number lower than the
    one before, or not higher in a new part, starts the count again: those epochs are numbered
    on from the last one.
    """
    epochs: list[int] = []
    index_of: list[int] = []
    offset, restarts = 0, 0
    for i, (label, part) in enumerate(zip(labels, parts)):
        new_part = i > 0 and part != parts[i - 1]
        if i > 0 and (label < labels[i - 1] or (new_part and label <= labels[i - 1])):
            offset, restarts = epochs[-1] + 1 - int(label), restarts + 1
        if i == 0 or new_part or label != labels[i - 1]:
            epochs.append(int(label) + offset)
        index_of.append(len(epochs) - 1)
    return epochs, index_of, restarts


def _combine_columns(points: Mapping[str, Iterable[tuple[int, float | None]]], n: int) -> dict[str, list[float | None]]:
    """``{column: [(epoch index, value), ...]}`` -> ``{column: one value per epoch}``."""
    columns: dict[str, list[float | None]] = {}
    for name, pairs in points.items():
        cells: list[list[float]] = [[] for _ in range(n)]
        for i, value in pairs:
            if value is not None:
                cells[i].append(value)
        columns[name] = [_combine(name, c) for c in cells]
    return columns


def _combine(name: str, values: Sequence[float]) -> float | None:
    """An epoch's value of a column logged several times in it (Lightning's step rows)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    if any(math.isnan(v) for v in values):
        return math.nan
    norm = normalise(name)
    if _LR.match(norm):
        return values[0]  # the rate the epoch started at
    if _GRAD_NORM.match(norm) or norm.endswith("_max"):
        return max(values)
    return sum(values) / len(values)


# --- TensorBoard ------------------------------------------------------------------------------------------


def read_tensorboard(path: str | os.PathLike[str]) -> TrainingLog:
    """Scalars of a TensorBoard event file, or of every run folder under ``path`` (``train/``,
    ``validation/``... prefix their tags).

    Epochs: a scalar named ``epoch`` (Lightning logs one) numbers the steps; else the steps of
    the scalars logged least often (once an epoch: validation) end the epochs, numbered as the
    log numbers them when they count 0, 1, 2... or 1, 2, 3..., else from 1.
    """
    tb = _tensorboard()
    root = Path(path)
    files = [root] if root.is_file() else sorted(root.rglob("*tfevents*"))
    folders = list(dict.fromkeys(f.parent for f in files))
    if not folders:
        raise HpoError(f"cannot read {root}: no TensorBoard event files in it; expected {EXPECTED}")
    series: dict[str, list[tuple[int, float]]] = {}
    for folder in folders:
        prefix = "" if len(folders) == 1 else f"{folder.relative_to(root).as_posix()}/"
        for tag, points in _scalars(tb, root if root.is_file() else folder).items():
            series.setdefault(prefix + tag, []).extend(points)
    return _tensorboard_log(series, str(root))


def _tensorboard() -> Any:
    """The one place that imports the optional ``tensorboard`` package: a loader of event files."""
    try:
        from tensorboard.backend.event_processing import event_accumulator
        from tensorboard.util import tensor_util
    except ImportError:
        raise HpoError("reading TensorBoard event files needs the tensorboard package: "
                       "pip install 'hpo[tensorboard]'") from None

    class Loader:
        @staticmethod
        def load(path: Path) -> Any:
            acc = event_accumulator.EventAccumulator(
                str(path), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
            acc.Reload()
            return acc

        value = staticmethod(lambda proto: float(tensor_util.make_ndarray(proto)))

    return Loader


def _scalars(tb: Any, path: Path) -> dict[str, list[tuple[int, float]]]:
    try:
        acc = tb.load(path)
    except Exception as exc:  # a truncated or foreign file: the reader's own message
        raise HpoError(f"cannot read {path} as TensorBoard events ({exc}); expected {EXPECTED}") from None
    tags = acc.Tags()
    out = {tag: [(e.step, float(e.value)) for e in acc.Scalars(tag)] for tag in tags.get("scalars", [])}
    for tag in tags.get("tensors", []):  # TF2 / Keras write scalars as tensors of the scalars plugin
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
            out[tag] = [(e.step, tb.value(e.tensor_proto)) for e in acc.Tensors(tag)]
    return out


def _tensorboard_log(series: Mapping[str, list[tuple[int, float]]], source: str) -> TrainingLog:
    metrics = {t: sorted(p) for t, p in series.items() if normalise(t) not in _NOT_METRICS and len(p) > 1}
    if not metrics:
        raise HpoError(f"cannot read {source}: no scalar in it was logged more than once; expected {EXPECTED}")
    notes: list[str] = []
    epoch_tag = next((t for t in series if normalise(t) in ("epoch", "epochs")), None)
    if epoch_tag is not None:
        marks = sorted(series[epoch_tag])
        mark_steps = [s for s, _ in marks]

        def epoch_of(step: int) -> float:  # the epoch logged last at or before the step
            return marks[max(0, bisect_left(mark_steps, step + 1) - 1)][1]
    else:
        grid = sorted({s for s, _ in min(metrics.values(), key=lambda p: len({s for s, _ in p}))})
        counts = grid == list(range(grid[0], grid[0] + len(grid))) and grid[0] in (0, 1)
        if not counts:
            notes.append(f"TensorBoard steps {grid[0]}-{grid[-1]}: each step at which the least-often logged "
                         "scalars were written ends an epoch, numbered from 1")

        def epoch_of(step: int) -> float:  # the first epoch end at or after the step
            i = bisect_left(grid, step)
            if i == len(grid):
                return math.nan  # past the last epoch's end: an unfinished epoch
            return float(grid[i]) if counts else float(i + 1)

    labelled = {t: [(epoch_of(s), v) for s, v in p] for t, p in metrics.items()}
    epochs = sorted({int(e) for points in labelled.values() for e, _ in points if math.isfinite(e)})
    index = {e: i for i, e in enumerate(epochs)}
    points = {t: [(index[int(e)], v) for e, v in p if math.isfinite(e)] for t, p in labelled.items()}
    return TrainingLog(epochs, _combine_columns(points, len(epochs)), "tensorboard", source, tuple(notes))


# --- hpo's own trials -------------------------------------------------------------------------------------


def from_trial_record(trial: TrialRecord, study: str = "") -> TrainingLog:
    """One hpo trial's epochs (1-based, as hpo numbers them), with its per-group rates and largest
    pre-clip gradient norms, and the verdict its training process recorded."""
    columns: dict[str, list[float | None]] = {
        name: [float(v) for v in trial.series(name)] for name in ("train_loss", "val_loss", "val_accuracy")}
    for group in trial.groups:  # a group an epoch lacks reads NaN there: missing, not a NaN loss
        columns[f"lr_{group}"] = _nan_missing(trial.group_series("lr", group))
        columns[f"grad_norm_max_{group}"] = _nan_missing(trial.group_series("grad_norm_max", group))
    where = f"study {study!r}, trial {trial.number}" if study else f"trial {trial.number}"
    notes = (f"{trial.state}, {trial.epochs_run} epochs run",) if trial.outcome is not None else ()
    return TrainingLog([e.epoch for e in trial.epochs], columns, "hpo-trial", where, notes, trial.verdict)


def _nan_missing(values: Iterable[float]) -> list[float | None]:
    return [None if v is None or math.isnan(v) else float(v) for v in values]
