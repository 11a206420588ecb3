import math

import optuna
import pytest

from hpo.divergence import CHANCE_LOSS, DivergenceMonitor, StepGuard, check_divergence
from hpo.pruning import DivergencePruner, record_epoch, verdict_of
from hpo.record import Verdict
from hpo.spec import DivergenceSpec

RULES = DivergenceSpec()
HEALTHY_GRAD = [2.0] * 12


def test_sgdr_restart_bumps_are_not_divergence():
    # fast.ai IMDB notebook: +6.5% and +11% right after warm restarts, then recovery
    val = [0.40, 0.33, 0.30, 0.30 * 1.065, 0.29, 0.28, 0.28 * 1.11, 0.27]
    assert check_divergence(val, val, HEALTHY_GRAD, RULES) is None


def test_the_reported_failure_is_a_jump_at_the_right_epoch():
    val = [0.45, 0.38, 0.34, 0.315, 0.759, 0.75, 0.75]
    v = check_divergence(val, val, HEALTHY_GRAD, RULES)
    assert v.reason == "jump" and v.epoch == 5
    assert v.ratio == pytest.approx(0.759 / 0.315)


def test_jump_is_relative_to_the_best_so_far_not_the_previous_epoch():
    val = [0.40, 0.30, 0.40, 0.44, 0.46]  # creeps up: 0.46 / 0.30 = 1.53
    v = check_divergence(val, val, HEALTHY_GRAD, RULES)
    assert v.reason == "jump" and v.epoch == 5


def test_warmup_hides_jumps_but_never_nan():
    rules = DivergenceSpec(warmup_epochs=2)
    assert check_divergence([0.7, 1.2, 0.6], [0.7] * 3, HEALTHY_GRAD, rules) is None
    v = check_divergence([math.nan], [0.7], HEALTHY_GRAD, rules)
    assert v.reason == "nan" and v.epoch == 1
    v = check_divergence([0.7, 0.6], [0.7, math.inf], HEALTHY_GRAD, rules)
    assert v.reason == "nan" and v.epoch == 2


def test_no_progress_needs_both_chance_loss_and_exploding_gradients():
    stuck = [0.71, 0.70, 0.72]
    v = check_divergence(stuck, stuck, [250.0, 3000.0, 900.0], RULES)
    assert v.reason == "no_progress" and v.epoch == 2
    # a slow but healthy learner near chance is the wrapped pruner's business, not divergence
    assert check_divergence(stuck, stuck, HEALTHY_GRAD, RULES) is None
    # exploding gradients but learning: not no_progress
    assert check_divergence([0.6, 0.5], [0.6, 0.5], [500.0, 500.0], RULES) is None
    assert CHANCE_LOSS == pytest.approx(0.6931, abs=1e-4)


def test_overfitting_is_not_divergence():
    # a real trial of the 20-trial study: val loss 1.5x its best while train loss kept falling
    val = [0.289, 0.25, 0.265, 0.311, 0.379]
    train = [0.446, 0.255, 0.178, 0.127, 0.084]
    assert check_divergence(val, train, HEALTHY_GRAD, RULES) is None
    # the same validation curve with a train loss that rose with it is a jump
    v = check_divergence(val, [0.446, 0.255, 0.178, 0.2, 0.3], HEALTHY_GRAD, RULES)
    assert v.reason == "jump" and v.epoch == 5
    # seen in a real study: an overfit model's warm restart (train 0.03 -> 0.06, val 1.56x its best)
    v = check_divergence([0.232, 0.264, 0.335, 0.361], [0.381, 0.114, 0.03, 0.062], HEALTHY_GRAD, RULES)
    assert v is None
    # train_rise = 0 drops the train condition: validation alone decides
    assert check_divergence(val, train, HEALTHY_GRAD, DivergenceSpec(train_rise=0.0)).epoch == 5


def test_step_guard_catches_sustained_explosions_after_warmup_only():
    guard = StepGuard(factor=5.0, warmup_steps=5)
    assert guard.update(10.0) is None  # inside warm-up: no running mean yet to compare with
    guard = StepGuard(factor=5.0, warmup_steps=5)
    for _ in range(10):
        assert guard.update(0.5) is None
    hits = [guard.update(6.0) for _ in range(4)]
    assert hits[0] is None  # one bad batch is noise
    hit = next(h for h in hits if h)
    assert hit[0] == "jump" and hit[1] > 5.0
    assert guard.update(math.nan) == ("nan", None)


def test_a_confident_model_s_odd_bad_batch_is_not_an_explosion():
    # seen in a real study: running mean 0.11, one batch at ~1.0 (9x); the model still beats chance
    guard = StepGuard(factor=5.0, warmup_steps=20)
    for _ in range(200):
        assert guard.update(0.11) is None
    assert guard.update(1.0) is None
    assert all(guard.update(x) is None for x in (0.12, 0.9, 0.1, 0.11))


def test_step_guard_catches_runs_that_blow_up_from_the_first_steps():
    guard = StepGuard(factor=5.0, warmup_steps=3)
    hits = [guard.update(x) for x in (0.69, 25.0, 40.0, 30.0)]
    assert hits[:3] == [None, None, None]  # warm-up
    assert hits[3][0] == "jump" and hits[3][1] > 5.0


def _study_with(pruner):
    return optuna.create_study(direction="maximize", pruner=pruner)


