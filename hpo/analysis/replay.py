"""Pruning replayed offline: what would other pruners have cut from a finished study?

Every finished trial's stored curve is fed, epoch by epoch and in trial order, to Optuna's real
pruners (Median, Percentile, SuccessiveHalving, Hyperband, built by :func:`hpo.pruning.make_pruner`)
inside an in-memory study, with the divergence rules of :mod:`hpo.divergence` judging first, as
the objective's monitor does during training. Per policy it counts the trials cut (as
underperforming or as diverged), the epochs that saves against the stored curves, whether the
study's best trial or any of its top 3 would have been cut, and how the divergence cuts fare
against what the stored curves did next: a trial cut as diverged whose stored curve came back
within the threshold of its best is a false positive.

What a replay cannot know, it counts instead of guessing:

* a trial the policy lets run past the end of its stored curve (it was pruned, or stopped by
  the step guard, in the real study) continues unknown: it counts as run to its stored end and
  does not enter the pruners' reference pool (``past_stored``);
* a trial cut as diverged at the last epoch of its stored curve has no "after" to check
  (``unknown``);
* the step guard needs per-step losses, which a study does not keep: only the epoch rules are
  replayed.

On a study whose trials ran to the end (random search without pruning, as in
``benchmarks/search_efficiency.py``) the replay is exact: the curves are whole, and a random
sampler's draws do not depend on what was pruned.

Example::

    curves = curves_from_records(load_study_data("imdb", storage).finished, max_epochs=5)
    result = replay(curves, Policy.parse("median:n_startup_trials=5"), max_epochs=5, rules=DivergenceSpec())
    result.cut, result.epochs_saved, result.best_cut
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import optuna
from optuna.trial import TrialState

from hpo import record
from hpo.analysis.trials import StudyData
from hpo.divergence import DivergenceMonitor, recovered
from hpo.errors import HpoError
from hpo.pruning import make_pruner
from hpo.record import TrialRecord, Verdict
from hpo.spec.files import apply_overrides
from hpo.spec.schema import DivergenceSpec, PrunerSpec, Spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_ALIASES = {"sha": "successive_halving", "successive-halving": "successive_halving", "nop": "none"}


@dataclass(frozen=True)
class Curve:
    """One stored trial as a replay sees it."""

    number: int
    state: str  # COMPLETE or PRUNED in the stored study
    value: float | None  # its stored result (a pruned trial: best reported accuracy)
    val_accuracy: tuple[float, ...]
    val_loss: tuple[float, ...]
    train_loss: tuple[float, ...]
    max_grad_norm: tuple[float, ...]
    whole: bool  # the stored curve ran to max_epochs, so a replay knows all of it

    @property
    def epochs(self) -> int:
        return len(self.val_accuracy)


def curves_from_records(trials: Iterable[TrialRecord], max_epochs: int) -> list[Curve]:
    """Finished trials with at least one recorded epoch, in trial order."""
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        if not t.finished or not t.epochs:
            continue
        out.append(Curve(
            number=t.number, state=t.state, value=t.accuracy,
            val_accuracy=tuple(t.series("val_accuracy")), val_loss=tuple(t.series("val_loss")),
            train_loss=tuple(t.series("train_loss")), max_grad_norm=tuple(e.max_grad_norm for e in t.epochs),
            whole=len(t.epochs) >= max_epochs,
        ))
    return out


@dataclass(frozen=True)
class Policy:
    """A wrapped pruner (or none) with the divergence rules in front of it (or none)."""

    pruner: PrunerSpec
    divergence: bool = True
    label: str = ""

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        defaults = PrunerSpec(type=self.pruner.type)
        keys = {
            "median": ("n_startup_trials", "warmup_epochs"),
            "percentile": ("percentile", "n_startup_trials", "warmup_epochs"),
            "successive_halving": ("reduction_factor", "warmup_epochs"),
            "hyperband": ("reduction_factor", "warmup_epochs"),
        }.get(self.pruner.type, ())
        always = ("n_startup_trials", "percentile", "reduction_factor")
        args = ",".join(f"{k}={_fmt(getattr(self.pruner, k))}" for k in keys
                        if getattr(self.pruner, k) != getattr(defaults, k) or k in always)
        base = self.pruner.type + (f":{args}" if args else "")
        return base if self.divergence else f"{base} (no divergence rules)"

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """``median``, ``median:n_startup_trials=5,warmup_epochs=1``, ``percentile:percentile=25``,
        ``successive_halving:reduction_factor=2`` (or ``sha``), ``hyperband``, ``none``."""
        kind, _, args = text.strip().partition(":")
        kind = _ALIASES.get(kind.strip().lower(), kind.strip().lower())
        values: dict[str, Any] = {"type": kind}
        known = {f.name for f in dataclasses.fields(PrunerSpec)} - {"type"}
        for item in filter(None, (a.strip() for a in args.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise HpoError(f"--pruner {text!r}: expected KIND[:KEY=VALUE,...] with keys from {', '.join(sorted(known))}")
            try:
                values[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                raise HpoError(f"--pruner {text!r}: {key} = {raw.strip()!r} is not a number") from None
        if "percentile" in values:
            values["percentile"] = float(values["percentile"])
        try:
            return cls(PrunerSpec(**values))
        except TypeError as exc:
            raise HpoError(f"--pruner {text!r}: {exc}") from None


@dataclass(frozen=True)
class TrialReplay:
    number: int
    epochs_run: int  # under the policy (at most the stored curve's length)
    cut: str | None  # "pruned", "diverged" or None
    verdict: Verdict | None
    recovered: bool | None  # cut as diverged: did the stored curve come back? None: it ends there
    past_stored: bool  # the policy would have run it past its stored curve


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    trials: list[TrialReplay] = field(repr=False)
    epochs_stored: int
    best_number: int | None  # the stored study's best trial
    top3: tuple[int, ...]

    @property
    def cut_pruned(self) -> int:
        return sum(t.cut == "pruned" for t in self.trials)

    @property
    def cut_diverged(self) -> int:
        return sum(t.cut == "diverged" for t in self.trials)

    @property
    def cut(self) -> int:
        return self.cut_pruned + self.cut_diverged

    @property
    def epochs_run(self) -> int:
        return sum(t.epochs_run for t in self.trials)

    @property
    def epochs_saved(self) -> int:
        return self.epochs_stored - self.epochs_run

    def was_cut(self, number: int | None) -> bool:
        return any(t.number == number and t.cut for t in self.trials)

    @property
    def best_cut(self) -> bool:
        return self.was_cut(self.best_number)

    @property
    def top3_cut(self) -> int:
        return sum(self.was_cut(n) for n in self.top3)

    @property
    def caught(self) -> int:
        return sum(t.cut == "diverged" and t.recovered is False for t in self.trials)

    @property
    def false_positives(self) -> int:
        return sum(t.cut == "diverged" and t.recovered is True for t in self.trials)

    @property
    def unknown(self) -> int:
        return sum(t.cut == "diverged" and t.recovered is None for t in self.trials)

    @property
    def past_stored(self) -> int:
        return sum(t.past_stored for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "trials": len(self.trials), "cut_pruned": self.cut_pruned,
            "cut_diverged": self.cut_diverged, "epochs_stored": self.epochs_stored, "epochs_run": self.epochs_run,
            "epochs_saved": self.epochs_saved, "best_trial": self.best_number, "best_cut": self.best_cut,
            "top3": list(self.top3), "top3_cut": self.top3_cut, "divergences_caught": self.caught,
            "false_positives": self.false_positives, "divergence_unknown": self.unknown,
            "past_stored": self.past_stored,
            "cuts": [{"trial": t.number, "cut": t.cut, "after_epoch": t.epochs_run,
                      "reason": t.verdict.reason if t.verdict else None, "recovered": t.recovered}
                     for t in self.trials if t.cut],
        }


def replay(curves: Sequence[Curve], policy: Policy, max_epochs: int, rules: DivergenceSpec) -> PolicyResult:
    """Run ``policy`` over ``curves`` in order; see the module docstring for what is counted."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one in-memory study per policy: no log line each
    try:
        # A fixed name: Hyperband assigns brackets by a checksum of the study name and trial number.
        study = optuna.create_study(direction="maximize", pruner=make_pruner(policy.pruner, max_epochs),
                                    sampler=optuna.samplers.RandomSampler(seed=0), study_name="replay")
    finally:
        optuna.logging.set_verbosity(verbosity)
    results = []
    for curve in curves:
        trial = study.ask()
        monitor = DivergenceMonitor(rules, steps_per_epoch=1) if policy.divergence else None
        outcome: TrialReplay | None = None
        for e in range(curve.epochs):
            epoch = e + 1
            verdict = monitor.on_epoch(epoch, curve.train_loss[e], curve.val_loss[e], curve.max_grad_norm[e]) \
                if monitor else None
            accuracy = curve.val_accuracy[e]
            trial.report(accuracy if math.isfinite(accuracy) else 0.0, epoch)
            if verdict is not None:
                outcome = TrialReplay(curve.number, epoch, "diverged", verdict,
                                      recovered(curve.val_loss, epoch, verdict, rules), False)
            elif epoch < max_epochs and trial.should_prune():
                outcome = TrialReplay(curve.number, epoch, "pruned", None, None, False)
            if outcome is not None:
                study.tell(trial, state=TrialState.PRUNED)
                break
        if outcome is None:
            outcome = TrialReplay(curve.number, curve.epochs, None, None, None, not curve.whole)
            if curve.whole:
                study.tell(trial, max(curve.val_accuracy))
            else:  # unknown beyond its stored end: kept out of the pruners' reference pool
                study.tell(trial, state=TrialState.PRUNED)
        results.append(outcome)
    complete = sorted((c for c in curves if c.state == record.COMPLETE and c.value is not None),
                      key=lambda c: (-c.value, c.number))
    return PolicyResult(
        policy=policy.name,
        trials=results,
        epochs_stored=sum(c.epochs for c in curves),
        best_number=complete[0].number if complete else None,
        top3=tuple(c.number for c in complete[:3]),
    )


