"""The seed's phenomenon, measured: a head-rate sweep of ``imdb-seed``, run to the end of every schedule.

The sweep itself is an ``hpo`` study (the grid of 5 head rates x 3 seeds in
``studies/imdb-seed.toml``) with ``divergence.action = "record"``: every run is judged by the
divergence rules as it trains, but trains on to the end of its 14 epochs, so this script can
check each verdict against what the run did afterwards::

    hpo optimize --study imdb-seed --trials 15 --set name=imdb-seed-sweep \\
        --set data.max_train=3000 --set data.max_valid=1000 --set divergence.action=record
    python benchmarks/seed_sweep.py --study imdb-seed-sweep --storage sqlite:///hpo.db

It prints, per head rate: runs, mean and max best validation accuracy, runs the rules flagged as
diverged and the epoch of each jump (and whether it came right after a warm restart), the worst
bump right after a warm restart (validation and train loss over their best before it), runs that
never came back (their last validation loss more than the threshold above their best *and* their
last train loss above its best by the rules' ``train_rise``: the model broke, as the seed's did)
and the counts the issue asks for: never-recovered runs the rules caught, and flagged runs that
did recover (false positives). Runs whose validation loss ended high while their train loss kept
falling overfitted; they are counted apart, since the rules leave overfitting to the pruner. Then
the epochs that stopping at the verdict would have saved against running every schedule to its end. It writes ``seed_sweep.txt`` and ``seed_sweep.png`` (validation
loss of every run by head rate, jumps marked; mean best accuracy and divergence rate per head
rate, like the seed's own table).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optuna.trial import TrialState  # noqa: E402

from hpo.analysis.trials import StudyData, load_study_data  # noqa: E402
from hpo.divergence import CHANCE_LOSS  # noqa: E402
from hpo.record import TrialRecord  # noqa: E402
from hpo.spec.schema import DivergenceSpec  # noqa: E402
from hpo.storage.database.resilient import open_storage  # noqa: E402


def ended_above_best(t: TrialRecord, threshold: float) -> bool:
    """The run ended with its validation loss more than ``threshold`` above its own best (or not finite)."""
    losses = t.series("val_loss")
    finite = [x for x in losses if math.isfinite(x)]
    return not finite or not math.isfinite(losses[-1]) or losses[-1] > min(finite) * (1 + threshold)


def never_recovered(t: TrialRecord, rules: DivergenceSpec) -> bool:
    """The seed's failure: the run ended with *both* losses above their bests, the validation loss by
    more than ``threshold`` and the train loss by more than ``train_rise`` x ln 2 (or a loss not finite).

    A run whose validation loss ended high while its train loss kept falling overfitted: the model
    still fits its data, it did not break, and the rules leave it to the pruner on purpose.
    """
    if not ended_above_best(t, rules.threshold):
        return False
    train = t.series("train_loss")
    finite = [x for x in train if math.isfinite(x)]
    return not finite or not math.isfinite(train[-1]) or train[-1] > min(finite) + rules.train_rise * CHANCE_LOSS


def overfitted(t: TrialRecord, rules: DivergenceSpec) -> bool:
    """Validation loss ended more than ``threshold`` above its best, train loss did not rise: overfitting."""
    return ended_above_best(t, rules.threshold) and not never_recovered(t, rules)


def after_restart(epoch: int, cycle_len: int) -> bool:
    """Whether ``epoch`` (1-based) is the first epoch of an SGDR cycle after the first."""
    return epoch > 1 and (epoch - 1) % cycle_len == 0


def restart_bump(t: TrialRecord, series: str, cycle_len: int) -> float:
    """The largest loss right after a warm restart, relative to the run's best before it (1.0: no bump)."""
    losses = t.series(series)
    bumps = [losses[e - 1] / min(losses[: e - 1]) for e in range(2, len(losses) + 1)
             if after_restart(e, cycle_len) and all(math.isfinite(x) for x in losses[:e])]
    return max(bumps, default=1.0)


def _rules(data) -> DivergenceSpec:
    return dataclasses.replace(data.spec.divergence, action="stop") if data.spec else DivergenceSpec()


def _cycle(data) -> int:
    cycle = data.spec.space.get("cycle_len", 2) if data.spec else 2
    return int(cycle) if isinstance(cycle, (int, float)) else 2