def _run(study, val_losses, accs):
    """One trial, reporting like the objective does; returns the epoch it was pruned at."""
    trial = study.ask()
    for epoch, (loss, acc) in enumerate(zip(val_losses, accs), start=1):
        record_epoch(trial, epoch, train_loss=loss, val_loss=loss, val_accuracy=acc, grad_norm_max={"head": 1.0})
        trial.report(acc, epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, max(accs))
    return None


def test_pruner_prunes_divergence_and_defers_the_rest_to_the_wrapped_pruner():
    median = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    study = _study_with(DivergencePruner(median, RULES))
    good = [0.40, 0.33, 0.30, 0.29]
    assert _run(study, good, [0.85, 0.88, 0.90, 0.91]) is None
    assert _run(study, good, [0.86, 0.89, 0.90, 0.92]) is None
    # stable but worse than the median from epoch 1: the wrapped MedianPruner prunes it
    pruned_at = _run(study, [0.6, 0.55, 0.5, 0.5], [0.70, 0.72, 0.75, 0.76])
    assert pruned_at == 1
    frozen = study.trials[-1]
    assert verdict_of(frozen, RULES) is None
    # diverging while its accuracy looks fine to the median pruner
    pruned_at = _run(study, [0.40, 0.32, 0.76, 0.75], [0.86, 0.89, 0.90, 0.90])
    assert pruned_at == 3
    assert verdict_of(study.trials[-1], RULES).reason == "jump"


def test_pruner_without_a_wrapped_pruner_only_prunes_divergence():
    study = _study_with(DivergencePruner(None, RULES))
    assert _run(study, [0.6, 0.55, 0.5], [0.6, 0.62, 0.65]) is None
    assert _run(study, [0.6, math.nan], [0.6, 0.5]) == 2


def test_the_monitor_gives_one_verdict_from_steps_or_epochs():
    monitor = DivergenceMonitor(RULES, steps_per_epoch=4)
    # the first epoch's spikes are tolerated by the step guard (warm-up is one epoch at least)...
    assert all(monitor.on_step(1, s, 30.0) is None for s in range(4))
    # ...NaN never is; the verdict says where, and comes once (later hits are not news)
    verdict = monitor.on_step(1, 3, math.nan)
    assert (verdict.reason, verdict.epoch, verdict.step) == ("nan", 1, 3)
    assert monitor.on_step(1, 4, math.inf) is None and monitor.verdict == verdict
    assert monitor.stops(verdict)
    # the epoch rules: the reported failure, judged epoch by epoch, fires at the jump
    monitor = DivergenceMonitor(RULES, steps_per_epoch=4)
    losses = [0.45, 0.38, 0.34, 0.315, 0.759]
    verdicts = [monitor.on_epoch(e, loss, loss, 2.0) for e, loss in enumerate(losses, start=1)]
    assert verdicts[:4] == [None] * 4
    assert (verdicts[4].reason, verdicts[4].epoch, verdicts[4].step) == ("jump", 5, None)


def test_a_monitor_restored_from_its_state_judges_like_the_uninterrupted_one():
    losses = [0.45, 0.38, 0.34, 0.315, 0.759]
    first = DivergenceMonitor(RULES, steps_per_epoch=4)
    for e, loss in enumerate(losses[:4], start=1):
        first.on_epoch(e, loss, loss, 2.0)
    second = DivergenceMonitor(RULES, steps_per_epoch=4)
    second.load_state_dict(first.state_dict())
    assert second.on_epoch(5, 0.759, 0.759, 2.0).reason == "jump"
    # without the history the jump has nothing to be measured against
    assert DivergenceMonitor(RULES, steps_per_epoch=4).on_epoch(1, 0.759, 0.759, 2.0) is None


def test_confirm_epochs_lets_a_restart_bump_come_back_and_still_catches_a_jump_that_stays():
    # lr_head 0.5 in the seed sweep: the warm restart before epoch 13 lifted val loss 1.61x, and
    # the cycle's low-rate end brought it back to its best; the seed's own run stayed up
    bump_val, bump_train = [0.61, 0.55, 0.51, 0.82, 0.50], [0.76, 0.61, 0.57, 0.81, 0.57]
    stay_val, stay_train = [0.61, 0.55, 0.51, 0.82, 0.79, 0.80], [0.76, 0.61, 0.57, 0.81, 0.78, 0.77]
    norms = [1.0] * 6
    at_once, confirmed = DivergenceSpec(), DivergenceSpec(confirm_epochs=1)
    assert check_divergence(bump_val, bump_train, norms, at_once) == Verdict("jump", 4, pytest.approx(0.82 / 0.51))
    assert check_divergence(bump_val, bump_train, norms, confirmed) is None
    assert check_divergence(stay_val[:4], stay_train[:4], norms, confirmed) is None  # not yet: one epoch up
    assert check_divergence(stay_val, stay_train, norms, confirmed) == Verdict("jump", 4, pytest.approx(0.82 / 0.51))
    # the monitor stops at the confirming epoch, with the epoch of the jump in its verdict
    monitor = DivergenceMonitor(confirmed, steps_per_epoch=10)
    seen = [monitor.on_epoch(e + 1, t, v, 1.0) for e, (v, t) in enumerate(zip(stay_val, stay_train))]
    assert seen[:4] == [None] * 4 and seen[4] == Verdict("jump", 4, pytest.approx(0.82 / 0.51)) and seen[5] is None
