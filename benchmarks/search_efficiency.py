"""Search efficiency: best validation accuracy per training epoch spent, with and without pruning.

Three methods search the default ``imdb`` spec (on a reduced but real setting: fewer, shorter
reviews) with the real :class:`hpo.search.objective.Objective`, each under the same budget counted in
training EPOCHS, not trials, because epochs are what a trial costs and what pruning saves:

* ``hpo``: hpo's default, the spec's TPE sampler and its median pruner inside the DivergencePruner;
* ``random``: RandomSampler, no pruner: every trial runs ``train.max_epochs``;
* ``tpe``: the spec's TPE sampler, no pruner.

"No pruner" also switches off the in-epoch step-explosion guard (``divergence.step_explosion``
set huge), so that every trial of ``random`` and ``tpe`` runs every epoch; only a NaN/inf loss
still stops a trial (nothing is learned past it). Their diverged trials are still detected,
after the fact, and end PRUNED as in hpo.

Each method runs once per seed (the sampler's seed; model initialisation is the spec's and the
same for every trial) on an in-memory study, and starts trials until the epochs used (the sum of
each finished trial's ``epochs_run``) reach the budget: the trial that crosses the budget is
allowed to finish, so a run may overshoot by up to ``max_epochs - 1`` epochs. The checkpoints at
25/50/75/100% of the budget count only trials that finished within them; ``final`` counts all.
Best-so-far is the best COMPLETE trial's value (what ``hpo`` reports as the study's best): a
diverged trial never counts, even when it had a good epoch before it jumped.

Runs are jobs in a pool of ``--procs`` processes (default 2, one torch thread each: on 2 cores
that trains 1.4x faster than one 2-thread process); the results do not depend on it.

It prints, per method (mean over seeds, then per seed): the best-so-far at those checkpoints,
the epochs needed to reach ``random``'s final best OF THE SAME SEED, the final best, and the
diverged and otherwise-pruned trials with the epochs pruning saved on them
(``max_epochs - epochs_run``). Then, to tune the defaults:

* false positives: up to 8 of hpo's diverged trials are re-run to the end with the same
  parameters and no pruning; one whose validation loss comes back within the threshold of its
  best was pruned wrongly;
* the median pruner replayed, for several warm-ups and start-up counts, on the unpruned random
  runs (exact, since random draws ignore the study's history): trials cut, epochs saved, and
  whether it would have cut the run's best trial;
* the jump rule replayed at other thresholds on the unpruned runs' full curves;
* the random trials per learning-rate band: does the range straddle the divergence boundary
  without spending most trials far from the useful band?

``--variant NAME:KEY=VALUE,...`` adds a method: hpo with those spec overrides;
``--spec-variant NAME:PATH`` one that is hpo on another spec file (e.g. the one ``hpo lr-find
--write-spec`` wrote, with the same reduced setting on top). ``--cost NAME:EPOCHS`` charges a
method epochs before its first trial (the range test's steps, in epochs of the subset): its
trials' cumulative epochs start there and its own budget is that much smaller, so every method
spends the same total. ``--methods`` runs only some methods, ``--reference`` names the method
whose final best (same seed) the others must reach (default ``random``), ``--reruns 0`` skips the
false-positive re-runs. The analyses that replay the unpruned random runs are left out when
``random`` did not run. It writes under
``--out``: ``search_efficiency.csv`` (one row per trial, with its parameters and curves),
``search_efficiency.png`` (best-so-far curves) and ``search_efficiency.txt`` (the printed
report, with the command, machine and date on top).

    HPO_CACHE_DIR=/tmp/hpo-cache python benchmarks/search_efficiency.py            # ~45 min on 2 cores
    HPO_CACHE_DIR=/tmp/hpo-cache python benchmarks/search_efficiency.py --quick    # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import datetime
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial

from hpo.analysis.replay import Curve, Policy, replay
from hpo.analysis.replay import recovered as replay_recovered
from hpo.data import Dataset, load_dataset
from hpo.divergence import check_divergence
from hpo.search.objective import Objective
from hpo.pruning import make_pruner
from hpo.record import TrialRecord, Verdict
from hpo.spec import DivergenceSpec, Spec, load_spec
from hpo.search.study import make_sampler
from hpo.training.device import configure_threads
from hpo.search.workers import quiet_optuna_logging

METHODS = ("hpo", "random", "tpe")
REFERENCE = "random"  # "reached random's final best" is measured against this method (--reference)
# Reduced but real: 3,000 training and 1,000 validation reviews cut to 200 tokens, the default
# model, at most 4 epochs per trial: ~8 s per epoch in a 1-thread process, so 3 methods x 3 seeds
# x 60 epochs run in about 40 minutes as two such processes on 2 cores. 60 epochs are 15 unpruned
# trials; with the spec's 10 random startup trials TPE would barely run, and TPE's startup draws
# equal RandomSampler's of the same seed, so "tpe" would replay "random": 5 startup trials (the
# spec's 10% of a 100-trial study is 10; here a third of a 15-trial run) leave TPE 10 of its own.
FULL = ["data.max_train=3000", "data.max_valid=1000", "data.max_len=200", "train.max_epochs=4",
        "sampler.n_startup_trials=5"]
FULL_BUDGET = 60
QUICK = [
    "data.max_train=200", "data.max_valid=100", "data.max_len=60", "model.embedding_dim=16",
    "model.hidden_size=16", "train.max_epochs=3", "sampler.n_startup_trials=3", "pruner.n_startup_trials=2",
]
QUICK_BUDGET = 15
NO_STEP_GUARD = ["divergence.step_explosion=1e30"]  # only NaN/inf still stops an unpruned trial
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
VARIANTS: dict[str, list[str]] = {}  # --variant NAME:overrides -> hpo with those overrides
SPEC_VARIANTS: dict[str, str] = {}  # --spec-variant NAME:PATH -> hpo on that spec file (also listed in VARIANTS)
COSTS: dict[str, int] = {}  # --cost NAME:EPOCHS -> epochs the method spent before its first trial
RERUNS = 8  # diverged hpo trials re-run to the end without pruning, to count false positives


@dataclass(frozen=True)
class TrialRow:
    method: str
    seed: int
    trial: int
    epochs_run: int
    cumulative_epochs: int
    value: float | None  # COMPLETE: the objective's value; otherwise the best val acc it reported
    best_so_far: float | None
    state: str
    diverged: bool
    reason: str
    saved_epochs: int  # max_epochs - epochs_run for a pruned trial, else 0
    params: str = "{}"  # JSON, so a trial can be re-run
    val_accuracy: tuple[float, ...] = ()
    val_loss: tuple[float, ...] = ()
    train_loss: tuple[float, ...] = ()
    grad_norm_max: tuple[float, ...] = ()

    @property
    def last_val_loss(self) -> float | None:
        return self.val_loss[-1] if self.val_loss else None

    @property
    def min_val_loss(self) -> float | None:
        return min(self.val_loss) if self.val_loss else None


def method_spec(base_overrides: Sequence[str], method: str) -> Spec:
    if method in SPEC_VARIANTS:
        return load_spec(SPEC_VARIANTS[method], [*base_overrides, *VARIANTS[method]])
    if method in VARIANTS:
        return load_spec("imdb", [*base_overrides, *VARIANTS[method]])
    return load_spec("imdb", [*base_overrides, *(NO_STEP_GUARD if method != "hpo" else [])])


def make_study(spec: Spec, method: str, seed: int) -> optuna.Study:
    """The method's sampler and pruner on a fresh in-memory study."""
    if method == "hpo" or method in VARIANTS:
        sampler = make_sampler(spec.sampler, seed)
        pruner: optuna.pruners.BasePruner = make_pruner(spec.pruner, spec.train.max_epochs)
    elif method == "random":
        sampler, pruner = optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()
    else:
        sampler, pruner = make_sampler(spec.sampler, seed), optuna.pruners.NopPruner()
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)


