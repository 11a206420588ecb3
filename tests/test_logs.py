"""Reading training logs: every format from logs the real tools wrote (tests/data/logs/make_logs.py),
and the cases a paste brings (missing cells, NaN, several fit calls, no epoch column)."""

from __future__ import annotations

import builtins
import math
from pathlib import Path

import pytest

from hpo.analysis.logs import TrainingLog, choose_columns, from_trial_record, parse_log, read_log
from hpo.errors import HpoError
from hpo.record import EpochRecord, Outcome, TrialRecord, Verdict

LOGS = Path(__file__).parent / "data" / "logs"
RUNS = ("stable", "overfit", "nan", "jump")


def close(a: list[float | None], b: list[float | None], tol: float = 1e-4) -> bool:
    """Equal lists of numbers, NaN equal to NaN, to ``tol`` relative."""
    def same(x: float | None, y: float | None) -> bool:
        if x is None or y is None:
            return x is y
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=tol, abs_tol=tol)

    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("path, fmt, first, train, val, acc", [
    ("fastai-stable.txt", "fastai", 0, "train_loss", "valid_loss", "accuracy"),
    ("fastai1-stable.txt", "fastai v1", 1, "train_loss", "valid_loss", "accuracy"),
    ("keras-stable.log", "keras", 1, "loss", "val_loss", "val_accuracy"),
    ("keras-stable.csv", "keras-csv", 0, "loss", "val_loss", "val_accuracy"),
    ("lightning/stable", "lightning-csv", 0, "train_loss_epoch", "val_loss", "val_acc"),
    ("lightning/stable/events.out.tfevents.stable", "tensorboard", 0, "train_loss_epoch", "val_loss", "val_acc"),
    ("torch-stable.txt", "table", 1, "train_loss", "val_loss", "val_acc"),
    ("torch-stable", "tensorboard", 1, "Loss/train", "Loss/valid", "Accuracy/valid"),
])
def test_each_format_is_detected_with_its_own_numbering_and_columns(path: str, fmt: str, first: int, train: str,
                                                                     val: str, acc: str) -> None:
    log = read_log(LOGS / path)
    assert log.format == fmt
    assert log.epochs == list(range(first, first + 8))  # the stable runs are 8 epochs long
    cols = choose_columns(log)
    assert (cols.train_loss, cols.val_loss, cols.accuracy) == (train, val, acc)


def test_keras_console_as_printed_reads_as_the_terminal_shows_it_and_as_its_csv_logger() -> None:
    raw = (LOGS / "keras-nan.raw.log").read_bytes().decode()
    assert "\r" in raw and "\x08" in raw and "\x1b[" in raw  # the real stream: redraws, backspaces, colours
    printed, shown, csv = read_log(LOGS / "keras-nan.raw.log"), read_log(LOGS / "keras-nan.log"), read_log(LOGS / "keras-nan.csv")
    assert printed.columns.keys() == shown.columns.keys()
    assert all(close(printed.columns[k], shown.columns[k], 0) for k in printed.columns)
    assert printed.epochs == [e + 1 for e in csv.epochs]  # Keras prints 1-based, CSVLogger writes 0-based
    assert close(printed.columns["val_loss"], csv.columns["val_loss"])  # the console rounds to 4 digits
    assert math.isnan(printed.columns["loss"][3]) and printed.columns["loss"][2] == pytest.approx(0.6941, abs=1e-4)


@pytest.mark.parametrize("run", RUNS)
def test_lightning_csv_and_its_tensorboard_run_give_the_same_epochs(run: str) -> None:
    csv = read_log(LOGS / "lightning" / run)
    events = read_log(next((LOGS / "lightning" / run).glob("*tfevents*")))
    assert csv.epochs == events.epochs
    for name in ("val_loss", "train_loss_epoch", "grad_norm_head", "lr-Adam/head" if run != "nan" else "lr-SGD/head"):
        assert close(csv.columns[name], events.columns[name], 1e-5), name
    cols = choose_columns(csv)
    assert set(cols.lr) == set(cols.grad_norm) == {"embedding", "head"}  # per-group, by the groups' names


def test_lightning_step_rows_fold_into_their_epoch() -> None:
    text = ("epoch,lr-Adam/pg1,step,train_loss_step,train_loss_epoch,val_loss\n"
            ",0.01,9,,,\n0,,9,0.7,,\n0,,19,nan,,\n0,,19,,,0.6\n0,,19,,0.65,\n"
            ",0.02,29,,,\n1,,29,0.5,,\n1,,39,0.3,,\n1,,39,,0.4,\n")
    log = parse_log(text)
    assert log.format == "lightning-csv" and log.epochs == [0, 1]
    assert log.columns["lr-Adam/pg1"] == [0.01, 0.02]  # the monitor's rows carry no epoch: the next row's
    assert math.isnan(log.columns["train_loss_step"][0])  # a NaN step is not averaged away
    assert log.columns["train_loss_step"][1] == pytest.approx(0.4)
    assert log.columns["val_loss"] == [0.6, None]  # epoch 1 did not validate: missing, not NaN
    assert choose_columns(log).train_loss == "train_loss_epoch"


