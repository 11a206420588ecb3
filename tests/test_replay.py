"""hpo replay: Optuna's real pruners over stored curves, with the divergence rules in front."""

from __future__ import annotations

import json

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

import synthetic
from hpo.analysis.replay import Curve, Policy, curves_from_records, replay
from hpo.analysis.trials import load_study_data
from hpo.cli import main
from hpo.errors import HpoError
from hpo.pruning import make_pruner, record_epoch
from hpo.spec import DivergenceSpec, PrunerSpec, load_spec
from analysis_helpers import known_study

RULES = DivergenceSpec()


def _curve(number: int, val_loss: list[float], acc: list[float], state: str = "COMPLETE", whole: bool = True,
           train_loss: list[float] | None = None) -> Curve:
    return Curve(number, state, max(acc), tuple(acc), tuple(val_loss), tuple(train_loss or val_loss),
                 (1.0,) * len(acc), whole)


def test_the_study_s_own_pruner_replayed_on_its_own_study_cuts_what_it_cut():
    """A real study, run with a real MedianPruner: the replay makes exactly its decisions."""
    spec = PrunerSpec(type="median", n_startup_trials=2, warmup_epochs=0)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec, 4),
                                sampler=optuna.samplers.RandomSampler(seed=3))

    def objective(trial: optuna.Trial) -> float:
        quality = trial.suggest_float("q", 0.5, 0.9)
        for epoch in range(1, 5):
            acc = quality - 0.1 / epoch
            record_epoch(trial, epoch, train_loss=1 - acc, val_loss=1 - acc, val_accuracy=acc)
            trial.report(acc, epoch)
            if epoch < 4 and trial.should_prune():
                raise optuna.TrialPruned()
        return quality - 0.025

    study.optimize(objective, n_trials=15)
    pruned = {t.number for t in study.trials if t.state == TrialState.PRUNED}
    assert pruned  # the replay has something to reproduce
    data = load_study_data(study.study_name, study._storage)
    result = replay(curves_from_records(data.finished, 4), Policy(spec), 4, RULES)
    assert {t.number for t in result.trials if t.cut == "pruned"} == pruned
    assert result.epochs_saved == 0 and result.past_stored == 0
    # a gentler policy would run the pruned trials on, past what the study stored
    gentle = replay(curves_from_records(data.finished, 4), Policy.parse("none"), 4, RULES)
    assert gentle.cut == 0 and gentle.past_stored == len(pruned)


def test_divergence_cuts_are_checked_against_what_the_curve_did_next():
    jump_and_stay = _curve(0, [0.40, 0.33, 0.79, 0.80], [0.8, 0.85, 0.5, 0.5])
    jump_and_back = _curve(1, [0.40, 0.33, 0.79, 0.34], [0.8, 0.85, 0.5, 0.84])
    cut_at_the_end = _curve(2, [0.40, 0.33, 0.79], [0.8, 0.85, 0.5], state="PRUNED", whole=False)
    stable = _curve(3, [0.40, 0.33, 0.31, 0.30], [0.8, 0.85, 0.86, 0.87])
    result = replay([jump_and_stay, jump_and_back, cut_at_the_end, stable], Policy.parse("none"), 4, RULES)
    assert [(t.cut, t.epochs_run, t.recovered) for t in result.trials] == [
        ("diverged", 3, False), ("diverged", 3, True), ("diverged", 3, None), (None, 4, None)]
    assert (result.caught, result.false_positives, result.unknown) == (1, 1, 1)
    assert result.epochs_saved == 2  # one epoch each of the two curves that went on
    assert result.best_number == 3 and not result.best_cut
    # a higher threshold lets the jumps through: nothing cut, nothing saved
    lenient = replay([jump_and_stay, jump_and_back], Policy.parse("none"), 4, DivergenceSpec(threshold=2.0))
    assert lenient.cut == 0 and lenient.epochs_saved == 0


def test_policies_parse_and_bad_ones_are_one_line():
    p = Policy.parse("median:n_startup_trials=5,warmup_epochs=1")
    assert (p.pruner.type, p.pruner.n_startup_trials, p.pruner.warmup_epochs) == ("median", 5, 1)
    assert Policy.parse("sha:reduction_factor=2").pruner.type == "successive_halving"
    assert Policy.parse("percentile:percentile=25").pruner.percentile == 25.0
    for bad, words in [("median:startup=3", "expected KIND"), ("lottery", "pruner.type"),
                       ("median:n_startup_trials=x", "not a number")]:
        with pytest.raises(HpoError, match=words):
            Policy.parse(bad)


def test_the_replay_command_on_a_stored_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = known_study(storage, synthetic.random_lr_heads(30, seed=4), name="k")
    n_diverged = sum(1 for t in study.trials if t.user_attrs["outcome"]["verdict"])
    runner = CliRunner()
    result = runner.invoke(main, ["replay", "--study", "k", "--storage", url, "--format", "json"])
    assert result.exit_code == 0, result.output
    policies = {p["policy"]: p for p in json.loads(result.output)["policies"]}
    assert policies["none (no divergence rules)"]["cut_pruned"] + policies["none (no divergence rules)"]["cut_diverged"] == 0
    # the divergence rules alone find the stored divergences, each at its stored epoch (the curves end there)
    assert policies["none"]["cut_diverged"] == n_diverged == policies["none"]["divergence_unknown"]
    assert "median:n_startup_trials=3" in policies and len(policies) >= 8
    table = runner.invoke(main, ["replay", "--study", "k", "--storage", url, "--pruner", "median:n_startup_trials=2",
                                 "--divergence", "threshold=1.5"])
    assert table.exit_code == 0 and "median:n_startup_trials=2" in table.output and "threshold 1.5" in table.output
    bad = runner.invoke(main, ["replay", "--study", "k", "--storage", url, "--divergence", "treshold=1"])
    assert bad.exit_code == 2 and "unknown rule" in bad.stderr and "Traceback" not in bad.output


def test_a_record_only_study_replays_with_its_rules() -> None:
    """divergence.action = "record" (the seed sweep) is how a study keeps whole curves; its
    thresholds still apply, its action does not: the replay cuts at each verdict."""
    from hpo.analysis.replay import stored_rules

    rules = stored_rules(load_spec("imdb", ["divergence.action=record", "divergence.threshold=0.3"]))
    assert rules.threshold == 0.3 and rules.action == "stop"
