"""Which model knobs pay for the default LSTM: each variant trained at one good setting, over seeds, on full data.

Issue 23 asks the default space for the knobs that matter to this model family "where measurement
says they pay". A study that searches them costs about 330 core-minutes per 100 trials on this
CPU; this measures them at one point instead: the best trial of the 100-trial GPU study (benchmarks/results/imdb-100-trials-gpu.txt,
trial 80: lr_embedding 0.063, lr_encoder 1.8e-3, lr_head 1.6e-2, clip 0.9, cycle_len 3, dropout
0.25, weight_decay 1.2e-5), one 3-epoch cosine cycle (its best epoch was 2), on all 19,924 training
reviews, with every variant run for the same seeds. Each variant is an hpo study of its own (a grid
over ``seed``, no pruner), so each row is what `hpo optimize` records::

    python benchmarks/model_knobs.py --storage sqlite:////tmp/kn/kn.db --variants base,word-dropout,bidirectional

It prints, per variant: seeds run, mean best validation accuracy with its standard deviation and
standard error, the difference from ``base`` (same seeds, so paired: the mean of the per-seed
differences and its standard error), the best epoch of each seed and the median seconds per
epoch; then each run's curve. A study
already in the storage is continued, not redone (the same command resumes an interrupted run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from hpo.record import TrialRecord  # noqa: E402
from hpo.search import run  # noqa: E402
from hpo.storage.database.resilient import open_storage  # noqa: E402

# Trial 80 of the 100-trial GPU study, fixed; one cosine cycle of 3 epochs.
POINT = [
    "train.max_epochs=3", "space.lr_embedding=0.063", "space.lr_encoder=1.8e-3", "space.lr_head=1.6e-2",
    "space.clip_norm=0.9", "space.cycle_len=3", "space.dropout=0.25", "space.weight_decay=1.2e-5",
    "sampler.type=grid", "pruner.type=none",
]
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "word-dropout": ["model.embed_dropout=0.2"],
    "bidirectional": ["model.bidirectional=true"],
    "bi-word-dropout": ["model.bidirectional=true", "model.embed_dropout=0.2"],
    "hidden-256": ["model.hidden_size=256"],
    "two-layers": ["model.num_layers=2"],
}


def overrides(variant: str, seeds: int) -> list[str]:
    choices = ", ".join(str(s) for s in range(seeds))
    return [f"name=kn-{variant}", *POINT, f"space.seed={{type='categorical', choices=[{choices}]}}", *VARIANTS[variant]]


def records(storage: str, variant: str) -> list[TrialRecord]:
    try:
        study = optuna.load_study(study_name=f"kn-{variant}", storage=open_storage(storage))
    except KeyError:  # not run yet: an empty row
        return []
    return [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def table(storage: str, variants: list[str]) -> str:
    by_seed = {v: {int(r.params.get("seed", -1)): r for r in records(storage, v)} for v in variants}
    base = by_seed.get("base", {})
    lines = [f"{'variant':<17}{'seeds':>6}{'val acc':>9}{'sd':>8}{'se':>8}{'vs base':>10}{'se':>8}"
             f"{'best epochs':>13}{'s/epoch':>9}  model"]
    for v in variants:
        rs = by_seed[v]
        accs = [r.accuracy for r in rs.values()]
        if not accs:
            lines.append(f"{v:<17}{0:>6}")
            continue
        mean, sd = _mean_sd(accs)
        paired = [rs[s].accuracy - base[s].accuracy for s in rs if s in base]
        diff, dsd = _mean_sd(paired) if len(paired) > 1 else (float("nan"), float("nan"))
        best_epochs = ",".join(str(max(rs[k].epochs, key=lambda e: e.val_accuracy).epoch) for k in sorted(rs))  # by seed
        seconds = statistics.median(e.seconds for r in rs.values() for e in r.epochs)
        versus = f"{diff:>+10.4f}{dsd / len(paired) ** 0.5:>8.4f}" if v != "base" and len(paired) > 1 else f"{'-':>10}{'-':>8}"
        lines.append(f"{v:<17}{len(accs):>6}{mean:>9.4f}{sd:>8.4f}{sd / len(accs) ** 0.5:>8.4f}{versus}"
                     f"{best_epochs:>13}{seconds:>9.0f}  "
                     f"{' '.join(VARIANTS[v]) or '[model] as the default study'}")
    return "\n".join(lines)


def seeds(storage: str, variants: list[str]) -> str:
    lines = ["per seed: validation accuracy and loss after each epoch; train loss after the last"]
    for v in variants:
        for r in sorted(records(storage, v), key=lambda r: r.params.get("seed", -1)):
            acc = " ".join(f"{e.val_accuracy:.4f}" for e in r.epochs)
            loss = " ".join(f"{e.val_loss:.3f}" for e in r.epochs)
            lines.append(f"  {v:<17} seed {r.params.get('seed')}  acc {acc}  loss {loss}  train {r.epochs[-1].train_loss:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--variants", default="base,word-dropout,bidirectional")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--table-only", action="store_true", help="print the table of what the storage holds")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    for v in variants if not args.table_only else []:
        started = time.time()
        run.optimize("imdb", args.seeds, storage=args.storage, overrides=overrides(v, args.seeds), jobs=args.jobs,
                     log=lambda line: print(line, flush=True))
        print(f"[{v}] {time.time() - started:.0f} s", flush=True)
    print(f"# python benchmarks/model_knobs.py --storage {args.storage} --variants {args.variants} --seeds {args.seeds}")
    print(f"# fixed: {' '.join(POINT)}")
    print(table(args.storage, variants))
    print(seeds(args.storage, variants))


if __name__ == "__main__":
    main()