def table(data) -> list[str]:
    rules = _rules(data)
    cycle = _cycle(data)
    by_rate: dict[float, list[TrialRecord]] = defaultdict(list)
    for t in data.finished:
        by_rate[float(t.params["lr_head"])].append(t)
    out = [f"head-rate sweep of study {data.name!r}: {len(data.finished)} runs, {data.max_epochs} epochs each "
           f"(SGDR cycles of {cycle}: warm restarts before epochs {', '.join(str(e) for e in range(cycle + 1, data.max_epochs + 1, cycle))}); "
           f"divergence rules: threshold {rules.threshold:g}, train_rise {rules.train_rise:g}", "",
           f"  {'lr_head':>8} {'runs':>4} {'mean best acc':>13} {'max':>6} {'diverged':>8} {'jumps (epoch; r = right after a restart)':<42} "
           f"{'never back':>10} {'worst restart bump val/train':>28}  {'last val loss / best':<22}"]
    caught = missed = false_pos = never = saved = overfit = 0
    for rate in sorted(by_rate):
        runs = sorted(by_rate[rate], key=lambda t: t.params.get("seed", 0))
        accs = [t.accuracy for t in runs if t.accuracy is not None]
        flagged = [t for t in runs if t.diverged]
        jumps = ", ".join(f"{t.verdict.epoch}{'r' if after_restart(t.verdict.epoch, cycle) else ''}"
                          f" ({t.verdict.reason}{f' {t.verdict.ratio:.1f}x' if t.verdict.ratio else ''})" for t in flagged)
        gone = [t for t in runs if never_recovered(t, rules)]
        overfit += sum(1 for t in runs if overfitted(t, rules))
        ratios = " ".join(f"{t.series('val_loss')[-1] / min(x for x in t.series('val_loss') if math.isfinite(x)):.2f}"
                          if math.isfinite(t.series('val_loss')[-1]) else "nan" for t in runs)
        bump = (f"{max(restart_bump(t, 'val_loss', cycle) for t in runs):.2f}x / "
                f"{max(restart_bump(t, 'train_loss', cycle) for t in runs):.2f}x")
        out.append(f"  {rate:>8g} {len(runs):>4} {statistics.fmean(accs):>13.4f} {max(accs):>6.4f} {len(flagged):>8} "
                   f"{jumps or '-':<42} {len(gone):>10} {bump:>28}  {ratios:<22}")
        never += len(gone)
        caught += sum(1 for t in gone if t.diverged)
        missed += sum(1 for t in gone if not t.diverged)
        false_pos += sum(1 for t in flagged if not never_recovered(t, rules))
        saved += sum(t.epochs_run - t.verdict.epoch for t in flagged)
    total = sum(t.epochs_run for t in data.finished)
    out += ["", f"runs that never came back (train and validation loss ended above their bests): {never}; "
            f"caught by the rules: {caught}; missed: {missed}",
            f"runs that overfitted instead (validation loss ended {rules.threshold:.0%}+ above its best, train loss did not rise; "
            f"left to the pruner by design): {overfit}",
            f"runs flagged as diverged that did come back (false positives): {false_pos}",
            f"stopping at the verdict saves {saved} of {total} epochs ({100 * saved / max(total, 1):.0f}%) against running "
            "every schedule to its end (hpo replay --study ... shows the same with other rules and pruners)"]
    return out


