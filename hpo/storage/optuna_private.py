"""Optuna's private API, in one place: every use that has no public equivalent, and why.

Optuna's public API covers studies and trials; a few things hpo needs reach underneath it. Each
sits here, so that an Optuna upgrade that moves one breaks this module alone, and a reader can
see at a glance what hpo relies on:

* :func:`storage_of`, :func:`study_id`, :func:`trial_id`: a ``Study`` keeps its storage and its
  ids private, yet artifact uploads and listings (``optuna.artifacts``) take the storage, and
  optuna-dashboard keys notes and artifact URLs by the storage's ids;
* :data:`BaseHeartbeat`: the gRPC client must be a heartbeat storage so that ``study.optimize``
  runs Optuna's heartbeat thread for workers behind `hpo storage-proxy`;
* :data:`RDB_SESSION_METHODS`: the RDBStorage methods that open a database session, public and
  private (``_get_trials``...), which the resilient storage retries: the public ones call them;
* :func:`rdb_models`, :func:`grpc_servicer`, :func:`grpc_api`: the proxy finds stale trials with
  one query over Optuna's own tables and answers heartbeats in Optuna's own servicer;
* :func:`backend_of`: Optuna's cache wraps the RDB storage in ``_backend``.

Example::

    optuna.artifacts.get_all_artifact_meta(trial, storage=storage_of(study))
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models as _rdb_models

__all__ = ["BaseHeartbeat", "RDB_SESSION_METHODS", "backend_of", "grpc_api", "grpc_servicer", "rdb_models",
           "storage_of", "study_id", "trial_id"]

# The RDBStorage methods that open a database session. Others call these, and only the outermost
# call retries, so one outage costs one backoff, not a product of nested ones.
RDB_SESSION_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "_create_new_trial", "_set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "_get_trials", "_get_best_trial_id", "record_heartbeat", "_get_stale_trial_ids",
)


def storage_of(study: optuna.Study) -> Any:
    """The storage a study reads and writes through (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of a study (``Study._study_id``)."""
    return study._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of a trial, live or frozen (``_trial_id``)."""
    return trial._trial_id


def backend_of(storage: Any) -> Any:
    """The storage under Optuna's cache layer (``_CachedStorage._backend``), or None."""
    return getattr(storage, "_backend", None)


def rdb_models() -> Any:
    """Optuna's SQLAlchemy models (``optuna.storages._rdb.models``)."""
    return _rdb_models


def grpc_servicer() -> type:
    """Optuna's gRPC storage servicer class; ImportError without grpcio."""
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    return OptunaStorageProxyService


def grpc_api() -> tuple[Any, Any]:
    """Optuna's generated gRPC modules ``(api_pb2, api_pb2_grpc)``; ImportError without grpcio."""
    from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc

    return api_pb2, api_pb2_grpc