def default_policies(own: PrunerSpec | None) -> list[Policy]:
    """The study's own pruner first, then a set that spans gentle to aggressive."""
    policies = [Policy(own, label=f"study's own: {Policy(own).name}")] if own else []
    for text in ("median:n_startup_trials=3", "median:n_startup_trials=5", "median:n_startup_trials=3,warmup_epochs=1",
                 "percentile:percentile=25,n_startup_trials=3", "successive_halving:reduction_factor=2",
                 "successive_halving:reduction_factor=3", "hyperband:reduction_factor=3", "none"):
        policies.append(Policy.parse(text))
    policies.append(Policy(PrunerSpec(type="none"), divergence=False))
    return policies


def stored_rules(spec: Spec | None, overrides: Sequence[str] = ()) -> DivergenceSpec:
    """The study's divergence rules (its stored spec, else the defaults) with ``KEY=VALUE`` overrides."""
    base = dataclasses.asdict(spec.divergence if spec is not None else DivergenceSpec())
    raw = apply_overrides({"divergence": base}, [f"divergence.{o}" if not o.startswith("divergence.") else o
                                                 for o in overrides])["divergence"]
    # a replay asks what stopping at each verdict would have saved, whatever the study's action
    # was ("record" studies trained on past their verdicts: exactly what makes them replayable)
    raw.pop("action", None)
    fields = {f.name: f for f in dataclasses.fields(DivergenceSpec) if f.name != "action"}
    for key, value in raw.items():
        if key not in fields:
            raise HpoError(f"--divergence {key}: unknown rule (known: {', '.join(fields)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HpoError(f"--divergence {key} = {value!r} is not a number")
    return DivergenceSpec(**{k: (float(v) if fields[k].type == "float" else int(v)) for k, v in raw.items()})


def stored_pruner(spec: Spec | None) -> PrunerSpec | None:
    """The study's own wrapped pruner, from its stored spec."""
    return spec.pruner if spec is not None else None


def replay_study(data: StudyData, pruners: Sequence[str] = (), divergence: Sequence[str] = ()) -> tuple[str, list[PolicyResult]]:
    """(a header saying what was replayed, one result per policy) for a loaded study.

    ``pruners``: policy texts (:meth:`Policy.parse`); none: :func:`default_policies`.
    ``divergence``: ``KEY=VALUE`` overrides of the study's divergence rules.
    """
    rules = stored_rules(data.spec, divergence)
    policies = [Policy.parse(p) for p in pruners] or default_policies(stored_pruner(data.spec))
    curves = curves_from_records(data.finished, data.max_epochs)
    if not curves:
        raise HpoError(f"study {data.name!r}: no finished trial recorded an epoch, nothing to replay")
    whole = sum(c.whole for c in curves)
    changed = ", ".join(f"{f.name} {getattr(rules, f.name):g}" for f in dataclasses.fields(rules)
                        if getattr(rules, f.name) != getattr(DivergenceSpec(), f.name))
    header = (
        f"replay of study {data.name!r}: {len(curves)} finished trials in trial order, {whole} with whole curves "
        f"(max_epochs {data.max_epochs}, from the {data.max_epochs_source}); divergence rules: "
        f"{'defaults' if not changed else changed} (epoch rules only: the step guard needs per-step losses)"
    )
    return header, [replay(curves, p, data.max_epochs, rules) for p in policies]


# --- rendering ---------------------------------------------------------------------------------

_HEADER = ["policy", "cut", "pruned", "diverged", "epochs run", "saved", "best cut", "top-3 cut",
           "div caught", "false pos", "unknown", "past stored"]


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def render(results: Sequence[PolicyResult], fmt: str, header: str) -> str:
    if fmt == "json":
        return json.dumps({"about": header, "policies": [r.to_dict() for r in results]}, indent=2)
    rows = [[r.policy, str(r.cut), str(r.cut_pruned), str(r.cut_diverged), str(r.epochs_run),
             f"{r.epochs_saved} ({100 * r.epochs_saved / max(r.epochs_stored, 1):.0f}%)",
             "yes" if r.best_cut else "no", str(r.top3_cut), str(r.caught), str(r.false_positives), str(r.unknown),
             str(r.past_stored)] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(_HEADER)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    notes = [
        "", "cut: trials the policy stops early (pruned: underperforming; diverged: the divergence rules).",
        "saved: epochs against the stored curves. best cut / top-3 cut: the study's best COMPLETE trials.",
        "div caught: cut as diverged and the stored curve never came back; false pos: it came back within the",
        "threshold of its best; unknown: the stored curve ends at the cut. past stored: the policy would run a",
        "trial past the end of its stored curve (pruned in the real study): counted to its stored end.",
    ]
    return "\n".join([header, "", line(_HEADER), *(line(r) for r in rows), *notes])