def figure(data, path: Path) -> None:
    from matplotlib.figure import Figure

    rules = _rules(data)
    rates = sorted({float(t.params["lr_head"]) for t in data.finished})
    colors = {r: f"C{i}" for i, r in enumerate(rates)}
    fig = Figure(figsize=(13, 4.8), dpi=100)
    ax_loss, ax_rate = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    seen: set[float] = set()
    for t in sorted(data.finished, key=lambda t: t.number):
        rate = float(t.params["lr_head"])
        losses = t.series("val_loss")
        ax_loss.plot(range(1, len(losses) + 1), losses, color=colors[rate], alpha=0.8, lw=1.2,
                     label=f"lr_head {rate:g}" if rate not in seen else None)
        seen.add(rate)
        if t.diverged:
            e = t.verdict.epoch
            if e <= len(losses):
                ax_loss.plot(e, losses[e - 1], "x", color="black", ms=8, mew=2)
    cycle = _cycle(data)
    for e in range(cycle, data.max_epochs, cycle):
        ax_loss.axvline(e + 0.5, color="0.85", lw=0.8, zorder=0)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch (grey: warm restarts)")
    ax_loss.set_ylabel("validation loss")
    ax_loss.set_title("every run to the end of its schedule; x = the divergence verdict")
    handles, labels = ax_loss.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: float(labels[i].split()[-1]))  # by rate, not by first run
    ax_loss.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8)
    ax_loss.grid(alpha=0.3)
    means = [statistics.fmean(t.accuracy for t in data.finished if float(t.params["lr_head"]) == r) for r in rates]
    div = [sum(t.diverged for t in data.finished if float(t.params["lr_head"]) == r)
           / sum(1 for t in data.finished if float(t.params["lr_head"]) == r) for r in rates]
    ax_rate.plot(rates, means, "o-", color="tab:blue", label="mean best validation accuracy")
    ax_rate.set_xscale("log")
    ax_rate.set_xlabel("lr_head (encoder at /10, embedding at /100)")
    ax_rate.set_ylabel("mean best validation accuracy", color="tab:blue")
    twin = ax_rate.twinx()
    twin.bar(rates, div, width=[r * 0.4 for r in rates], alpha=0.3, color="tab:red", label="divergence rate")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("divergence rate (of 3 seeds)", color="tab:red")
    ax_rate.set_title("per head rate")
    ax_rate.grid(alpha=0.3)
    fig.suptitle(f"study {data.name}: the seed's setting (rates 1:10:100, clip 25, 7 SGDR cycles of 2 epochs), "
                 f"threshold {rules.threshold:g}")
    fig.tight_layout()
    fig.savefig(path)


def joined(studies: list[StudyData]) -> StudyData:
    """One sweep from several studies of the same spec but for the head rates they try."""
    first = studies[0]
    if len(studies) == 1:
        return first
    return dataclasses.replace(first, name=" + ".join(d.name for d in studies),
                               finished=[t for d in studies for t in d.finished],
                               max_epochs=max(d.max_epochs for d in studies))


def join_into(names: list[str], target: str, storage) -> None:
    """Copy the finished trials of sweeps ``names`` into one new study ``target`` (lr_head's choices
    joined), so that ``hpo report --study TARGET`` reads the whole range of head rates at once."""
    import optuna

    from hpo.record import SPEC_ATTR

    studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    trials = [t for s in studies for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    rates = sorted({t.params["lr_head"] for t in trials})
    joined_study = optuna.create_study(study_name=target, storage=storage, direction="maximize")
    for key, value in studies[0].user_attrs.items():
        if key == SPEC_ATTR:
            value = {**value, "space": {**value["space"], "lr_head": {"type": "categorical", "choices": rates}}}
        joined_study.set_user_attr(key, value)
    for t in sorted(trials, key=lambda t: t.datetime_start):
        distributions = {**t.distributions, "lr_head": optuna.distributions.CategoricalDistribution(rates)}
        joined_study.add_trial(optuna.trial.create_trial(
            state=t.state, value=t.value if t.state == TrialState.COMPLETE else None, params=t.params,
            distributions=distributions, user_attrs=t.user_attrs, system_attrs=t.system_attrs,
            intermediate_values=t.intermediate_values))
    print(f"joined {len(trials)} trials of {', '.join(names)} into study {target!r}: hpo report --study {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", action="append", default=None,
                        help="The sweep's study (default imdb-seed-sweep); repeat to join sweeps that extend one "
                             "another's head rates (same spec otherwise)")
    parser.add_argument("--storage", default="sqlite:///hpo.db")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--join-as", default=None, metavar="NAME",
                        help="Also copy the studies' finished trials into one new study NAME, for hpo report")
    args = parser.parse_args()
    storage = open_storage(args.storage, create=False)
    if args.join_as:
        join_into(args.study or ["imdb-seed-sweep"], args.join_as, storage)
    data = joined([load_study_data(name, storage) for name in args.study or ["imdb-seed-sweep"]])
    lines = table(data)
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seed_sweep.txt").write_text("\n".join(lines) + "\n")
    figure(data, out / "seed_sweep.png")
    print(f"wrote {out / 'seed_sweep.txt'} and {out / 'seed_sweep.png'}")


if __name__ == "__main__":
    main()
