"""A study as the spec describes it: sampler, pruner, creation or resumption, and its tally.

Optuna stores trials but not the sampler or pruner, so every process that works on a study
builds them from the spec here.

Example::

    study = open_study(spec, open_storage("sqlite:///hpo.db"), seed=0)
    tally(study).finished      # COMPLETE + PRUNED trials so far
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.pruning import make_pruner
from hpo.spec import SamplerSpec, Spec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def make_sampler(spec: SamplerSpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler; ``seed`` (from the command line) wins over ``sampler.seed``."""
    seed = spec.seed if seed is None else seed
    if spec.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # multivariate and constant_liar are stable in practice but flagged experimental in Optuna 4.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(
        n_startup_trials=spec.n_startup_trials,
        multivariate=spec.multivariate,
        constant_liar=spec.constant_liar,
        seed=seed,
    )


def open_study(spec: Spec, storage: optuna.storages.BaseStorage, seed: int | None = None) -> optuna.Study:
    """Create the spec's study in ``storage``, or load it to continue where it stopped."""
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(spec.sampler, seed),
        pruner=make_pruner(spec.pruner, spec.divergence, spec.train.max_epochs),
        load_if_exists=True,
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise HpoError(f"study {spec.name!r} in this storage is not a maximize study: choose another --study name")
    return study


def load_existing(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """An existing study by name, or an HpoError listing the studies that do exist."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        raise HpoError(f"no study named {name!r} in this storage (studies: {', '.join(sorted(names)) or 'none'})")
    return optuna.load_study(study_name=name, storage=storage)


def is_diverged(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.PRUNED and bool(trial.user_attrs.get("diverged"))


@dataclass(frozen=True)
class Tally:
    complete: int
    diverged: int
    pruned_other: int
    failed: int
    running: int
    best: FrozenTrial | None

    @property
    def finished(self) -> int:
        return self.complete + self.diverged + self.pruned_other


def tally(study: optuna.Study) -> Tally:
    trials = study.get_trials(deepcopy=False)
    count = lambda pred: sum(1 for t in trials if pred(t))  # noqa: E731
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return Tally(
        complete=len(complete),
        diverged=count(is_diverged),
        pruned_other=count(lambda t: t.state == TrialState.PRUNED and not is_diverged(t)),
        failed=count(lambda t: t.state == TrialState.FAIL),
        running=count(lambda t: t.state == TrialState.RUNNING),
        best=max(complete, key=lambda t: t.value) if complete else None,
    )
