"""hpo diagnose: the verdict on every real log in tests/data/logs, the overfitting definition at its
edges, advice, the JSON form, the figure, the command line and hpo's own trials."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from hpo.analysis.diagnose import (JSON_KEYS, OVERFIT_EPOCHS, OVERFIT_RISE, columns_from_pairs, diagnose,
                                   rules_from_pairs)
from hpo.analysis.logs import from_trial_record, parse_log, read_log
from hpo.cli import main
from hpo.errors import HpoError
from hpo.record import EPOCHS, OUTCOME, EpochRecord, Outcome, TrialRecord, Verdict, write_spec
from hpo.spec import DivergenceSpec, load_spec

LOGS = Path(__file__).parent / "data" / "logs"
# Every format's runs; a folder is a Lightning run (metrics.csv) or a TensorBoard run (torch-*).
FORMATS = {
    "fastai": "fastai-{}.txt", "fastai v1": "fastai1-{}.txt", "keras console": "keras-{}.log",
    "keras csv": "keras-{}.csv", "lightning csv": "lightning/{}", "lightning tensorboard": "lightning/{0}/events.out.tfevents.{0}",
    "torch table": "torch-{}.txt", "torch tensorboard": "torch-{}",
}
EXPECTED = {"stable": ("stable", None), "overfit": ("overfitting", None), "nan": ("diverged", "NaN"),
            "jump": ("diverged", "jumped")}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("run", EXPECTED)
def test_every_real_log_gets_its_verdict(fmt: str, run: str) -> None:
    d = diagnose(read_log(LOGS / FORMATS[fmt].format(run)))
    verdict, word = EXPECTED[run]
    assert d.verdict == verdict, d.render()
    if word:
        assert word in d.reason and d.recovered is False  # the NaN and jump runs never came back
    if run == "stable":
        assert d.epoch is None and d.advice is None and (d.ratio is None or d.ratio < 1.1)  # SGDR bumps below 10%


def test_the_verdict_keeps_each_logs_own_epoch_numbers() -> None:
    # The same kind of jump (the second stage's first epoch), as each tool numbers it.
    assert diagnose(read_log(LOGS / "keras-jump.log")).epoch == 5  # Keras prints Epoch 5/8
    assert diagnose(read_log(LOGS / "keras-jump.csv")).epoch == 4  # its CSVLogger writes epoch 4
    assert diagnose(read_log(LOGS / "lightning/jump")).epoch == 4  # Lightning counts from 0
    fastai = diagnose(read_log(LOGS / "fastai-jump.txt"))  # two fit calls: 0-3, then 0-3 again
    assert fastai.epoch == 4 and fastai.best_epoch == 3 and "numbered on" in fastai.render()


def test_advice_names_the_group_that_moved_and_the_restart() -> None:
    for path, moved in (("torch-jump.txt", "'embedding' and 'head'"), ("lightning/jump", "'head' and 'embedding'")):
        d = diagnose(read_log(LOGS / path))  # both runs raised both groups' rates 100x: both moved
        assert d.advice is not None
        assert f"rates of groups {moved} (e.g. 3x): their gradient norms rose" in d.advice[0], d.advice[0]
        assert any(a.startswith("clip gradients tighter: at about") for a in d.advice)
        assert any("shorten the restart cycle" in a and "went back up" in a for a in d.advice)
    bare = diagnose(read_log(LOGS / "fastai-jump.txt"))  # no rates, no norms: no group to name
    assert bare.advice is not None and bare.advice[0] == "lower the learning rate (e.g. 3x)"
    over = diagnose(read_log(LOGS / "fastai-overfit.txt"))
    assert over.advice is not None and over.advice[0].startswith(f"stop at the best epoch, {over.best_epoch}")


def _table(val: list[float], train: list[float]) -> str:
    return "epoch,train_loss,val_loss\n" + "".join(f"{i},{t},{v}\n" for i, (t, v) in enumerate(zip(train, val), 1))


FALLING = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]


@pytest.mark.parametrize("tail, train, verdict", [
    ([1.21, 1.22], FALLING, "overfitting"),            # 2 epochs above 1.2x, train falling
    ([1.19, 1.19], FALLING, "stable"),                 # below the rise
    ([1.1, 1.21], FALLING, "stable"),                  # only the last epoch above it: one bump
    ([1.21, 1.22], [0.6, 0.5, 0.4, 0.3, 0.2, 0.25, 0.3], "stable"),  # train not below its value at the best
])
def test_overfitting_is_a_lasting_rise_while_the_train_loss_keeps_falling(tail: list[float], train: list[float],
                                                                         verdict: str) -> None:
    assert (OVERFIT_RISE, OVERFIT_EPOCHS) == (0.2, 2)  # the definition the cases are cut around
    best = 0.4
    val = [0.6, 0.5, 0.45, best, 0.41, *(best * r for r in tail)]
    d = diagnose(parse_log(_table(val, train)))
    assert d.verdict == verdict, d.render()
    if verdict == "overfitting":
        assert d.epoch == 6 and d.best_epoch == 4 and d.ratio == pytest.approx(tail[-1])


def test_a_jump_that_comes_back_is_diverged_recovered_and_confirm_epochs_passes_it() -> None:
    val = [0.6, 0.5, 0.4, 0.7, 0.45, 0.41]
    train = [0.6, 0.5, 0.4, 0.8, 0.45, 0.4]
    d = diagnose(parse_log(_table(val, train)))
    assert (d.verdict, d.epoch, d.recovered) == ("diverged", 4, True)
    assert d.ratio == pytest.approx(0.7 / 0.4) and any("confirm_epochs=1" in a for a in d.advice or ())
    assert diagnose(parse_log(_table(val, train)), rules_from_pairs(["confirm_epochs=1"])).verdict == "stable"


def test_cannot_judge_without_a_validation_loss_or_enough_epochs() -> None:
    no_val = diagnose(parse_log("epoch,loss\n1,0.7\n2,nan\n3,nan\n"))
    assert no_val.verdict == "cannot judge" and "no validation-loss column" in no_val.reason
    assert "train loss became NaN/inf at epoch 2" in no_val.reason and no_val.advice
    short = diagnose(parse_log(_table([0.6, 0.5], [0.6, 0.5])))
    assert short.verdict == "cannot judge" and "only 2 epoch(s)" in short.reason
    empty = diagnose(parse_log("epoch train_loss valid_loss\n0 0.7 #na#\n1 0.6 #na#\n2 0.5 #na#\n"))
    assert empty.verdict == "cannot judge" and "is empty" in empty.reason
    short_nan = diagnose(parse_log(_table([0.6, float("nan")], [0.6, float("nan")])))
    assert short_nan.verdict == "diverged"  # a NaN needs no history


def test_the_json_form_has_exactly_its_keys_and_nulls_where_they_do_not_apply() -> None:
    stable = json.loads(diagnose(read_log(LOGS / "torch-stable.txt")).to_json())
    assert tuple(stable) == JSON_KEYS
    assert stable["verdict"] == "stable" and stable["epoch"] is None and stable["recovered"] is None
    assert stable["advice"] is None and stable["best_epoch"] == 8
    assert stable["columns"]["val_loss"] == "val_loss" and set(stable["columns"]["lr"]) == {"embedding", "head"}
    jump = json.loads(diagnose(read_log(LOGS / "keras-jump.log")).to_json())
    assert (jump["verdict"], jump["epoch"], jump["recovered"]) == ("diverged", 5, False)
    assert jump["ratio"] == pytest.approx(0.6934 / 0.3403, rel=1e-3) and jump["advice"]


def test_the_figure_is_drawn_into_the_folder(tmp_path: Path) -> None:
    path = diagnose(read_log(LOGS / "lightning/jump")).figure(tmp_path / "out")
    assert path == tmp_path / "out" / "jump-metrics-diagnose.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rules_and_columns_options_name_what_is_allowed() -> None:
    rules = rules_from_pairs(["threshold=1.0", "confirm_epochs=2"], DivergenceSpec(threshold=0.3, action="record"))
    assert (rules.threshold, rules.confirm_epochs, rules.action) == (1.0, 2, "record")
    for bad, match in (("foo=1", "known key.*threshold, train_rise"), ("threshold", "KEY=VALUE"),
                       ("threshold=x", "'x' is not a number"), ("confirm_epochs=1.5", "whole number"),
                       ("threshold=-1", "must be > 0")):
        with pytest.raises(HpoError, match=match):
            rules_from_pairs([bad])
    assert columns_from_pairs(["val_loss=my val"]) == {"val_loss": "my val"}
    with pytest.raises(HpoError, match="ROLE=NAME"):
        columns_from_pairs(["val_loss"])


def test_the_command_prints_text_or_json_and_fails_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["diagnose", str(LOGS / "fastai-jump.txt"), "--out", str(tmp_path)])
    assert text.exit_code == 0, text.output
    assert "verdict: diverged at epoch 4" in text.output and (tmp_path / "fastai-jump-diagnose.png").is_file()
    piped = runner.invoke(main, ["diagnose", "-", "--format", "json", "--rules", "threshold=1.0"],
                          input=(LOGS / "fastai-jump.txt").read_text())
    assert piped.exit_code == 0 and json.loads(piped.output)["verdict"] == "stable"  # 1.9x is below 2x
    columns = runner.invoke(main, ["diagnose", str(LOGS / "torch-stable.txt"), "--columns", "val_loss=train_loss"])
    assert columns.exit_code == 0 and "validation loss 'train_loss'" in columns.output
    (tmp_path / "notes.txt").write_text("just some words\n")
    bad = runner.invoke(main, ["diagnose", str(tmp_path / "notes.txt")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and bad.output.startswith("error: cannot read")
    assert runner.invoke(main, ["diagnose"]).exit_code == 2


def _row(e: int, val: float, head_norm: float = 1.0) -> EpochRecord:
    return EpochRecord(e, 0.3 if val < 0.6 else 0.9, val, 0.8, {"embedding": 0.1, "head": head_norm},
                       {"embedding": 0.2, "head": head_norm}, 0.0, {"embedding": 1e-4, "head": 1e-2}, 1.0)


def test_an_hpo_trial_by_its_study_and_number_with_the_studys_rules(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    write_spec(study, load_spec("imdb", ["divergence.threshold=1.5"]).to_dict())  # passes a 2.25x rise
    rows = [_row(1, 0.5), _row(2, 0.4), _row(3, 0.9, head_norm=40.0)]
    outcome = Outcome(Verdict("jump", 3, 2.25), 2, 3, 10, "fp32")  # what a study at 0.5 recorded
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={}, distributions={}, intermediate_values={1: 0.7, 2: 0.8},
        user_attrs={EPOCHS: [r.to_attr() for r in rows], OUTCOME: outcome.to_attr()}))

    def run(*extra: str) -> dict:
        result = CliRunner().invoke(main, ["diagnose", "--study", "s", "--trial", "0", "--storage", url,
                                           "--format", "json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    own = run()  # the study's threshold: the epochs pass, the recorded verdict stands
    assert (own["verdict"], own["epoch"]) == ("diverged", 3) and own["reason"].startswith("stopped while training")
    strict = run("--rules", "threshold=0.5")  # the epoch rules see the jump themselves
    assert (strict["verdict"], strict["epoch"], strict["best_epoch"]) == ("diverged", 3, 2)
    assert strict["reason"].startswith("validation loss jumped 2.25x") and "group 'head'" in strict["advice"][0]
    missing = CliRunner().invoke(main, ["diagnose", "--study", "s", "--trial", "7", "--storage", url])
    assert missing.exit_code == 2 and "has no trial 7 (its trials: 0-0)" in missing.output
    typo = CliRunner().invoke(main, ["diagnose", "--study", "typo", "--trial", "0", "--storage", url])
    assert typo.exit_code == 2 and "no study named 'typo'" in typo.output
    half = CliRunner().invoke(main, ["diagnose", "--study", "s", "--storage", url])
    assert half.exit_code == 2 and "--study and --trial go together" in half.output


def test_a_verdict_recorded_inside_an_epoch_counts_when_the_finished_epochs_look_stable() -> None:
    trial = TrialRecord(4, "PRUNED", {}, {}, 0.8, (_row(1, 0.5), _row(2, 0.4)),
                        Outcome(Verdict("jump", 3, 7.5, step=17), 2, 3, 10, "fp32"), {})
    d = diagnose(from_trial_record(trial, "s"), DivergenceSpec())
    assert (d.verdict, d.epoch, d.best_epoch) == ("diverged", 3, 2)
    assert "stopped while training" in d.reason and "step 17" in d.reason


def test_the_package_front_door_judges_a_file_path_as_the_command_does() -> None:
    import hpo

    path = LOGS / FORMATS["keras csv"].format("jump")
    from_path = hpo.diagnose(path)
    parsed = hpo.diagnose(hpo.read_log(path))
    assert from_path.verdict == parsed.verdict == "diverged"
    assert from_path.to_json() == parsed.to_json()
    out = CliRunner().invoke(main, ["diagnose", str(path), "--format", "json"])
    assert json.loads(out.output) == json.loads(from_path.to_json())


# A 4-class run that learns slowly: its loss sits between ln 2 and ln 4 (1.386), with one large gradient norm.
_FOUR_CLASS = """epoch  train_loss  val_loss  grad_norm_head
    1  1.30  1.25  150.0
    2  1.22  1.20  3.0
    3  1.15  1.16  2.5
"""


def test_chance_is_ln_k_for_k_classes_from_the_option_or_the_study() -> None:
    log = parse_log(_FOUR_CLASS)
    as_binary = diagnose(log)  # read as two classes, 1.2 never got below ln 2: "no progress"
    assert as_binary.verdict == "diverged" and "ln 2 = 0.693" in as_binary.reason
    assert diagnose(log, num_classes=4).verdict == "stable"  # below ln 4: it is learning
    stored = diagnose(dataclasses.replace(log, num_classes=4))  # what an hpo study's trial log carries
    assert stored.verdict == "stable"
    runner = CliRunner()
    out = runner.invoke(main, ["diagnose", "-", "--classes", "4"], input=_FOUR_CLASS)
    assert out.exit_code == 0 and "verdict: stable" in out.output, out.output
    bad = runner.invoke(main, ["diagnose", "-", "--classes", "1"], input=_FOUR_CLASS)
    assert bad.exit_code == 2 and "--classes" in bad.output
