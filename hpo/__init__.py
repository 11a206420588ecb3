"""hpo: find stable, accurate training settings for text classifiers, and explain why others diverge.

The package is layered; each layer is a folder that imports only from the layers below it
(``benchmarks/import_graph.py`` prints the graph, ``tests/test_layers.py`` keeps it so)::

    errors, spec/ (what a study tunes), record (what a trial leaves), divergence (the rules),
    pruning -> storage/ (database, artifacts, proxy) -> data/ -> training/ (model, loop, step,
    pretraining, lr-find, calibration; no Optuna) -> analysis/ (report, importance, figures,
    dashboard; never trains) -> search/ (study, objective, callbacks, workers) -> export (a model
    file out of a study; load and predict) -> cli

The names below are the library's front door; every command of the CLI is a thin shell over them.

Example::

    outcome = hpo.optimize("imdb", trials=20, overrides={"train.max_epochs": 2}, log=print)   # hpo optimize
    outcome.best_trial, outcome.accuracy, outcome.params
    records = hpo.load_study_records("imdb")          # every trial: epochs, outcome, rates
    spec = hpo.load_spec("imdb", ["train.max_epochs=2"])
    monitor = hpo.DivergenceMonitor(spec.divergence, steps_per_epoch=312)
    hpo.diagnose("lightning_logs/version_0/metrics.csv").verdict      # a run made anywhere
    hpo.load_model("model.pt").predict(["A moving, funny film."])   # a file from hpo export
"""

import importlib
from typing import Any

from hpo.analysis.diagnose import Diagnosis, diagnose
from hpo.analysis.logs import parse_log, read_log
from hpo.divergence import DivergenceMonitor, check_divergence
from hpo.errors import HpoError
from hpo.record import TrialRecord
from hpo.spec import ModelSpec, Spec, load_spec

# The names that need PyTorch, Optuna's storages or SQLAlchemy load on first use: ``import hpo``
# stays light (a log to diagnose, a spec to read), and the command line's start-up guard
# (hpo/cli.py) covers the seconds that importing torch takes, so a Ctrl-C then is one line.
_LAZY = {
    "load_study_records": "hpo.analysis.trials",
    "Model": "hpo.export", "Prediction": "hpo.export", "export_model": "hpo.export", "load_model": "hpo.export",
    "OptimizeOutcome": "hpo.search.run", "optimize": "hpo.search.run",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = ["Diagnosis", "DivergenceMonitor", "HpoError", "Model", "ModelSpec", "OptimizeOutcome", "Prediction", "Spec",
           "TrialRecord", "check_divergence", "diagnose", "export_model", "load_model", "load_spec", "load_study_records",
           "optimize", "parse_log", "read_log"]
