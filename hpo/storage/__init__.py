"""Where studies live: the database, its URL and secrets, its locks, and the files beside it.

* :mod:`hpo.storage.urls`: ``--storage`` / ``$HPO_STORAGE`` / default, password files, masking;
* :mod:`hpo.storage.locks`: a file lock and a database-wide lock for creating things once;
* :mod:`hpo.storage.storage_lock`: that lock made of Optuna storage calls, for ``grpc://`` workers;
* :mod:`hpo.storage.resilient`: opening a storage strictly and riding out database outages;
* :mod:`hpo.storage.artifacts`: the study's artifact store (checkpoints, figures).

Nothing is imported here: the data cache takes :func:`~hpo.storage.locks.file_lock` without
pulling Optuna into the training process's imports.

Example::

    from hpo.storage.urls import resolve_storage_url
    from hpo.storage.resilient import open_storage
    url, origin = resolve_storage_url(None)       # ("sqlite:///hpo.db", "default")
    storage = open_storage(url)                   # a ResilientStorage, or a clear HpoError
"""
