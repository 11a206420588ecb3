"""What the gradients and updates did before a trial's jump, read numerically from its step telemetry.

For one trial of a study: per epoch and group, the median and the largest pre-clip gradient norm
(the largest counts the maximum since the previous sample), the median and the largest update
ratio ``|dw|/|w|``, the share of clipped steps and the mean train loss; then every sampled step in
a window around a step (by default the warm restart before the epoch the trial was judged
diverged at, or the epoch named by ``--epoch``).

    python benchmarks/steps_window.py --study seed-steps --storage sqlite:///runs/ulmfit.db --trial 0
    python benchmarks/steps_window.py ... --trial 0 --epoch 13 --before 8 --after 20
"""

from __future__ import annotations

import argparse

import numpy as np

from hpo.analysis.steps import divergence_step, restart_steps
from hpo.record import TrialRecord
from hpo.storage.artifacts.stores import artifact_store
from hpo.storage.database.resilient import open_storage
from hpo.storage.database.studies import load_existing
from hpo.training.telemetry import StepTelemetry
from hpo.analysis.steps import load_telemetry


def _g(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.3g}"


def epoch_table(t: StepTelemetry) -> list[str]:
    """One row per epoch: loss, then per group norm median/max, ratio median/max; clipped share."""
    head = "epoch  loss   " + "  ".join(f"{g + ' norm med/max':>22} {g + ' |dw|/|w| med/max':>24}" for g in t.groups) + "  clipped"
    out = [head]
    for e in sorted(set(int(x) for x in t.epoch)):
        rows = t.epoch == e
        cells = []
        for g in range(len(t.groups)):
            norm, peak, ratio = t.grad_norm[rows, g], t.grad_norm_max[rows, g], t.update_ratio[rows, g]
            cells.append(f"{_g(np.nanmedian(norm)):>10}/{_g(np.nanmax(peak)):<11} "
                         f"{_g(np.nanmedian(ratio)):>11}/{_g(np.nanmax(ratio)):<12}")
        out.append(f"{e:>5} {np.nanmean(t.loss_mean[rows]):6.3f}  " + "  ".join(cells) + f"  {t.clipped[rows].mean():6.0%}")
    return out


def step_rows(t: StepTelemetry, start: int, end: int) -> list[str]:
    """Every sampled step in [start, end): loss, then per group norm (max since last), ratio, rate."""
    out = ["step  epoch  loss   " + "  ".join(f"{g + ' norm(max)/ratio/lr':>34}" for g in t.groups)]
    for i in np.flatnonzero((t.step >= start) & (t.step < end)):
        cells = [f"{_g(t.grad_norm[i, g]):>9}({_g(t.grad_norm_max[i, g]):>9})/{_g(t.update_ratio[i, g]):>8}/{_g(t.lr[i, g]):>7}"
                 for g in range(len(t.groups))]
        out.append(f"{int(t.step[i]):>4} {int(t.epoch[i]):>5} {t.loss[i]:6.3f}  " + "  ".join(cells)
                   + ("  clipped" if t.clipped[i] else ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--trial", type=int, required=True)
    parser.add_argument("--epoch", type=int, default=None, help="the window's epoch (default: the verdict's)")
    parser.add_argument("--before", type=int, default=6, help="steps shown before the restart")
    parser.add_argument("--after", type=int, default=20, help="steps shown from the restart on")
    args = parser.parse_args()

    storage = open_storage(args.storage, create=False)
    study = load_existing(args.study, storage)
    frozen = study.trials[args.trial]
    trial = TrialRecord.from_trial(frozen)
    t = load_telemetry(frozen, storage, artifact_store(study))
    if t is None:
        raise SystemExit(f"trial {args.trial} stored no step telemetry")
    print(f"trial {trial.number}: {trial.state}, verdict {trial.verdict}, rates {trial.lrs}")
    print(f"{len(t)} samples every {t.every} step(s), {t.steps_per_epoch} steps per epoch, "
          f"warm restarts at steps {restart_steps(t)}, divergence step {divergence_step(trial, t) if trial.verdict else '-'}")
    print("val loss per epoch: " + " ".join(f"{e.val_loss:.3f}" for e in trial.epochs if e.val_loss is not None))
    print()
    print("\n".join(epoch_table(t)))
    epoch = args.epoch or (trial.verdict.epoch if trial.verdict else None)
    if epoch:
        restarts = [r for r in restart_steps(t) if r <= (epoch - 1) * t.steps_per_epoch]
        at = restarts[-1] if restarts else (epoch - 1) * t.steps_per_epoch
        print(f"\nsteps around the warm restart at step {at} (epoch {at // t.steps_per_epoch + 1} starts there):")
        print("\n".join(step_rows(t, at - args.before, at + args.after)))


if __name__ == "__main__":
    main()
