"""`hpo storage-proxy`, the server side: Optuna's gRPC proxy with heartbeats, and the artifact port.

Only the command that serves imports this package; workers reach it through
:mod:`hpo.storage.database.proxy_client` and :mod:`hpo.storage.artifacts.http_store`.
"""
