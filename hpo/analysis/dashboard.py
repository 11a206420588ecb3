"""optuna-dashboard on a study's storage and artifact store (``hpo dashboard``).

The artifact store is the one the study records (a folder, its database, S3), so a dashboard
started anywhere the database is reachable shows the figures every worker uploaded.

:func:`plan_dashboard` checks everything that can be wrong before a server starts (the storage,
the study name) and works out what to print; :func:`serve` then blocks in
``optuna_dashboard.run_server``. The server binds to ``127.0.0.1`` unless told otherwise: the
dashboard can edit studies and has no authentication.

Example::

    plan = plan_dashboard("imdb", "sqlite:///hpo.db", port=8080)
    print(plan.url)       # http://127.0.0.1:8080/dashboard/studies/1
    serve(plan)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import optuna

from hpo.analysis.trials import no_finished_message
from hpo.errors import HpoError
from hpo.storage.artifacts.stores import artifact_location, open_location
from hpo.storage.database.resilient import open_storage
from hpo.storage.database.studies import load_existing


@dataclass(frozen=True)
class DashboardPlan:
    storage: optuna.storages.BaseStorage
    study_name: str
    study_id: int
    artifact_location: str  # a folder, "database" or s3://...: as the study records it
    host: str
    port: int
    states: dict[str, int]
    note: str | None  # said before serving: the study has no finished trial yet, ...

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard/studies/{self.study_id}"


def plan_dashboard(study_name: str, storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> DashboardPlan:
    """Open the storage and find the study; an HpoError when either is wrong."""
    storage = open_storage(storage_url, create=False)
    study = load_existing(study_name, storage)
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    note = None
    if states["COMPLETE"] + states["PRUNED"] == 0:
        # Not an error: the dashboard is also how one watches a study that has just started.
        note = no_finished_message(study_name, states) + "; the dashboard shows trials as they finish"
    return DashboardPlan(
        storage=storage,
        study_name=study_name,
        study_id=storage.get_study_id_from_name(study_name),
        artifact_location=artifact_location(study, record=False),  # read-only: records nothing
        host=host,
        port=port,
        states=dict(states),
        note=note,
    )


def serve(plan: DashboardPlan) -> None:
    """Run optuna-dashboard until interrupted; a port in use becomes an HpoError."""
    import optuna_dashboard

    store = open_location(plan.artifact_location, plan.storage)
    try:
        optuna_dashboard.run_server(plan.storage, host=plan.host, port=plan.port, artifact_store=store)
    except OSError as exc:
        raise HpoError(f"cannot serve on {plan.host}:{plan.port}: {exc.strerror or exc}; choose another --port") from None
