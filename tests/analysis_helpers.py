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
