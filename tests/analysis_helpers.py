"""Studies with known structure for the analysis tests, and the database servers to put them on."""

from __future__ import annotations

import os
import socket
import uuid

import optuna
import pytest
from optuna.trial import TrialState

import synthetic

SERVERS = {
    "postgresql": ("127.0.0.1", 5432, "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mysql": ("127.0.0.1", 3306, "mysql+pymysql://root@127.0.0.1:3306/test"),
}


def server_url(kind: str) -> str:
    """The URL of a local test server; a skip when it is down, a failure under CI=true."""
    host, port, url = SERVERS[kind]
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{kind} is not reachable at {host}:{port} and CI=true requires it")
        pytest.skip(f"{kind} is not reachable at {host}:{port}")
    return url


def known_study(storage, lr_heads, name: str | None = None, failed: int = 0, seed: int = 0) -> optuna.Study:
    """A maximize study whose trials follow :mod:`synthetic`, plus ``failed`` FAIL trials."""
    study = optuna.create_study(storage=storage, study_name=name or f"known-{uuid.uuid4().hex[:8]}", direction="maximize")
    synthetic.add_known_trials(study, lr_heads, seed=seed)
    for _ in range(failed):
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    return study


def add_pruned_after_one_epoch(study: optuna.Study, lr_heads, seed: int = 0) -> None:
    """Add known trials that the median pruner stopped after their first epoch (one epoch row each).

    :mod:`hpo.analysis.synthetic` prunes at epoch 2 only; a real study prunes many trials at
    epoch 1 (``pruner.warmup_epochs = 0``), and a figure has to draw those single points too.
    """
    from hpo import record

    scratch = optuna.create_study(direction="maximize")
    synthetic.add_known_trials(scratch, lr_heads, seed=seed)
    for t in scratch.trials:
        attrs = dict(t.user_attrs)
        attrs[record.EPOCHS] = attrs[record.EPOCHS][:1]
        attrs[record.OUTCOME] = {**attrs[record.OUTCOME], "verdict": None, "best_epoch": 1, "epochs_run": 1,
                                 "pruned_epoch": 1, "test_accuracy": None}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params=t.params, distributions=t.distributions, user_attrs=attrs,
            intermediate_values={1: t.intermediate_values[1]}))