def test_a_second_fit_call_numbers_on_and_says_so() -> None:
    log = read_log(LOGS / "fastai-jump.txt")
    assert log.epochs == list(range(8)) and len(log.columns["valid_loss"]) == 8
    assert any("numbered on" in n for n in log.notes)
    v1 = read_log(LOGS / "fastai1-jump.txt")  # early v1: "Total time:", 1-based, a (00:05) cell
    assert v1.format == "fastai v1" and v1.epochs == list(range(1, 9))
    assert v1.columns["valid_loss"] == log.columns["valid_loss"]


def test_missing_cells_nan_and_a_table_without_epochs() -> None:
    log = parse_log("epoch\ttrain_loss\tvalid_loss\taccuracy\ttime\n0\t0.70\t#na#\t0.5\t00:02\n"
                    " 50.00% [1/2 00:02<00:02]\n1\tnan\t0.6\t0.6\t00:02\n")
    assert log.columns["valid_loss"] == [None, 0.6] and math.isnan(log.columns["train_loss"][1])
    assert "time" not in log.columns  # fastai's time column is not a metric
    bare = parse_log("loss val_loss\n0.7 0.6\n0.5 0.55\n")
    assert bare.epochs == [1, 2] and any("no epoch column" in n for n in bare.notes)


def test_columns_can_be_named_and_wrong_names_say_what_there_is() -> None:
    log = parse_log("epoch,my_train,my_val\n1,0.7,0.6\n2,0.5,0.5\n")
    assert choose_columns(log).val_loss is None
    cols = choose_columns(log, {"val_loss": "my_val", "train_loss": "my_train"})
    assert (cols.train_loss, cols.val_loss) == ("my_train", "my_val")
    with pytest.raises(HpoError, match="unknown role 'valid'.*roles: train_loss, val_loss, accuracy"):
        choose_columns(log, {"valid": "my_val"})
    with pytest.raises(HpoError, match="no column 'nope' .*my_train, my_val"):
        choose_columns(log, {"val_loss": "nope"})


@pytest.mark.parametrize("text", ["", "hello world\nno numbers here\n", "a,b\nx,y\n", "Epoch 1/3\nnothing\n"])
def test_unreadable_input_is_one_line_naming_what_was_expected(text: str) -> None:
    with pytest.raises(HpoError) as err:
        parse_log(text, "paste.txt")
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot read paste.txt") and "Keras console output" in message


def test_files_and_folders_that_are_not_logs(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(HpoError, match="binary file"):
        read_log(tmp_path / "blob.bin")
    with pytest.raises(HpoError, match="no such file"):
        read_log(tmp_path / "missing.txt")
    with pytest.raises(HpoError, match="TensorBoard event files or a Lightning metrics.csv"):
        read_log(tmp_path)


def test_without_tensorboard_installed_the_message_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name: str, *args, **kwargs):
        if name.startswith("tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(HpoError, match=r"pip install 'hpo\[tensorboard\]'"):
        read_log(LOGS / "torch-stable")


def test_an_hpo_trial_reads_as_a_log_with_its_groups_and_recorded_verdict() -> None:
    def row(e: int, val: float) -> EpochRecord:
        return EpochRecord(e, 0.5, val, 0.8, {"embedding": 0.1, "head": 1.0}, {"embedding": 0.1, "head": 2.0 * e}, 0.0,
                           {"embedding": 1e-4, "head": 1e-2}, 1.0)

    verdict = Verdict("jump", 3, 7.5, step=17)
    trial = TrialRecord(4, "PRUNED", {}, {}, 0.8, (row(1, 0.5), row(2, 0.4)),
                        Outcome(verdict, 2, 3, 10, "fp32"), {"lr_head": 1e-2})
    log = from_trial_record(trial, "s")
    assert isinstance(log, TrainingLog) and log.format == "hpo-trial" and log.source == "study 's', trial 4"
    assert log.epochs == [1, 2] and log.recorded == verdict
    cols = choose_columns(log)
    assert (cols.train_loss, cols.val_loss, cols.accuracy) == ("train_loss", "val_loss", "val_accuracy")
    assert dict(cols.grad_norm) == {"embedding": "grad_norm_max_embedding", "head": "grad_norm_max_head"}
    assert log.columns["grad_norm_max_head"] == [2.0, 4.0]
