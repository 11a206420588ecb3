"""Does ``trial.set_constraint`` (Optuna 5) make TPE sample fewer diverging trials? No training.

A synthetic objective stands in for training, with the landscape of the tests' known studies
(``hpo/analysis/synthetic.py``, moving to ``tests/synthetic.py``) over the ``imdb`` spec's
ranges: ``lr_head`` alone decides a trial's fate.
Validation accuracy peaks at ``lr_head = 2.5e-3`` (0.92, a parabola in log10(lr_head)) and
climbs 0.02 an epoch to it; above ``6e-3`` the trial diverges (at epoch 2 above 1e-2, else
epoch 3) and reports 0.5 from then on. The other knobs of the spec's space are sampled but do
nothing. Each trial's accuracy carries a little noise (sd 0.003, seeded by seed and trial number)
so that ties do not decide TPE's ranking.

A study runs with the default ``imdb`` spec's sampler (TPE, its start-up trials, multivariate,
constant liar) and space, under several pruners (``hpo.pruning.make_pruner`` with the spec's
pruner settings, type swapped), twice per seed, with the same seeds:

* ``without``: as hpo runs today: a diverged trial ends PRUNED (``divergence.action = "stop"``:
  at the epoch it diverged; ``"record"``: after training on to the last epoch);
* ``with``: the same, plus ``trial.set_constraint("diverged", 1.0)`` on a diverged trial and
  ``0.0`` on every other one before it ends, so TPE ranks diverged trials as infeasible.

It prints, per pruner and action, the share of diverged trials among those TPE chose (trial
number >= the start-up trials; the random start-up trials are the same in both arms) and over
all trials, the mean best COMPLETE accuracy, and per seed the diverged counts, and how many
seeds drew the very same trials with and without constraints (then the constraint changed
nothing TPE saw).

``--without-only`` runs the ``without`` arm alone, which also runs on Optuna 4 (no
``set_constraint`` there): run it under two Optuna versions to compare their TPE.

    python benchmarks/constraint_synthetic.py                         # ~1.5 min on 2 shared cores
    python benchmarks/constraint_synthetic.py --without-only --pruners median,none --actions stop
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import time
import warnings
from typing import Any, Mapping

import optuna

from hpo.pruning import make_pruner
from hpo.spec import CategoricalParam, FloatParam, IntParam, SpaceEntry, Spec, load_spec

BEST_LR = 2.5e-3
DIVERGE_ABOVE = 6e-3
NOISE_SD = 0.003
CONSTRAINT = "diverged"


@dataclasses.dataclass(frozen=True)
class Run:
    """One study: which trials diverged, the best COMPLETE value, and the lr_head drawn per trial."""

    diverged: tuple[bool, ...]
    best: float
    lr_heads: tuple[float, ...]


def accuracy(lr_head: float) -> float:
    return 0.92 - 0.08 * (math.log10(lr_head) - math.log10(BEST_LR)) ** 2


def diverged_epoch(lr_head: float) -> int | None:
    if lr_head <= DIVERGE_ABOVE:
        return None
    return 2 if lr_head > 1e-2 else 3


def _suggest(trial: optuna.Trial, space: Mapping[str, SpaceEntry]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, entry in space.items():
        if isinstance(entry, FloatParam):
            values[name] = trial.suggest_float(name, entry.low, entry.high, log=entry.log, step=entry.step)
        elif isinstance(entry, IntParam):
            values[name] = trial.suggest_int(name, entry.low, entry.high, log=entry.log, step=entry.step)
        elif isinstance(entry, CategoricalParam):
            values[name] = trial.suggest_categorical(name, list(entry.choices))
        else:  # a constant: the knob is fixed
            values[name] = entry
    return values


def _objective(spec: Spec, seed: int, action: str, constrained: bool):
    max_epochs = spec.train.max_epochs

    def objective(trial: optuna.Trial) -> float:
        lr = float(_suggest(trial, spec.space)["lr_head"])
        final = accuracy(lr) + random.Random(seed * 100_003 + trial.number).gauss(0.0, NOISE_SD)
        div = diverged_epoch(lr)

        def end(diverged: bool) -> None:
            # Set before the trial finishes: a finished trial's attributes cannot change.
            if constrained:
                trial.set_constraint(CONSTRAINT, 1.0 if diverged else 0.0)

        acc = 0.0
        for epoch in range(1, max_epochs + 1):
            acc = 0.5 if div is not None and epoch >= div else final - 0.02 * (max_epochs - epoch)
            trial.report(acc, epoch)
            if div is not None and (epoch == max_epochs or (action == "stop" and epoch >= div)):
                end(True)
                raise optuna.TrialPruned(f"diverged at epoch {div}")
            # hpo asks the pruner only about stable trials, never after the last epoch
            if div is None and epoch < max_epochs and trial.should_prune():
                end(False)
                raise optuna.TrialPruned()
        end(False)
        return acc

    return objective


def run_study(spec: Spec, pruner: str, action: str, seed: int, n_trials: int, constrained: bool) -> Run:
    s = spec.sampler
    sampler = optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
                                         constant_liar=s.constant_liar, seed=seed)
    # A fixed name: HyperbandPruner assigns brackets by a hash of the study name and trial number.
    study = optuna.create_study(direction="maximize", sampler=sampler, study_name=f"synthetic-{seed}",
                                pruner=make_pruner(dataclasses.replace(spec.pruner, type=pruner), spec.train.max_epochs))
    study.optimize(_objective(spec, seed, action, constrained), n_trials=n_trials)
    trials = study.get_trials(deepcopy=False)
    complete = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return Run(
        diverged=tuple(diverged_epoch(t.params["lr_head"]) is not None for t in trials),
        best=max(complete, default=math.nan),
        lr_heads=tuple(t.params["lr_head"] for t in trials),
    )


def _share(runs: list[Run], start: int) -> float:
    flags = [d for r in runs for d in r.diverged[start:]]
    return sum(flags) / len(flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--pruners", default="median,hyperband,successive_halving,none")
    parser.add_argument("--actions", default="stop,record", help="divergence.action values to run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="imdb spec overrides")
    parser.add_argument("--without-only", action="store_true", help="no constraints: runs on Optuna 4 too")
    args = parser.parse_args()
    if not args.without_only and not hasattr(optuna.trial.Trial, "set_constraint"):
        sys.exit(f"error: trial.set_constraint needs Optuna 5; this is Optuna {optuna.__version__}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec("imdb", args.set)
    start = spec.sampler.n_startup_trials
    lr = spec.space["lr_head"]
    print(f"Optuna {optuna.__version__}; imdb spec: TPE n_startup_trials={start}, multivariate="
          f"{spec.sampler.multivariate}, constant_liar={spec.sampler.constant_liar}; lr_head {lr}; "
          f"max_epochs {spec.train.max_epochs}; {args.trials} trials x seeds 0..{args.seeds - 1}")
    print(f"landscape: accuracy peaks at lr_head {BEST_LR:g}, diverges above {DIVERGE_ABOVE:g}\n")
    if args.without_only:
        _without_only(spec, args, start)
        return
    print(f"{'pruner':<19}{'action':<8}{'diverged, TPE trials':>24}{'diverged, all':>18}{'best acc':>16}"
          f"{'seeds fewer/same/more':>24}{'identical':>11}{'s':>6}")
    print(f"{'':<27}{'without -> with':>24}{'without -> with':>18}{'without -> with':>16}")
    for pruner in args.pruners.split(","):
        for action in args.actions.split(","):
            t0 = time.perf_counter()
            pairs = [(run_study(spec, pruner, action, seed, args.trials, False),
                      run_study(spec, pruner, action, seed, args.trials, True)) for seed in range(args.seeds)]
            off, on = [p[0] for p in pairs], [p[1] for p in pairs]
            n_off = [sum(r.diverged[start:]) for r in off]
            n_on = [sum(r.diverged[start:]) for r in on]
            fewer = sum(b < a for a, b in zip(n_off, n_on))
            more = sum(b > a for a, b in zip(n_off, n_on))
            same_trials = sum(a.lr_heads == b.lr_heads for a, b in pairs)
            print(f"{pruner:<19}{action:<8}{_share(off, start):>14.1%} -> {_share(on, start):>5.1%}"
                  f"{_share(off, 0):>10.1%} -> {_share(on, 0):>5.1%}"
                  f"{statistics.mean(r.best for r in off):>9.4f} -> {statistics.mean(r.best for r in on):.4f}"
                  f"{f'{fewer}/{args.seeds - fewer - more}/{more}':>24}{same_trials:>8}/{args.seeds}"
                  f"{time.perf_counter() - t0:>6.0f}")
            print(f"{'':<27}per seed, diverged TPE trials without: {n_off}\n{'':<27}{'':>32}with: {n_on}")


def _without_only(spec: Spec, args: argparse.Namespace, start: int) -> None:
    print(f"{'pruner':<19}{'action':<8}{'diverged, TPE trials':>22}{'diverged, all':>15}{'best acc':>10}")
    for pruner in args.pruners.split(","):
        for action in args.actions.split(","):
            with warnings.catch_warnings():
                # Optuna 4 flags multivariate and constant_liar as experimental, once per study
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                runs = [run_study(spec, pruner, action, seed, args.trials, False) for seed in range(args.seeds)]
            print(f"{pruner:<19}{action:<8}{_share(runs, start):>22.1%}{_share(runs, 0):>15.1%}"
                  f"{statistics.mean(r.best for r in runs):>10.4f}")


if __name__ == "__main__":
    main()