def epochs_used(study: optuna.Study) -> int:
    # Read through TrialRecord: a trial keeps epochs_run inside its "outcome" attribute now, and a
    # bare user_attrs lookup read 0 for every trial, so a run never reached its budget
    return sum(TrialRecord.from_trial(t).epochs_run for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def stop_at_budget(budget: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Called after each trial: the trial that crossed the budget has finished, so stop now."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if epochs_used(study) >= budget:
            study.stop()

    return callback


def run_method(spec: Spec, data: Dataset, method: str, seed: int, budget: int, artifacts: str) -> list[TrialRow]:
    """One (method, seed) run; a method with a cost (``--cost``) starts that many epochs in, on a smaller budget."""
    cost = COSTS.get(method, 0)
    study = make_study(spec, method, seed)
    # The Objective saves per-epoch checkpoints and figures to the study's artifact store: keep
    # them in a temporary folder, not in the working directory.
    study.set_user_attr("artifact_dir", artifacts)
    study.optimize(Objective(spec, data), callbacks=[stop_at_budget(max(1, budget - cost))], catch=())
    return [dataclasses.replace(r, cumulative_epochs=r.cumulative_epochs + cost)
            for r in trial_rows(study, method, seed, spec.train.max_epochs)]


# Each (method, seed) run is a job in a pool of 1-thread processes: two such processes on 2 cores
# train 1.4x faster than one 2-thread process (a trial's ops are too small to use 2 threads well).
_DATA: dict[tuple, Dataset] = {}


def _init_worker(threads: int, variants: dict[str, list[str]], spec_variants: dict[str, str], costs: dict[str, int],
                 reference: str) -> None:
    global REFERENCE
    quiet_optuna_logging()
    # spawned: the parent's --variant, --spec-variant, --cost and --reference settings do not come along
    VARIANTS.update(variants)
    SPEC_VARIANTS.update(spec_variants)
    COSTS.update(costs)
    REFERENCE = reference
    configure_threads(threads)


def _data(spec: Spec) -> Dataset:
    key = dataclasses.astuple(spec.data)
    if key not in _DATA:
        _DATA[key] = load_dataset(spec.data)  # from the disk cache: about a second
    return _DATA[key]


def _run_job(overrides: Sequence[str], method: str, seed: int, budget: int, artifacts: str) -> list[TrialRow]:
    spec = method_spec(overrides, method)
    return run_method(spec, _data(spec), method, seed, budget, artifacts)


def _rerun_job(overrides: Sequence[str], row: TrialRow, artifacts: str) -> TrialRow:
    """A diverged hpo trial again, same parameters, no pruning and no step guard, to the end."""
    spec = method_spec(overrides, "random")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.set_user_attr("artifact_dir", artifacts)
    study.enqueue_trial(json.loads(row.params))
    study.optimize(Objective(spec, _data(spec)), n_trials=1, catch=())
    return dataclasses.replace(trial_rows(study, "rerun", row.seed, spec.train.max_epochs)[0], trial=row.trial)


def rerun_diverged(pool: concurrent.futures.Executor, overrides: Sequence[str], rows: Sequence[TrialRow],
                   artifacts: str, reruns: int = RERUNS) -> list[tuple[TrialRow, TrialRow]]:
    """(hpo's diverged trial, its unpruned re-run) for up to ``reruns`` of hpo's diverged trials."""
    diverged = [r for r in rows if r.method == "hpo" and r.diverged][:reruns]
    futures = [pool.submit(_rerun_job, overrides, r, artifacts) for r in diverged]
    return [(r, f.result()) for r, f in zip(diverged, futures)]


def recovered(reason: str, val_loss: Sequence[float], rules: DivergenceSpec) -> bool:
    """Whether a curve flagged for ``reason`` (``jump@3``), run to the end, shows the verdict was wrong
    (``hpo replay``'s rule: back within the threshold of its best; for no_progress, below chance)."""
    return replay_recovered(val_loss, 0, Verdict(reason.split("@")[0], 0), rules) is True


def pair_reruns(runs: dict[tuple[str, int], list[TrialRow]]) -> list[tuple[TrialRow, TrialRow]]:
    """(hpo's diverged trial, its unpruned re-run), matched by seed and trial number."""
    reruns = {(r.seed, r.trial): r for (m, _), rs in runs.items() if m == "rerun" for r in rs}
    return [(r, reruns[(r.seed, r.trial)]) for (m, _), rs in runs.items() if m == "hpo"
            for r in rs if r.diverged and (r.seed, r.trial) in reruns]


def false_positive_notes(pairs: Sequence[tuple[TrialRow, TrialRow]], rules: DivergenceSpec,
                         best: dict[int, float | None]) -> list[str]:
    """Did a diverged trial, run to the end, come back? Then pruning it was a false positive."""
    out = ["", "false positives: hpo's diverged trials re-run to the end with the same parameters, no pruning "
               f"('recovered': jump/nan: last val loss within {rules.threshold:.0%} of its best; "
               "no_progress: it got below chance after all)"]
    if not pairs:
        return [*out, "  (hpo pruned no trial as diverged)"]
    count = 0
    for pruned, rerun in pairs:
        back = recovered(pruned.reason, rerun.val_loss, rules)
        count += back
        accs = [a for a in rerun.val_accuracy if a is not None]
        out.append(f"  seed {pruned.seed} trial {pruned.trial}: pruned {pruned.reason} after {pruned.epochs_run} epochs; "
                   f"re-run val loss {' '.join(f'{x:.3f}' for x in rerun.val_loss)}, best val acc "
                   f"{fmt(max(accs) if accs else None)} (seed's best {fmt(best.get(pruned.seed))})"
                   + (" -> RECOVERED (false positive)" if back else " -> stayed diverged (true positive)"))
    out.append(f"  {count} of {len(pairs)} re-run diverged trials recovered")
    return out


def _curves(rows: Sequence[TrialRow], max_epochs: int) -> list[Curve]:
    """A run's trials as :mod:`hpo.analysis.replay` curves (the CSV keeps the max grad norm per epoch)."""
    return [
        Curve(number=r.trial, state=r.state, value=r.value, val_accuracy=r.val_accuracy, val_loss=r.val_loss,
              train_loss=r.train_loss, max_grad_norm=r.grad_norm_max or (0.0,) * len(r.val_accuracy),
              whole=len(r.val_accuracy) >= max_epochs)
        for r in rows if r.val_accuracy
    ]


REPLAYED = [*(f"median:n_startup_trials={n},warmup_epochs={w}" for w in (0, 1) for n in (1, 2, 3, 5)),
            "successive_halving:reduction_factor=2", "successive_halving:reduction_factor=3"]


def replay_pruner(runs: dict[tuple[str, int], list[TrialRow]], seeds: Sequence[int], max_epochs: int) -> list[str]:
    """Optuna's pruners replayed (``hpo replay``'s engine) on the unpruned random runs' full curves.

    RandomSampler's draws do not depend on the study's history, so replaying a pruner on its trial
    sequence is exactly "random search with that pruner": which trials it would cut, the epochs that
    saves, whether it would have cut the run's best trial (then it never finds that value), and the
    epochs it needs to reach the run's final best. The divergence rules are left out here: the
    unpruned runs' divergences are replayed separately, threshold by threshold.
    """
    own = [epochs_to_reach(runs[(REFERENCE, s)], runs[(REFERENCE, s)][-1].best_so_far) for s in seeds]
    out = ["", "Optuna's pruners replayed (hpo.analysis.replay) on the unpruned random runs (exact: random draws "
               f"ignore the study's history); random alone reached its final best after {_mean_text(own)} epochs",
           f"  {'pruner':<42} {'cut':>4} {'saved':>6} {'best cut':>8} {'epochs to its best':>19}  (sums / means over {len(seeds)} seeds)"]
    rules = DivergenceSpec()
    for text in REPLAYED:
        policy = dataclasses.replace(Policy.parse(text), divergence=False)
        cut = saved = best_cut = 0
        reach: list[int | None] = []
        for seed in seeds:
            rows = runs[(REFERENCE, seed)]
            target = rows[-1].best_so_far
            curves = _curves(rows, max_epochs)
            result = replay(curves, policy, max_epochs, rules)
            cut += result.cut
            saved += sum(max_epochs - t.epochs_run for t in result.trials if t.cut)
            best_cut += sum(1 for t, c in zip(result.trials, curves)
                            if t.cut and c.state == "COMPLETE" and c.value == target)
            used, reached = 0, None
            for t, c in zip(result.trials, curves):
                used += t.epochs_run
                if reached is None and not t.cut and c.state == "COMPLETE" and target is not None and c.value >= target:
                    reached = used
            reach.append(reached)
        out.append(f"  {policy.pruner.type + text[len(policy.pruner.type):]:<42} {cut:>4} {saved:>6} {best_cut:>8} {_mean_text(reach):>19}")
    return out


def _mean_text(xs: Sequence[int | None]) -> str:
    got = [x for x in xs if x is not None]
    return f"{statistics.fmean(got):.1f} ({len(got)}/{len(xs)})" if got else f"- (0/{len(xs)})"


def replay_divergence(runs: dict[tuple[str, int], list[TrialRow]], base: DivergenceSpec,
                      thresholds: Sequence[float] = (0.25, 0.5, 1.0)) -> list[str]:
    """The divergence rule at other thresholds, on the unpruned runs' full curves.

    A flagged trial whose last val loss is back within the threshold of its best would have been
    a false positive; one flagged and never back, a true divergence pruned early.
    """
    out = ["", "the jump rule replayed at other thresholds on the unpruned random and tpe runs' full curves "
               "(no_progress needs gradient norms, which the CSV does not keep):",
           f"  {'threshold':>9} {'flagged':>7} {'recovered':>9} {'saved':>6}"]
    rows = [r for (m, _), rs in runs.items() if m != "hpo" for r in rs if r.val_loss]
    for t in thresholds:
        rules = dataclasses.replace(base, threshold=t)
        flagged = back = saved = 0
        for r in rows:
            v = check_divergence(r.val_loss, r.train_loss, [], rules)
            if v is None:
                continue
            flagged += 1
            saved += len(r.val_loss) - v.epoch
            back += recovered(v.reason, r.val_loss, rules)
        out.append(f"  {t:>9g} {flagged:>7} {back:>9} {saved:>6}")
    return out


def lr_range_notes(runs: dict[tuple[str, int], list[TrialRow]], knobs: Sequence[str] = ("lr_head", "lr_encoder", "lr_embedding"),
                   edges: Sequence[float] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)) -> list[str]:
    """Where the random runs' trials landed per learning-rate band, and how they did.

    RandomSampler spreads trials over the search space as drawn, so this shows whether the default
    ranges straddle the divergence boundary without spending most trials far beyond it (or far
    below the useful band).
    """
    rows = [r for (m, _), rs in runs.items() if m == REFERENCE for r in rs]
    best = {s: rs[-1].best_so_far for (m, s), rs in runs.items() if m == REFERENCE}
    out = ["", f"learning-rate bands of the {len(rows)} {REFERENCE} trials (the space as drawn): trials, diverged, "
               "median best val acc, trials within 0.02 of their seed's best"]
    for knob in knobs:
        out.append(f"  {knob}:")
        for lo, hi in zip(edges, edges[1:]):
            band = [r for r in rows if lo <= json.loads(r.params).get(knob, -1.0) < hi * (1 + 1e-9)]
            accs = [max(r.val_accuracy) for r in band if r.val_accuracy]
            near = sum(1 for r in band if r.val_accuracy and r.state == "COMPLETE"
                       and best[r.seed] is not None and max(r.val_accuracy) >= best[r.seed] - 0.02)
            out.append(f"    [{lo:g}, {hi:g}): {len(band):>3} trials, {sum(r.diverged for r in band):>2} diverged, "
                       f"median acc {fmt(statistics.median(accs) if accs else None)}, {near:>2} near the best")
    return out


def trial_rows(study: optuna.Study, method: str, seed: int, max_epochs: int) -> list[TrialRow]:
    rows: list[TrialRow] = []
    cumulative, best = 0, None
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        r = TrialRecord.from_trial(t)
        cumulative += r.epochs_run
        if r.state == "COMPLETE":
            best = r.accuracy if best is None else max(best, r.accuracy)
        if r.diverged and r.verdict is not None:
            reason = f"{r.verdict.reason}@{r.verdict.epoch}"
        elif r.pruned:
            reason = f"median@{t.last_step}"
        else:
            reason = ""
        rows.append(TrialRow(
            method, seed, t.number, r.epochs_run, cumulative, r.accuracy, best, r.state, r.diverged, reason,
            max_epochs - r.epochs_run if r.pruned else 0, json.dumps(t.params), tuple(r.series("val_accuracy")),
            tuple(x for x in r.series("val_loss") if x is not None), tuple(r.series("train_loss")),
            tuple(e.max_grad_norm for e in r.epochs),
        ))
    return rows


def best_at(rows: Sequence[TrialRow], epochs: float) -> float | None:
    """Best-so-far among the trials that finished within ``epochs``."""
    within = [r.best_so_far for r in rows if r.cumulative_epochs <= epochs and r.best_so_far is not None]
    return within[-1] if within else None


def epochs_to_reach(rows: Sequence[TrialRow], target: float | None) -> int | None:
    if target is None:
        return None
    return next((r.cumulative_epochs for r in rows if r.best_so_far is not None and r.best_so_far >= target), None)


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def mean(xs: Sequence[float | None]) -> float | None:
    """Mean of the values present (a seed without a complete trial yet has none)."""
    present = [x for x in xs if x is not None]
    return statistics.fmean(present) if present else None


def report(runs: dict[tuple[str, int], list[TrialRow]], seeds: Sequence[int], budget: int,
           methods: Sequence[str] = METHODS) -> list[str]:
    out: list[str] = []
    marks = [f * budget for f in FRACTIONS]
    finals = {(m, s): (rows[-1].best_so_far if rows else None) for (m, s), rows in runs.items()}
    head = (f"{'method':<7} {'seed':>5} {'trials':>6} {'epochs':>6} "
            + " ".join(f"{f'@{m:g}ep':>8}" for m in marks)
            + f" {'final':>7} {'ep->ref':>8} {'diverged':>8} {'saved':>6} {'pruned':>6} {'saved':>6}")
    out += [f"best-so-far validation accuracy by epochs used (budget {budget}); "
            f"ep->ref = epochs to reach {REFERENCE}'s final best of the same seed ('-' never)", head, "-" * len(head)]
    for method in methods:
        lines, per_seed = [], []
        for seed in seeds:
            rows = runs[(method, seed)]
            div = [r for r in rows if r.diverged]
            other = [r for r in rows if r.state == "PRUNED" and not r.diverged]
            stats = {
                "trials": len(rows), "epochs": rows[-1].cumulative_epochs if rows else 0,
                "marks": [best_at(rows, m) for m in marks], "final": finals[(method, seed)],
                "reach": epochs_to_reach(rows, finals[(REFERENCE, seed)]),
                "div": len(div), "div_saved": sum(r.saved_epochs for r in div),
                "pruned": len(other), "pruned_saved": sum(r.saved_epochs for r in other),
            }
            per_seed.append(stats)
            lines.append(_row(method, str(seed), stats))
        reached = [s["reach"] for s in per_seed if s["reach"] is not None]
        avg = {
            "trials": statistics.fmean(s["trials"] for s in per_seed),
            "epochs": statistics.fmean(s["epochs"] for s in per_seed),
            "marks": [mean([s["marks"][i] for s in per_seed]) for i in range(len(marks))],
            "final": mean([s["final"] for s in per_seed]),
            "reach": statistics.fmean(reached) if reached else None,
            "reach_n": len(reached),
            "div": statistics.fmean(s["div"] for s in per_seed),
            "div_saved": statistics.fmean(s["div_saved"] for s in per_seed),
            "pruned": statistics.fmean(s["pruned"] for s in per_seed),
            "pruned_saved": statistics.fmean(s["pruned_saved"] for s in per_seed),
        }
        out.append(_row(method, "mean", avg))
        out += lines
    out.append("mean ep->ref: over the seeds that reached it (count in brackets); "
               "saved = max_epochs - epochs_run summed over the diverged / median-pruned trials")
    # hpo and each variant against the reference (random by default; a variant against hpo with --reference hpo);
    # the unpruned baselines are what is compared with, not candidates
    candidates = [m for m in methods if m != REFERENCE and m not in ("random", "tpe")]
    return out + [line for m in candidates for line in verdict(runs, seeds, budget, m)]


def verdict(runs: dict[tuple[str, int], list[TrialRow]], seeds: Sequence[int], budget: int, method: str = "hpo") -> list[str]:
    """The issue's target: ``method`` reaches random's final best with at most half of random's
    epochs, on average over seeds, and its own final best is not lower.

    "Random's epochs" is read two ways, both printed: the budget random spent, and (stricter) the
    epochs random itself needed to first reach its final best. A seed where ``method`` never
    reaches random's final best counts as the whole budget (it did not get there with it).
    """
    reach, own, finals = [], [], []
    for seed in seeds:
        target = runs[(REFERENCE, seed)][-1].best_so_far
        got = epochs_to_reach(runs[(method, seed)], target)
        reach.append(got if got is not None else budget)
        own.append(epochs_to_reach(runs[(REFERENCE, seed)], target) or budget)
        finals.append((runs[(method, seed)][-1].best_so_far or 0.0) - (target or 0.0))
    r, o, f = statistics.fmean(reach), statistics.fmean(own), statistics.fmean(finals)
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    return [
        "",
        f"target ({method} vs {REFERENCE}, mean over {len(seeds)} seeds; a seed that never got there counts the whole budget):",
        f"  epochs to reach {REFERENCE}'s final best: {method} {r:.1f}, {REFERENCE} itself {o:.1f}, budget {budget}",
        f"  at most half the budget ({budget / 2:g}): {ok(r <= budget / 2)}; at most half of {REFERENCE}'s own "
        f"epochs to it ({o / 2:.1f}): {ok(r <= o / 2)}",
        f"  final best {method} - {REFERENCE}: {f:+.4f} on average ({' '.join(f'{x:+.4f}' for x in finals)}): "
        f"{ok(f >= 0)}",
    ]


def _row(method: str, seed: str, s: dict) -> str:
    num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    reach = num(s["reach"], ".0f" if isinstance(s["reach"], int) else ".1f")
    if "reach_n" in s:
        reach = f"{reach}({s['reach_n']})"
    return (f"{method:<7} {seed:>5} {num(s['trials'], '.4g'):>6} {num(s['epochs'], '.4g'):>6} "
            + " ".join(f"{fmt(v):>8}" for v in s["marks"])
            + f" {fmt(s['final']):>7} {reach:>8} {num(s['div'], '.3g'):>8} {num(s['div_saved'], '.3g'):>6}"
            f" {num(s['pruned'], '.3g'):>6} {num(s['pruned_saved'], '.3g'):>6}")


def divergence_notes(runs: dict[tuple[str, int], list[TrialRow]], rules: DivergenceSpec) -> list[str]:
    """Diverged trials, and for the unpruned methods whether the curve came back (a false alarm?)."""
    out = ["", "diverged trials (random and tpe ran every epoch; 'recovered' as for the false positives below):"]
    for (method, seed), rows in runs.items():
        if method == "rerun":
            continue
        for r in rows:
            if not r.diverged:
                continue
            note = ""
            if method not in ("hpo", *VARIANTS) and r.val_loss:
                note = (f", val loss {r.val_loss[0]:.3f} first, {r.min_val_loss:.3f} best, {r.last_val_loss:.3f} last"
                        + (" -> recovered" if recovered(r.reason, r.val_loss, rules) else ""))
            out.append(f"  {method} seed {seed} trial {r.trial}: {r.reason}, {r.epochs_run} epochs, "
                       f"best val acc {fmt(r.value)}{note}")
    return out


def write_csv(path: Path, rows: Sequence[TrialRow]) -> None:
    fields = ["method", "seed", "trial", "epochs_run", "cumulative_epochs", "value", "best_so_far",
              "state", "diverged", "reason", "saved_epochs", "params", "val_accuracy", "val_loss", "train_loss"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow([_cell(getattr(r, k)) for k in fields])


def _cell(x: object) -> object:
    if isinstance(x, float):
        return f"{x:.4f}"
    if isinstance(x, tuple):
        return json.dumps([round(v, 4) for v in x])
    return x


def write_plot(path: Path, runs: dict[tuple[str, int], list[TrialRow]], seeds: Sequence[int], budget: int,
               methods: Sequence[str] = METHODS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    palette = iter(["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    colors = {"hpo": "tab:blue", "random": "tab:orange", "tpe": "tab:green", **{m: next(palette) for m in VARIANTS}}
    grid = list(range(0, budget + 1))
    for method in methods:
        for seed in seeds:
            pts = [(r.cumulative_epochs, r.best_so_far) for r in runs[(method, seed)] if r.best_so_far is not None]
            if pts:
                ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color=colors[method], alpha=0.3, lw=1)
        curve = [mean([best_at(runs[(method, s)], e) for s in seeds]) for e in grid]
        xs = [e for e, v in zip(grid, curve) if v is not None]
        ax.step(xs, [v for v in curve if v is not None], where="post", color=colors[method], lw=2.5,
                label=f"{method} (mean of {len(seeds)} seeds)")
    ax.axvline(budget, color="grey", ls=":", lw=1)
    ax.set_xlabel("training epochs used")
    ax.set_ylabel("best validation accuracy so far (complete trials)")
    if set(methods) == set(METHODS):
        ax.set_title("Search efficiency: hpo (TPE + divergence/median pruning) vs random and TPE without pruning")
    else:  # a run of some methods or variants: name them, and what each paid before its first trial
        costs = "".join(f"; {m} starts after {COSTS[m]} epochs (its cost)" for m in methods if COSTS.get(m))
        ax.set_title(f"Search efficiency: {', '.join(methods)}{costs}")
    ax.title.set_fontsize(9)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine(procs: int, threads: int) -> str:
    from hpo.training.calibrate import cpu_info

    cpu = cpu_info()[0]
    return (f"{os.cpu_count()} cores ({procs} processes x {threads} torch threads), {cpu}, "
            f"torch {torch.__version__}, optuna {optuna.__version__}")


def read_csv(path: Path) -> dict[tuple[str, int], list[TrialRow]]:
    """The runs of a CSV written by this script (for --replay: the analyses again, no training)."""
    runs: dict[tuple[str, int], list[TrialRow]] = {}
    num = lambda x: None if x in ("", "None") else float(x)  # noqa: E731
    curve = lambda x: tuple(json.loads(x)) if x else ()  # noqa: E731
    with path.open() as f:
        for c in csv.DictReader(f):
            losses = curve(c.get("val_loss", ""))
            row = TrialRow(
                c["method"], int(c["seed"]), int(c["trial"]), int(c["epochs_run"]), int(c["cumulative_epochs"]),
                num(c["value"]), num(c["best_so_far"]), c["state"], c["diverged"] == "True", c["reason"],
                int(c["saved_epochs"]), c.get("params", "{}"), curve(c.get("val_accuracy", "")), losses, curve(c.get("train_loss", "")),
            )
            runs.setdefault((row.method, row.seed), []).append(row)
    return runs


def main() -> None:
    global REFERENCE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method")
    parser.add_argument("--budget-epochs", type=int, default=None, help=f"epochs per run (default {FULL_BUDGET}; --quick {QUICK_BUDGET})")
    parser.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs in parallel, each with cores/procs torch threads (default: 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: cores / procs; 1 leaves a shared machine's other core free)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="also run hpo with these spec overrides under NAME, e.g. warm1:pruner.warmup_epochs=1")
    parser.add_argument("--spec-variant", action="append", default=[], metavar="NAME:PATH",
                        help="also run hpo on this spec file (the reduced setting on top) under NAME, e.g. lrfind:imdb-lrfind.toml")
    parser.add_argument("--cost", action="append", default=[], metavar="NAME:EPOCHS",
                        help="epochs NAME spent before its first trial (e.g. a range test's steps), counted in its budget")
    parser.add_argument("--methods", default=None, metavar="M,M", help="run only these methods (default: all, and the variants)")
    parser.add_argument("--reference", default=REFERENCE, help="the method whose final best the others must reach (default: random)")
    parser.add_argument("--reruns", type=int, default=RERUNS, help=f"hpo's diverged trials re-run without pruning (default {RERUNS})")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the CSV, PNG and text file")
    parser.add_argument("--quick", action="store_true", help="tiny data and model: a smoke run in about a minute")
    parser.add_argument("--replay", metavar="CSV", help="no training: the replays and bands again, from a CSV this script wrote")
    args = parser.parse_args()
    if args.replay:
        runs = read_csv(Path(args.replay))
        seeds = sorted({s for m, s in runs if m == REFERENCE})
        methods = [m for m in dict.fromkeys(m for m, _ in runs) if m != "rerun"]
        VARIANTS.update({m: [] for m in methods if m not in METHODS})
        spec = method_spec(QUICK if args.quick else FULL, "hpo")
        budget = args.budget_epochs or (QUICK_BUDGET if args.quick else FULL_BUDGET)
        best = {s: runs[(REFERENCE, s)][-1].best_so_far for s in seeds}
        print("\n".join([*report(runs, seeds, budget, methods), *divergence_notes(runs, spec.divergence),
                         *false_positive_notes(pair_reruns(runs), spec.divergence, best),
                         *replay_pruner(runs, seeds, spec.train.max_epochs),
                         *replay_divergence(runs, spec.divergence), *lr_range_notes(runs)]))
        return

    quiet_optuna_logging()
    for v in args.variant:
        name, _, sets = v.partition(":")
        VARIANTS[name] = sets.split(",")
    for v in args.spec_variant:
        name, _, path = v.partition(":")
        if not Path(path).is_file():
            parser.error(f"--spec-variant {v}: no file {path}")
        SPEC_VARIANTS[name] = path
        VARIANTS.setdefault(name, [])
    for v in args.cost:
        name, _, epochs = v.partition(":")
        COSTS[name] = int(epochs)
    methods = tuple(args.methods.split(",")) if args.methods else (*METHODS, *VARIANTS)
    REFERENCE = args.reference
    unknown = [m for m in (*methods, REFERENCE, *COSTS) if m not in (*METHODS, *VARIANTS)]
    if unknown or REFERENCE not in methods:
        parser.error(f"unknown method {unknown[0]!r}" if unknown else f"--reference {REFERENCE} is not among --methods")
    procs = max(1, args.procs)
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    overrides = QUICK if args.quick else FULL
    budget = args.budget_epochs or (QUICK_BUDGET if args.quick else FULL_BUDGET)
    seeds = list(range(args.seeds))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "search_efficiency-quick" if args.quick else "search_efficiency"

    spec = method_spec(overrides, "hpo")
    data = load_dataset(spec.data)  # builds the disk cache once, before the workers read it
    header = [
        f"# {shlex.join(['python', *sys.argv])}",
        f"# {machine(procs, threads)}",
        f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"# spec imdb + {' '.join(overrides)}; budget {budget} epochs; seeds {seeds}; "
        f"data {len(data.train)} train / {len(data.valid)} valid, vocab {data.vocab_size}",
        *(f"# variant {name}: hpo on {SPEC_VARIANTS.get(name, 'imdb')} + {' '.join(sets)}" for name, sets in VARIANTS.items()),
        *(f"# cost {name}: {epochs} epochs before its first trial, within its budget" for name, epochs in COSTS.items()),
        f"# methods {', '.join(methods)}; reference {REFERENCE}",
    ]
    print("\n".join(header), flush=True)

    runs: dict[tuple[str, int], list[TrialRow]] = {}
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="hpo-search-eff-") as artifacts, \
            concurrent.futures.ProcessPoolExecutor(procs, ctx, initializer=_init_worker,
                                                initargs=(threads, VARIANTS, SPEC_VARIANTS, COSTS, REFERENCE)) as pool:
        jobs = {pool.submit(_run_job, overrides, m, seed, budget, artifacts): (m, seed) for seed in seeds for m in methods}
        for future in concurrent.futures.as_completed(jobs):
            method, seed = jobs[future]
            rows = runs[(method, seed)] = future.result()
            print(f"{method} seed {seed}: {len(rows)} trials, {rows[-1].cumulative_epochs} epochs, "
                  f"best {fmt(rows[-1].best_so_far)} ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
        pairs = rerun_diverged(pool, overrides, [r for s in seeds for r in runs.get(("hpo", s), [])], artifacts,
                               args.reruns) if "hpo" in methods else []
    wall = time.perf_counter() - t0

    best = {s: runs[(REFERENCE, s)][-1].best_so_far for s in seeds}
    # The replays read the unpruned random runs: without them there is nothing to replay
    unpruned = "random" in methods
    lines = ["", *report(runs, seeds, budget, methods), *divergence_notes(runs, spec.divergence),
             *(false_positive_notes(pairs, spec.divergence, best) if args.reruns else []),
             *(replay_pruner(runs, seeds, spec.train.max_epochs) if unpruned else []),
             *(replay_divergence(runs, spec.divergence) if unpruned else []),
             *(lr_range_notes(runs) if unpruned else []),
             "", f"wall time {wall / 60:.1f} min ({procs} processes x {threads} torch threads)"]
    print("\n".join(lines))
    all_rows = [r for s in seeds for m in methods for r in runs[(m, s)]] + [rerun for _, rerun in pairs]
    write_csv(out_dir / f"{stem}.csv", all_rows)
    write_plot(out_dir / f"{stem}.png", runs, seeds, budget, methods)
    (out_dir / f"{stem}.txt").write_text("\n".join([*header, *lines]) + "\n")
    print(f"wrote {out_dir / stem}.csv, .png, .txt")


if __name__ == "__main__":
    main()
