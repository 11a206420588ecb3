"""Where studies live: storage URLs, engine options, and passwords kept out of every message.

``--storage`` wins, then ``$HPO_STORAGE``, then a SQLite file ``hpo.db`` in the working
directory. SQLite runs in WAL mode with a long busy timeout so several local workers can share
one file; PostgreSQL (``postgresql+psycopg://``) and MySQL/MariaDB (``mysql+pymysql://``) are
for several machines on one study.

Example::

    url, origin = resolve_storage_url(None)       # ("sqlite:///hpo.db", "default")
    storage = open_storage(url)                   # an optuna RDBStorage, or a clear HpoError
    mask_url("postgresql://me:secret@db/hpo")     # 'postgresql://me:***@db/hpo'
"""

from __future__ import annotations

import os
import re
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from hpo.errors import HpoError

DEFAULT_URL = "sqlite:///hpo.db"
ENV_VAR = "HPO_STORAGE"
CONNECT_TIMEOUT_S = 10
_DRIVER_HINT = {
    "postgresql": "pip install 'hpo[postgres]' (psycopg 3) and use postgresql+psycopg://",
    "mysql": "pip install 'hpo[mysql]' (PyMySQL) and use mysql+pymysql://",
}


def resolve_storage_url(storage: str | None) -> tuple[str, str]:
    """(url, where it came from): the option, the environment, or the default SQLite file."""
    if storage:
        return storage, "--storage"
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR], f"${ENV_VAR}"
    return DEFAULT_URL, "default"


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except Exception:
        m = re.match(r"^[^:/]+://[^:/@]*:([^@]*)@", url)
        return m.group(1) if m else None


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: the only form that is ever printed."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (raw or URL-encoded) masked, for error messages."""
    secret = _password(url)
    if secret:
        from urllib.parse import quote_plus

        for form in {secret, quote_plus(secret)}:
            text = text.replace(form, "***")
    return text


def engine_kwargs(url: str) -> dict[str, Any]:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 3600}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    elif backend in ("mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def open_storage(url: str, **storage_kwargs: Any) -> optuna.storages.RDBStorage:
    """An Optuna RDBStorage for ``url``; any failure becomes one HpoError line without the password."""
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        raise HpoError(
            f"storage URL {mask_url(url)!r} is not a database URL "
            "(e.g. sqlite:///hpo.db, postgresql+psycopg://user@host/db, mysql+pymysql://user@host/db)"
        ) from None
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), **storage_kwargs)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        hint = _DRIVER_HINT.get(backend, "install the database driver")
        raise HpoError(f"no driver for storage {mask_url(url)}: {scrub(str(exc), url)}; {hint}") from None
    except Exception as exc:  # OperationalError, ProgrammingError... from the driver
        reason = scrub(str(getattr(exc, "orig", None) or exc), url).strip().splitlines()
        raise HpoError(
            f"cannot open storage {mask_url(url)}: {reason[0] if reason else type(exc).__name__}"
        ) from None
    if backend == "sqlite":
        _enable_wal(storage)
    return storage


def _enable_wal(storage: optuna.storages.RDBStorage) -> None:
    # WAL lets readers (the dashboard, other workers) proceed while one worker writes; the mode
    # is stored in the database file, so setting it once is enough.
    with storage.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
