"""Where studies live: the database (and how to reach it), and the files kept beside the trials.

* :mod:`hpo.storage.database`: storage URLs and secrets, opening a database strictly and riding
  out its outages, the locks that make workers create things once, the studies it holds, and the
  client of `hpo storage-proxy`;
* :mod:`hpo.storage.artifacts`: the study's artifact store (a folder, the database itself, S3, or
  the proxy's artifact port), how hpo names what it keeps there, what it takes, and clean-up;
* :mod:`hpo.storage.proxy`: the server side of `hpo storage-proxy`; workers never import it;
* :mod:`hpo.storage.optuna_private`: the few uses of Optuna's private API, each with why.

Example::

    url, origin = resolve_storage_url(None)       # ("sqlite:///hpo.db", "default")
    storage = open_storage(url)                   # a ResilientStorage, or a clear HpoError
"""
