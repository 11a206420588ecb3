import math
import random
import warnings

import optuna
import pytest
from optuna.distributions import FloatDistribution

import synthetic
from hpo.analysis.importance import EVALUATORS, format_importance, param_importances
from hpo.analysis.trials import load_study_data
from hpo.errors import HpoError
from analysis_helpers import known_study


@pytest.fixture(scope="module")
def known_data():
    storage = optuna.storages.InMemoryStorage()
    known_study(storage, synthetic.random_lr_heads(80, seed=3), name="known", failed=2)
    return load_study_data("known", storage)


@pytest.mark.parametrize("target", ["accuracy", "divergence"])
@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_lr_head_ranks_first(known_data, target, evaluator):
    result = param_importances(known_data, target, evaluator)
    names = list(result.importances)
    assert names[0] == "lr_head"
    assert result.importances["lr_head"] > 0.5
    assert sum(result.importances.values()) == pytest.approx(1.0)
    assert set(names) == set(synthetic.DISTRIBUTIONS)


def test_pruned_trials_count_and_the_table_says_how(known_data):
    pruned = [t for t in known_data.finished if t.pruned]
    assert pruned and all(t.accuracy == max(t.series("val_accuracy")) for t in pruned)
    result = param_importances(known_data, "accuracy")
    assert result.n_trials == len(known_data.finished) == 80
    text = format_importance(result)
    assert f"{len(pruned)} PRUNED trials" in text and "2 failed" in text
    assert text.splitlines()[3].split()[0] == "lr_head"  # first row of the table
    assert result.scales["lr_head"] == "log10" and result.scales["dropout"] == "linear"


def test_log_scaled_parameters_are_analysed_on_the_log_scale():
    # `a` (log, 1e-5..1) decides accuracy, but only below 1e-3: 0.2% of its linear range, 40% of
    # its log range. `b` (linear) has a smaller, even effect. On the linear scale fANOVA sees
    # `a` as nearly constant over its volume and ranks `b` first.
    rng = random.Random(0)
    dists = {"a": FloatDistribution(1e-5, 1.0, log=True), "b": FloatDistribution(0.0, 1.0)}
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="scale", direction="maximize")
    for _ in range(60):
        a, b = 10 ** rng.uniform(-5, 0), rng.uniform(0, 1)
        study.add_trial(optuna.trial.create_trial(
            params={"a": a, "b": b}, distributions=dists, value=(0.9 if a < 1e-3 else 0.7) + 0.1 * b))
    ours = param_importances(load_study_data("scale", storage), "accuracy", "fanova")
    assert list(ours.importances)[0] == "a"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optunas = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert list(optunas)[0] == "b"  # the failure the log transform exists for


def test_divergence_needs_both_outcomes():
    storage = optuna.storages.InMemoryStorage()
    calm = [lr for lr in synthetic.random_lr_heads(150, seed=2) if lr <= synthetic.DIVERGE_ABOVE][:60]
    known_study(storage, calm, name="calm")
    with pytest.raises(HpoError, match="no finished trial diverged"):
        param_importances(load_study_data("calm", storage), "divergence")
    # accuracy still ranks: in a known study lr_head alone decides it
    ranked = param_importances(load_study_data("calm", storage), "accuracy").importances
    assert list(ranked)[0] == "lr_head" and ranked["lr_head"] > 0.5


def test_bad_choices_and_tiny_studies_are_clear_errors(known_data):
    with pytest.raises(HpoError, match="unknown evaluator"):
        param_importances(known_data, "accuracy", "shap")
    with pytest.raises(HpoError, match="unknown importance target"):
        param_importances(known_data, "speed")
    storage = optuna.storages.InMemoryStorage()
    known_study(storage, [1e-3, 2e-3], name="two")
    with pytest.raises(HpoError, match="at least 3"):
        param_importances(load_study_data("two", storage), "accuracy")


def test_trials_pruned_before_any_report_count_at_the_lowest_accuracy():
    storage = optuna.storages.InMemoryStorage()
    study = known_study(storage, [1e-3, 2e-3, 3e-3, 5e-3], name="silent")
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={**study.trials[0].params, "lr_head": 2e-2},
        distributions=synthetic.DISTRIBUTIONS, user_attrs={"diverged": True, "divergence_reason": "nan", "diverged_epoch": 1}))
    result = param_importances(load_study_data("silent", storage), "accuracy", "permutation")
    lowest = min(t.value for t in study.trials if t.value is not None)
    assert result.n_trials == 5
    assert any(f"counted at the study's lowest accuracy, {lowest:.4f}" in n for n in result.notes)
    assert not math.isnan(sum(result.importances.values()))


def test_a_few_diverged_trials_among_many_stable_ones_still_point_at_lr_head():
    # 20 trials, 3 diverged (high lr_head): an unweighted forest answers "stable" for all and
    # ranks nothing; the balanced one must find lr_head.
    lr_heads = synthetic.random_lr_heads(17, seed=5)
    lr_heads = [min(x, 5e-3) for x in lr_heads] + [1.2e-2, 1.8e-2, 2.5e-2]
    storage = optuna.storages.InMemoryStorage()
    known_study(storage, lr_heads, name="few")
    data = load_study_data("few", storage)
    assert sum(t.diverged for t in data.finished) == 3
    result = param_importances(data, "divergence")
    assert next(iter(result.importances)) == "lr_head"
    assert not any("no parameter explains" in n for n in result.notes)
