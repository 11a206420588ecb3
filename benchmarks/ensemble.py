"""Single best vs top-3 vs top-5 ensembles vs NB-SVM vs TF-IDF + LR, on one split, in one run.

Runs (or continues) a study with ``artifacts.keep_best = 5``, exports its best trial, its top 3
and its top 5 (``hpo export --top k``: the members' probabilities averaged), and hands the three
files to ``benchmarks/baselines.py``, which scores them and both linear baselines on the same
validation and test reviews, each accuracy with its standard error. Written to
``--out``/ensemble.txt with the command, machine and study on top.

    python benchmarks/ensemble.py --trials 12 --storage sqlite:////tmp/ensemble-study/hpo.db \\
        --set data.max_train=4000 --set data.max_len=400 --set train.max_epochs=3 --set name=imdb-ensemble

The study's size is what a shared 2-core CPU affords (see the file's header); the user's
command, ``hpo optimize --study imdb --trials 100`` on full data, is ~3 CPU hours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import optuna

import baselines
from hpo.errors import HpoError
from hpo.export import export_model
from hpo.record import TrialRecord
from hpo.search.workers import run_workers
from hpo.spec import load_spec
from hpo.storage.database.resilient import open_storage

TOPS = (1, 3, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="imdb")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default="sqlite:///ensemble.db")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    overrides = [*args.overrides, f"artifacts.keep_best={max(TOPS)}"]
    try:
        spec = load_spec(args.study, overrides)
        run_workers(spec, args.storage, args.trials, args.jobs, seed=args.seed, log=print)
        study = optuna.load_study(study_name=spec.name, storage=open_storage(args.storage))
        folder = Path(tempfile.mkdtemp(prefix="ensemble-"))
        models = {}
        for k in TOPS:
            path = folder / f"top{k}.pt"
            exported = export_model(study, path, top=k)
            print(exported.describe())
            models["best" if k == 1 else f"top-{k}"] = str(path)
        records = [TrialRecord.from_trial(t) for t in study.trials]
        tally = {s: sum(r.state == s for r in records) for s in ("COMPLETE", "PRUNED", "FAIL")}
        notes = [
            "",
            f"Study {spec.name!r}: {len(records)} trials ({', '.join(f'{v} {k.lower()}' for k, v in tally.items())}), "
            f"{spec.train.max_epochs} epochs at most, data.max_train = {spec.data.max_train or 'all'}, "
            f"data.max_len = {spec.data.max_len}; best, top-k: its best trials by validation accuracy "
            "(the ensembles average their members' probabilities).",
            "The models chose nothing on the test split; the ensembles' members were ranked on validation, so their "
            "validation accuracy is optimistic, their test accuracy is not.",
        ]
        baselines.run(args.study, overrides, Path(args.out), models, "ensemble.txt",
                      ["benchmarks/ensemble.py", *sys.argv[1:]], notes)
    except HpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
