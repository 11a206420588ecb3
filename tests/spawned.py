"""What the race tests' ``spawn`` children run, in a module of its own so that they import little.

A spawned child imports the module its target function is defined in. Defined in a test module,
that meant the test module's own imports: the whole ``hpo`` (``hpo.cli``) with torch, ~2,000
modules and seconds per child, times four to ten children a test on 2 shared cores. Here they
import only the storage layer their races need (Optuna, SQLAlchemy, hpo's study and storage
modules: ~860 modules, no torch; ``tests/test_spawned.py`` keeps it so). Nothing here is a
stand-in: each child runs the real code the test races. (A race that trains or runs the worker
loop needs torch anyway; its child stays in its test module.)
"""

from __future__ import annotations

import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import optuna
import sqlalchemy

from hpo.search.study import open_study
from hpo.storage.artifacts.database_store import DatabaseStore
from hpo.spec import Spec
from hpo.storage.database.resilient import open_storage


def join_all(urls: dict[str, str], spec: Spec, barrier: Barrier, results: Queue) -> None:
    """In one worker process, join the study on every database at once, one thread each."""
    barrier.wait(timeout=120)  # every process has imported optuna and hpo: they start together

    def join(kind: str, url: str) -> None:
        try:
            study = open_study(spec, open_storage(url))
            results.put((kind, "ok", study._study_id))
        except BaseException as exc:  # reported to the test, whatever it is
            results.put((kind, "error", repr(exc)))

    threads = [threading.Thread(target=join, args=item) for item in urls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def claim_waiting(url: str, name: str, waiting: int, start: Barrier, out: Queue) -> None:
    """Asks for trials until it gets a new one (numbered after the ``waiting`` ones): the WAITING ones it was handed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    start.wait()
    got = []
    while True:
        trial = study.ask()
        if trial.number >= waiting:  # a new trial: nothing was waiting any more
            break
        got.append(trial.number)
    out.put(got)


def _slow_ddl(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    if statement.lstrip().upper().startswith("CREATE TABLE"):
        time.sleep(0.5)  # a busy server: workers that checked "missing" at once all get to CREATE


def open_database_store(url: str, start: Barrier, out: Queue) -> None:
    """Opens the database artifact store of ``url`` (table creation slowed down); "ok" or the error."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    sqlalchemy.event.listen(engine, "before_cursor_execute", _slow_ddl)
    start.wait()
    try:
        DatabaseStore(engine)
        out.put("ok")
    except Exception as exc:  # what the worker would have died of
        out.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
