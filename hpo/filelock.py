"""An exclusive lock on a file, for work that several processes on one machine must not do twice.

Used for building the data cache and for creating a SQLite study. Where ``fcntl`` is missing
(Windows) it does not lock; the callers' atomic renames and Optuna's own conflict handling
still keep the results intact.

Example::

    with file_lock(Path("cache/imdb.lock")):
        if not target.exists():
            build(target)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
