"""Single best vs top-3 vs top-5 ensembles vs NB-SVM vs TF-IDF + LR, on one split, in one run.

Runs (or continues) a study with ``artifacts.keep_best = 5``, exports its best trial, its top 3
and its top 5 (``hpo export --top k``: the members' probabilities averaged). Each of the top 5
networks predicts the validation and test reviews once, in its own process (on a shared machine
that is what makes it affordable); the best, top-3 and top-5 rows average the first 1, 3 and 5
of them, which is what the exported files compute (tests/test_export.py checks that a file's
ensemble equals the mean of its members). ``benchmarks/baselines.py`` adds both linear baselines
on the same reviews, each accuracy with its standard error. Written to ``--out``/ensemble.txt
with the command, machine and study on top.

    python benchmarks/ensemble.py --trials 12 --storage sqlite:////tmp/ensemble-study/hpo.db \\
        --set data.max_train=4000 --set data.max_len=400 --set train.max_epochs=3 --set name=imdb-ensemble

The study's size is what a shared 2-core CPU affords (see the file's header). A study that has
its trials already (the user's command, ``hpo optimize --study imdb --trials 100 --set
artifacts.keep_best=5``) is only read: the same ``--study``, ``--set``, ``--trials`` and
``--storage``, and ``--name`` for the result file.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

import baselines
from hpo.errors import HpoError
from hpo.data import split_reviews
from hpo.export import Model, export_model, read_payload
from hpo.record import TrialRecord
from hpo.search.study import find_study, tally
from hpo.search.workers import run_workers
from hpo.spec import load_spec
from hpo.training.device import resolve_device
from hpo.storage.database.resilient import open_storage

TOPS = (1, 3, 5)


def member_probabilities(path: str, index: int, splits: list[list[str]]) -> list[torch.Tensor]:
    """The ``index``-th member of a model file, alone, on each list of texts (on CUDA when there is one)."""
    torch.set_num_threads(1)
    payload = read_payload(path)
    model = Model({**payload, "members": [payload["members"][index]]}, resolve_device("auto"))
    return [model.probabilities(texts).cpu() for texts in splits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="imdb")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default="sqlite:///ensemble.db")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="ensemble.txt", help="the result file's name in --out")
    args = parser.parse_args()
    overrides = [*(o for o in args.overrides if not o.startswith("artifacts.keep_best=")), f"artifacts.keep_best={max(TOPS)}"]
    try:
        spec = load_spec(args.study, overrides)
        study = find_study(spec, open_storage(args.storage))
        if study is None or tally(study).finished < args.trials:  # a study with its trials is only read
            run_workers(spec, args.storage, args.trials, args.jobs, seed=args.seed, log=print)
            study = optuna.load_study(study_name=spec.name, storage=open_storage(args.storage))
        folder = Path(tempfile.mkdtemp(prefix="ensemble-"))
        for k in TOPS:
            print(export_model(study, folder / f"top{k}.pt", top=k).describe())
        parts = split_reviews(spec.data)
        splits = [[t for t, _ in parts[name]] for name in ("valid", "test")]
        path = str(folder / f"top{max(TOPS)}.pt")
        members = read_payload(path)["members"]
        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(len(members)) as pool:
            probs = pool.starmap(member_probabilities, [(path, i, splits) for i in range(len(members))])
        seconds = time.perf_counter() - t0
        scored = []
        for k in TOPS:
            accs = []
            for s_i, name in enumerate(("valid", "test")):
                mean = torch.stack([p[s_i] for p in probs[:k]]).mean(0)
                labels = torch.tensor([y for _, y in parts[name]])
                accs.append(float((mean.argmax(1) == labels).float().mean()))
            scored.append(baselines.ModelResult("best" if k == 1 else f"top-{k}", accs[0], accs[1],
                                                tuple(m["trial"] for m in members[:k]), seconds * k / len(members)))
            print(f"{scored[-1].name}: {accs[0]:.4f} validation accuracy")
        records = [TrialRecord.from_trial(t) for t in study.trials]
        counts = {s: sum(r.state == s for r in records) for s in ("COMPLETE", "PRUNED", "FAIL")}
        notes = [
            "",
            f"Study {spec.name!r}: {len(records)} trials ({', '.join(f'{v} {k.lower()}' for k, v in counts.items())}), "
            f"{spec.train.max_epochs} epochs at most, data.max_train = {spec.data.max_train or 'all'}, "
            f"data.max_len = {spec.data.max_len}; best, top-k: its best trials by validation accuracy "
            "(the ensembles average their members' probabilities).",
            "The models chose nothing on the test split; the ensembles' members were ranked on validation, so their "
            "validation accuracy is optimistic, their test accuracy is not.",
        ]
        notes.append(f"The {len(members)} networks predicted both splits in {seconds:.0f} s, one process each, on "
                     f"{resolve_device('auto').type} (fit s of a model row: its share of that).")
        baselines.run(args.study, overrides, Path(args.out), {}, args.name,
                      ["benchmarks/ensemble.py", *sys.argv[1:]], notes, scored)
    except HpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
