import dataclasses
import json
import statistics

import optuna
import pytest

import synthetic
from hpo.analysis.report import bin_edges, build_report, divergence_rule, render
from hpo.analysis.trials import load_study_data
from hpo.errors import HpoError
from hpo import record
from hpo.spec import load_spec
from hpo.record import TrialRecord
from analysis_helpers import known_study

# lr_head alone decides each trial: 1.5e-4 pruned at epoch 2; 7e-3, 9e-3 diverge at epoch 3;
# 1.5e-2, 2.5e-2 at epoch 2; the rest complete 6 epochs.
LR_HEADS = [1.5e-4, 5e-4, 8e-4, 1.2e-3, 2e-3, 2.5e-3, 4e-3, 5e-3, 7e-3, 9e-3, 1.5e-2, 2.5e-2]


def _best_reported(lr: float) -> float:
    """The best validation accuracy a known trial reports (see synthetic._trial)."""
    final = synthetic.known_accuracy(lr)
    div = synthetic.diverged_epoch(lr)
    if div is not None:
        return final - 0.02 * (6 - (div - 1))  # the epoch before the jump
    if lr < synthetic.PRUNE_BELOW:
        return final - 0.02 * 4  # pruned after epoch 2 of 6
    return final


@pytest.fixture
def known():
    storage = optuna.storages.InMemoryStorage()
    study = known_study(storage, LR_HEADS, name="known", failed=2)
    return storage, study


def test_bin_edges_follow_the_1_3_10_grid():
    assert bin_edges(2e-3) == (1e-3, 3e-3)
    assert bin_edges(3e-3) == (3e-3, 1e-2)  # a lower edge belongs to its bin
    assert bin_edges(9.99e-3) == (3e-3, 1e-2)
    assert bin_edges(1e-2) == (1e-2, 3e-2)
    assert bin_edges(0.5) == (0.3, 1.0)


def test_lr_head_bins_are_exact(known):
    storage, _ = known
    report = build_report(load_study_data("known", storage))
    table = next(t for t in report.rate_tables if t.param == "lr_head")
    expected = {
        (1e-4, 3e-4): [1.5e-4],
        (3e-4, 1e-3): [5e-4, 8e-4],
        (1e-3, 3e-3): [1.2e-3, 2e-3, 2.5e-3],
        (3e-3, 1e-2): [4e-3, 5e-3, 7e-3, 9e-3],
        (1e-2, 3e-2): [1.5e-2, 2.5e-2],
    }
    assert [(b.low, b.high) for b in table.bins] == list(expected)
    for b, lrs in zip(table.bins, expected.values()):
        accs = [_best_reported(lr) for lr in lrs]
        div_epochs = [synthetic.diverged_epoch(lr) for lr in lrs if synthetic.diverged_epoch(lr)]
        assert b.trials == len(lrs)
        assert b.mean_accuracy == pytest.approx(sum(accs) / len(accs))
        assert b.max_accuracy == pytest.approx(max(accs))
        assert b.diverged == len(div_epochs)
        assert b.divergence_rate == pytest.approx(len(div_epochs) / len(lrs))
        assert b.median_diverged_epoch == (statistics.median(div_epochs) if div_epochs else None)
    # spelled out for the two bins where divergence starts
    assert (table.bins[3].diverged, table.bins[3].divergence_rate, table.bins[3].median_diverged_epoch) == (2, 0.5, 3.0)
    assert (table.bins[4].diverged, table.bins[4].divergence_rate, table.bins[4].median_diverged_epoch) == (2, 1.0, 2.0)


def test_states_best_trial_and_epochs_are_exact(known):
    storage, study = known
    report = build_report(load_study_data("known", storage))
    assert report.states == {"complete": 7, "diverged": 4, "pruned_other": 1, "failed": 2, "running": 0, "waiting": 0}
    best = study.trials[LR_HEADS.index(2.5e-3)]
    assert report.best.number == best.number
    assert report.best.val_accuracy == pytest.approx(synthetic.known_accuracy(2.5e-3))
    assert report.best.test_accuracy == TrialRecord.from_trial(best).test_accuracy is not None
    assert report.best.params == best.params
    assert report.max_epochs == 6 and report.max_epochs_source == "longest trial"
    assert report.epochs_run == 7 * 6 + (3 + 3 + 2 + 2) + 2
    assert report.epochs_diverged == 3 + 3 + 2 + 2
    assert report.epochs_saved_diverged == (6 - 3) * 2 + (6 - 2) * 2
    assert report.epochs_saved == report.epochs_saved_diverged + (6 - 2)


def test_stored_spec_sets_max_epochs(known):
    storage, study = known
    record.write_spec(study, load_spec("imdb", ["train.max_epochs=10"]).to_dict())
    report = build_report(load_study_data("known", storage))
    assert report.max_epochs_source == "spec"
    assert report.epochs_saved == (10 - 3) * 2 + (10 - 2) * 2 + (10 - 2)


