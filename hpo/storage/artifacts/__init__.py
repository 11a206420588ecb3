"""The files a study keeps beside its trials: checkpoints, figures, step telemetry, pretrained encoders.

* :mod:`hpo.storage.artifacts.stores`: which store a study uses (recorded on it), and opening it;
* :mod:`hpo.storage.artifacts.database_store`: a store inside the study's own database;
* :mod:`hpo.storage.artifacts.http_store`: the client of the proxy's artifact port;
* :mod:`hpo.storage.artifacts.keys`: how checkpoints and encoders are named, and sweeping dead checkpoints;
* :mod:`hpo.storage.artifacts.usage`: what a study's artifacts take;
* :mod:`hpo.storage.artifacts.cleanup`: `hpo clean`.
"""
