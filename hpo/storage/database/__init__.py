"""Reaching the study database: URLs and secrets, opening it, outages, locks, and the studies it holds.

* :mod:`hpo.storage.database.urls`: ``--storage`` / ``$HPO_STORAGE`` / the default, password files, masking;
* :mod:`hpo.storage.database.resilient`: opening a storage strictly, and riding out database outages once open;
* :mod:`hpo.storage.database.locks`: a file lock (one machine) and a database-wide lock (every worker);
* :mod:`hpo.storage.database.proxied_lock`: that lock made of Optuna storage calls, for workers behind the proxy;
* :mod:`hpo.storage.database.proxy_client`: a ``grpc://`` storage, the worker's side of `hpo storage-proxy`;
* :mod:`hpo.storage.database.proxy_auth`: the proxy's shared token and TLS, for its clients and itself;
* :mod:`hpo.storage.database.studies`: the studies a storage holds, and loading one by name.
"""
