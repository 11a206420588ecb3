"""The studies a storage holds, and opening one of them by name, without creating anything.

Lock studies (``hpo-lock:...``, :mod:`hpo.storage.database.proxied_lock`) are hpo's own and never
listed. Every read-only command opens its study here: a name that is not there is one line naming
the storage and the studies it does hold.

Example::

    study = load_existing("imdb", open_storage("sqlite:///hpo.db", create=False))
    study_names(storage)          # ['imdb', 'imdb-seed']
    has_study(storage, "imdb")    # True
"""

from __future__ import annotations

from typing import Any

import optuna

from hpo.errors import HpoError
from hpo.record import StudyRecord
from hpo.storage.database.proxied_lock import is_lock_study
from hpo.storage.database.urls import display_url


def study_names(storage: Any) -> list[str]:
    """The names of the studies of trials in ``storage`` (an empty list for a database without Optuna's tables)."""
    try:
        # get_all_studies, not get_all_study_summaries: summaries read every trial of every study.
        return sorted(s.study_name for s in storage.get_all_studies() if not is_lock_study(s.study_name))
    except Exception:  # a database without Optuna's tables
        return []


def has_study(storage: Any, name: str) -> bool:
    """Whether ``storage`` holds a study of trials named ``name``: one lookup by name. Listing the
    studies to find it read every study's system attributes, the dashboard's note of every trial
    among them (27,000 rows for a 1,000-trial study, on each rewrite of the study's note)."""
    if is_lock_study(name):
        return False
    try:
        storage.get_study_id_from_name(name)
    except Exception:  # KeyError: no such study; or a database without Optuna's tables
        return False
    return True


def load_existing(name: str, storage: Any) -> optuna.Study:
    """An existing study by name, or an HpoError naming the storage and the studies it does hold."""
    url = getattr(storage, "url", "")
    where = f"storage {display_url(url)}" if url else "this storage"
    if not has_study(storage, name):
        names = study_names(storage)  # only for the message
        raise HpoError(
            f"no study named {name!r} in {where} (studies: {', '.join(names) or 'none'}); "
            "pass --storage URL or set $HPO_STORAGE to the study's database"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    StudyRecord.of(study).check(writing=False)
    return study