def test_reading_names_the_threshold_and_best_range(known):
    storage, _ = known
    report = build_report(load_study_data("known", storage))
    rule = divergence_rule(load_study_data("known", storage).finished)
    assert (rule.param, rule.threshold, rule.above, rule.above_diverged) == ("lr_head", 6e-3, 4, 4)
    assert "lr_head above 6e-3 diverged in 4 of 4 trials, at or below it in 0 of 8" in report.reading
    # the best 3 complete trials: 2e-3, 2.5e-3 and 4e-3 (0.9195 beats 1.2e-3's 0.9110)
    assert "The best 3 trials used lr_head 2e-3 to 4e-3" in report.reading
    assert "Pruning saved 18 of 72 epochs (25%)" in report.reading


def test_the_boundary_is_named_on_the_sampled_rate_not_on_rates_derived_from_it(known):
    """As in imdb-seed: lr_head sampled, the lower groups' rates fixed fractions of it."""
    storage, _ = known
    derived = [dataclasses.replace(t, params={"lr_head": t.lrs["lr_head"]},
                                   lrs={"lr_embedding": t.lrs["lr_head"] / 100, "lr_encoder": t.lrs["lr_head"] / 10,
                                        "lr_head": t.lrs["lr_head"]})
               for t in load_study_data("known", storage).finished]
    rule = divergence_rule(derived)
    assert (rule.param, rule.threshold, rule.above_diverged) == ("lr_head", 6e-3, 4)


def test_formats_carry_the_same_numbers(known):
    storage, _ = known
    report = build_report(load_study_data("known", storage))
    as_json = json.loads(render(report, "json"))
    assert as_json["states"]["diverged"] == 4
    rows = [line.split(",") for line in render(report, "csv").splitlines()]
    head_rows = [r for r in rows[1:] if r[0] == "lr_head"]
    assert [int(r[3]) for r in head_rows] == [1, 2, 3, 4, 2]
    assert [float(r[7]) for r in head_rows] == [0.0, 0.0, 0.0, 0.5, 1.0]
    md = render(report, "markdown")
    assert "| 3e-3 - 1e-2 | 4 |" in md and "## Reading" in md
    table = render(report, "table")
    assert report.reading in table
    with pytest.raises(HpoError, match="unknown report format"):
        render(report, "xml")


def test_no_divergence_and_no_complete_trial_are_said_plainly():
    storage = optuna.storages.InMemoryStorage()
    known_study(storage, [1e-3, 2e-3, 3e-3], name="calm")
    assert "No trial diverged." in build_report(load_study_data("calm", storage)).reading
    known_study(storage, [1e-2, 2e-2], name="wild")
    report = build_report(load_study_data("wild", storage))
    assert report.best is None and "No trial completed" in report.reading
    assert "no trial completed yet" in render(report, "table")


@pytest.mark.parametrize("failed", [0, 3])
def test_study_without_finished_trials_is_an_error(failed):
    storage = optuna.storages.InMemoryStorage()
    known_study(storage, [], name="void", failed=failed)
    with pytest.raises(HpoError, match="no finished|no trials yet") as exc:
        load_study_data("void", storage)
    assert ("3 FAIL" in str(exc.value)) == bool(failed)


def test_lr_div_studies_bin_the_derived_rates():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="div", direction="maximize")
    dist = {"lr_head": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "lr_div": optuna.distributions.FloatDistribution(1.0, 10.0)}
    for head, div in [(1e-3, 2.0), (2e-3, 5.0)]:
        study.add_trial(optuna.trial.create_trial(
            params={"lr_head": head, "lr_div": div}, distributions=dist, value=0.8,
            user_attrs={"lr_groups": {"embedding": head / div**2, "encoder": head / div, "head": head}}))
    report = build_report(load_study_data("div", storage))
    assert [t.param for t in report.rate_tables] == ["lr_embedding", "lr_encoder", "lr_head"]
    # embedding: 1e-3 / 2**2 = 2.5e-4 and 2e-3 / 5**2 = 8e-5
    assert [(b.low, b.high, b.trials) for b in report.rate_tables[0].bins] == [(3e-5, 1e-4, 1), (1e-4, 3e-4, 1)]


def test_small_samples_are_hedged_and_a_single_best_is_not_a_range():
    storage = optuna.storages.InMemoryStorage()
    known_study(storage, [2.5e-3], name="one")
    reading = build_report(load_study_data("one", storage)).reading
    assert "With 1 trial, read what follows as a first look" in reading
    assert "The best trial, 0, reached 0.9200 validation" in reading
    assert "to 2.5e-3" not in reading and "best 1 trials" not in reading


def test_an_all_diverged_study_says_so_and_lists_the_fixed_rates():
    storage = optuna.storages.InMemoryStorage()
    known_study(storage, [2e-2, 2e-2, 2e-2], name="boom")
    reading = build_report(load_study_data("boom", storage)).reading
    assert "All 3 finished trials diverged: no setting tried here trained stably" in reading
    assert "Fixed in every trial: lr_head 2e-2." in reading
    assert "No single learning rate separates" not in reading
