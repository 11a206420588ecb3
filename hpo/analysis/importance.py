"""Which hyperparameters matter: for the best accuracy, or for whether training diverges.

Optuna's evaluators read only COMPLETE trials and split log-scaled parameters on the linear
scale. Here every finished trial is first rewritten into an in-memory study whose parameters
are on the scale they were sampled on (``log10`` for log distributions) and whose value is the
chosen target, then Optuna's own evaluator (or scikit-learn's permutation importance) runs on
it. The targets:

* ``accuracy``: the trial's best validation accuracy. PRUNED trials count with the best value
  they reported; a trial pruned before its first report counts at the study's lowest accuracy.
* ``divergence``: 1 for a diverged trial, 0 for any other finished trial.

Evaluators: ``ped-anova`` (default for accuracy; well under a second at 1,000 trials),
``fanova`` (Optuna's default, ~30 s at 1,000 trials), ``mdi`` (mean decrease in impurity of a
random forest) and ``permutation`` (default for divergence: a random forest classifier and
scikit-learn's permutation importance).

Example::

    result = param_importances(load_study_data("imdb", storage), target="divergence")
    next(iter(result.importances))      # 'lr_head'
    print(format_importance(result))
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo.analysis.trials import StudyData, TrialRecord
from hpo.errors import HpoError

TARGETS = ("accuracy", "divergence")
EVALUATORS = ("ped-anova", "fanova", "mdi", "permutation")
DEFAULT_EVALUATOR = {"accuracy": "ped-anova", "divergence": "permutation"}


@dataclass(frozen=True)
class Importance:
    """Normalised importances (sum 1, largest first) and how they were obtained."""

    target: str
    evaluator: str
    importances: dict[str, float]
    scales: dict[str, str]  # parameter -> "log10" | "linear" | "categorical"
    n_trials: int
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "evaluator": self.evaluator, "n_trials": self.n_trials,
            "importances": self.importances, "scales": self.scales, "notes": self.notes,
        }


def param_importances(
    data: StudyData, target: str = "accuracy", evaluator: str | None = None, seed: int = 0
) -> Importance:
    """Importance of each varying parameter of ``data`` for ``target`` with ``evaluator``."""
    if target not in TARGETS:
        raise HpoError(f"unknown importance target {target!r} (choose from {', '.join(TARGETS)})")
    evaluator = evaluator or DEFAULT_EVALUATOR[target]
    if evaluator not in EVALUATORS:
        raise HpoError(f"unknown evaluator {evaluator!r} (choose from {', '.join(EVALUATORS)})")
    trials = data.finished
    space = _search_space(trials)
    if not space:
        raise HpoError(f"study {data.name!r}: no parameter varies across its finished trials, nothing to rank")
    trials = [t for t in trials if all(name in t.params for name in space)]
    y, notes = _targets(data.name, trials, target)
    if len(trials) < 3:
        raise HpoError(
            f"study {data.name!r} has {len(trials)} finished trial(s) with these parameters: "
            "importance needs at least 3"
        )
    left_out = sum(n for s, n in data.states.items() if s not in ("COMPLETE", "PRUNED"))
    if left_out:
        notes.append(f"{left_out} failed, running or waiting trial(s) left out")
    scaled = {name: _scaled(dist) for name, dist in space.items()}
    logs = [name for name, dist in scaled.items() if dist[1] == "log10"]
    if logs:
        notes.append(f"analysed on the log10 scale, as sampled: {', '.join(logs)}")
    if evaluator == "permutation":
        raw = _permutation(trials, y, scaled, classify=target == "divergence", seed=seed)
    else:
        raw = _optuna_evaluator(trials, y, scaled, evaluator, target, seed)
    importances = _normalise(raw)
    if not any(importances.values()):
        notes.append("no parameter explains the outcome in these trials (too few or too noisy to rank): run more trials")
    return Importance(
        target=target,
        evaluator=evaluator,
        importances=importances,
        scales={name: scale for name, (_, scale) in scaled.items()},
        n_trials=len(trials),
        notes=notes,
    )


def format_importance(result: Importance) -> str:
    """A table, largest first, with a bar per parameter and the notes on how trials counted."""
    what = "best validation accuracy" if result.target == "accuracy" else "whether a trial diverged"
    lines = [f"importance for {what} ({result.evaluator}, {result.n_trials} trials)", ""]
    width = max(len("parameter"), *(len(n) for n in result.importances))
    lines.append(f"  {'parameter':<{width}}  importance  scale")
    for name, value in result.importances.items():
        bar = "#" * round(value * 40)
        lines.append(f"  {name:<{width}}  {value:10.3f}  {result.scales[name]:<11}  {bar}".rstrip())
    lines.append("")
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)


def _search_space(trials: Sequence[TrialRecord]) -> dict[str, BaseDistribution]:
    """Parameters that vary, with one distribution covering every range they were sampled from.

    A study continued after ``--set space.lr_head.high=...`` holds two ranges for one
    parameter; their union keeps every trial. A parameter sampled with different kinds (log and
    linear, other choices) is left out rather than compared across scales.
    """
    merged: dict[str, BaseDistribution] = {}
    dropped: set[str] = set()
    for trial in trials:
        for name, dist in trial.distributions.items():
            if name in dropped:
                continue
            seen = merged.get(name)
            if seen is None:
                merged[name] = dist
            elif isinstance(dist, (FloatDistribution, IntDistribution)) and type(dist) is type(seen) and dist.log == seen.log:
                merged[name] = type(dist)(low=min(seen.low, dist.low), high=max(seen.high, dist.high), log=dist.log)
            elif dist != seen:
                dropped.add(name)
                del merged[name]
    # A parameter missing from most trials (added late to the space) would shrink the sample.
    common = {n: d for n, d in merged.items() if sum(n in t.params for t in trials) >= 0.5 * len(trials)}
    return {n: d for n, d in sorted(common.items()) if not d.single() and _varies(trials, n)}


def _varies(trials: Sequence[TrialRecord], name: str) -> bool:
    return len({t.params[name] for t in trials if name in t.params}) > 1


def _scaled(dist: BaseDistribution) -> tuple[BaseDistribution, str]:
    if isinstance(dist, CategoricalDistribution):
        return dist, "categorical"
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    if dist.log:
        return FloatDistribution(math.log10(dist.low), math.log10(dist.high)), "log10"
    return FloatDistribution(float(dist.low), float(dist.high)), "linear"


def _to_scale(value: Any, scale: str) -> Any:
    if scale == "log10":
        return math.log10(value)
    if scale == "linear":
        return float(value)
    return value


def _targets(name: str, trials: list[TrialRecord], target: str) -> tuple[list[float], list[str]]:
    if target == "divergence":
        n_div = sum(t.diverged for t in trials)
        if n_div == 0 or n_div == len(trials):
            which = "no" if n_div == 0 else "every"
            raise HpoError(
                f"study {name!r}: {which} finished trial diverged ({n_div} of {len(trials)}), "
                "so nothing explains divergence; try --target accuracy"
            )
        note = f"outcome: diverged (1) in {n_div} of {len(trials)} finished trials, else 0; pruned trials count"
        return [1.0 if t.diverged else 0.0 for t in trials], [note]
    reported = [t.accuracy for t in trials if t.accuracy is not None]
    if not reported:
        raise HpoError(f"study {name!r}: no finished trial reported an accuracy yet")
    floor = min(reported)
    pruned = [t for t in trials if t.pruned]
    silent = [t for t in pruned if t.accuracy is None]
    notes = [
        f"value: best validation accuracy; {len(trials) - len(pruned)} COMPLETE trials with their value, "
        f"{len(pruned) - len(silent)} PRUNED trials ({sum(t.diverged for t in pruned)} diverged) with the best "
        "value they reported (Optuna's evaluators alone would drop them)"
    ]
    if silent:
        notes.append(f"{len(silent)} trial(s) pruned before their first report counted at the study's lowest accuracy, {floor:.4f}")
    return [floor if t.accuracy is None else t.accuracy for t in trials], notes


def _optuna_evaluator(
    trials: list[TrialRecord],
    y: list[float],
    scaled: Mapping[str, tuple[BaseDistribution, str]],
    evaluator: str,
    target: str,
    seed: int,
) -> dict[str, float]:
    distributions = {name: dist for name, (dist, _) in scaled.items()}
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        optuna.trial.create_trial(
            params={name: _to_scale(t.params[name], scale) for name, (_, scale) in scaled.items()},
            distributions=distributions,
            value=value,
        )
        for t, value in zip(trials, y)
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if evaluator == "fanova":
            ev: optuna.importance.BaseImportanceEvaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        elif evaluator == "mdi":
            ev = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=seed)
        else:
            # For a 0/1 outcome the "top" trials are exactly the diverged ones: PED-ANOVA then
            # compares where diverged trials sampled with where all trials sampled.
            quantile = sum(y) / len(y) if target == "divergence" else 0.1
            ev = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=min(quantile, 0.999))
        return ev.evaluate(study)


def _permutation(
    trials: list[TrialRecord],
    y: list[float],
    scaled: Mapping[str, tuple[BaseDistribution, str]],
    classify: bool,
    seed: int,
) -> dict[str, float]:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.inspection import permutation_importance

    columns = []
    for name, (dist, scale) in scaled.items():
        if scale == "categorical":
            assert isinstance(dist, CategoricalDistribution)
            columns.append([dist.to_internal_repr(t.params[name]) for t in trials])
        else:
            columns.append([_to_scale(t.params[name], scale) for t in trials])
    x = np.asarray(columns, dtype=float).T
    target = np.asarray(y)
    # Leaves of a few trials keep the forest from memorising noise it would then "explain".
    if classify:
        # Diverged trials are usually the minority: weigh the classes equally and score with
        # balanced accuracy, or a forest that always answers "stable" looks perfect and every
        # importance comes out 0 (seen on a 20-trial study with 3 diverged trials).
        forest = RandomForestClassifier(n_estimators=64, min_samples_leaf=3, class_weight="balanced", random_state=seed, n_jobs=1)
        scoring = "balanced_accuracy"
    else:
        forest = RandomForestRegressor(n_estimators=64, min_samples_leaf=3, random_state=seed, n_jobs=1)
        scoring = None
    forest.fit(x, target)
    result = permutation_importance(forest, x, target, scoring=scoring, n_repeats=5, random_state=seed, n_jobs=1)
    return dict(zip(scaled, result.importances_mean.tolist()))


def _normalise(raw: Mapping[str, float]) -> dict[str, float]:
    clipped = {k: max(float(v), 0.0) for k, v in raw.items()}
    total = sum(clipped.values())
    values = {k: (v / total if total > 0 else 0.0) for k, v in clipped.items()}
    return dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
