"""Storage URLs: where the URL comes from, where its password comes from, and how it is shown.

``--storage`` wins, then ``$HPO_STORAGE``, then a SQLite file ``hpo.db`` in the working
directory. A URL without a password takes the one in ``$HPO_STORAGE_PASSWORD_FILE`` (a Docker
or Kubernetes secret), so the password is in neither the URL nor the environment. Whatever is
printed goes through :func:`mask_url` or :func:`scrub` first.

Example::

    url, origin = resolve_storage_url(None)       # ("sqlite:///hpo.db", "default")
    mask_url("postgresql://me:secret@db/hpo")     # 'postgresql://me:***@db/hpo'
    display_url("sqlite:///hpo.db")               # 'sqlite:////home/me/work/hpo.db'
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote_plus

import sqlalchemy
from sqlalchemy.engine import make_url

from hpo.errors import HpoError

DEFAULT_URL = "sqlite:///hpo.db"
ENV_VAR = "HPO_STORAGE"
PASSWORD_FILE_VAR = "HPO_STORAGE_PASSWORD_FILE"


def resolve_storage_url(storage: str | None) -> tuple[str, str]:
    """(url, where it came from): ``--storage``, ``$HPO_STORAGE`` or ``default``."""
    if storage:
        url, origin = storage, "--storage"
    elif os.environ.get(ENV_VAR):
        url, origin = os.environ[ENV_VAR], f"${ENV_VAR}"
    else:
        return DEFAULT_URL, "default"
    return _with_password_file(url), origin


def _with_password_file(url: str) -> str:
    path = os.environ.get(PASSWORD_FILE_VAR)
    if not path:
        return url
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url  # open_storage explains what is wrong with it
    if parsed.password or parsed.get_backend_name() == "sqlite":
        return url
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise HpoError(f"${PASSWORD_FILE_VAR} = {path}: cannot read the storage password ({exc.strerror})") from None
    return parsed.set(password=secret).render_as_string(hide_password=False)


def backend(url: str) -> str:
    """``sqlite``, ``postgresql``, ``mysql``... or ``""`` for what is not a database URL."""
    try:
        return make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        return ""


def sqlite_path(url: str) -> Path | None:
    """The absolute path of a SQLite file URL; None for memory databases and other backends."""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


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


def display_url(url: str) -> str:
    """What to print for a storage: masked, and a SQLite file by its absolute path."""
    path = sqlite_path(url)
    return f"sqlite:///{path}" if path is not None else mask_url(url)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (raw or URL-encoded) masked, for error messages."""
    secret = _password(url)
    if secret:
        for form in {secret, quote_plus(secret)}:
            text = text.replace(form, "***")
    return text
