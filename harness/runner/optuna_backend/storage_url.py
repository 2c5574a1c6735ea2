"""The `--storage` URL of a shared study: its documented forms mapped to the installed driver, and
the check that it can be reached, run before any file of the sweep is written.

SQLAlchemy reads a bare `postgresql://` as psycopg 3 and a bare `mysql://` as mysqlclient; the
`[postgres]` extra installs psycopg2. A bare URL (the form the README documents) therefore gets the
driver that is installed, in one place, and every user of the URL (the study, the lock, the
worker processes through the job file) sees that form. A URL that names its driver
(`postgresql+psycopg2://...`) is used as given.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, EnvironmentFault

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DRIVERS: dict[str, tuple[tuple[str, str], ...]] = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql")),
}
"""Database -> (SQLAlchemy driver name, module), in SQLAlchemy's order of preference."""
INSTALL_HINT = {"postgresql": "pip install -e '.[postgres]' (psycopg2)", "mysql": "pip install pymysql"}
EXPECTED = ("postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE; "
            "leave --storage out for the SQLite study in the results folder")
CONNECT_TIMEOUT_S = 10


def shown(text: str) -> str:
    """The URL as messages show it: the password masked (messages end up in logs and issues)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(text).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not a URL at all: nothing to hide)
        return text


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def database_url(text: str) -> str:
    """`text` with the installed driver where it names none; ConfigError for anything but a
    PostgreSQL or MySQL URL, EnvironmentFault when no driver for it is installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except (ArgumentError, ValueError, TypeError):
        raise ConfigError(f"--storage {text!r}: not a database URL; expected {EXPECTED}") from None
    database = url.get_backend_name()
    if database not in DRIVERS:
        raise ConfigError(f"--storage {shown(text)!r}: {database} URLs are not supported here; expected {EXPECTED}")
    if url.drivername != database:
        return text
    for driver, module in DRIVERS[database]:
        if _installed(module):
            if text.startswith(f"{database}://"):  # the rest of the URL stays exactly as written
                return f"{database}+{driver}://" + text[len(database) + 3:]
            return url.set(drivername=f"{database}+{driver}").render_as_string(hide_password=False)
    modules = " or ".join(module for _, module in DRIVERS[database])
    raise EnvironmentFault(f"--storage {shown(text)!r}: no {database} driver is installed ({modules}); "
                           f"{INSTALL_HINT[database]}")


def storage_engine(url: str, **options: Any) -> Engine:
    """A SQLAlchemy engine for a storage URL (already through `database_url`), faults as EnvironmentFault."""
    import sqlalchemy

    try:
        return sqlalchemy.create_engine(url, **options)
    except (sqlalchemy.exc.ArgumentError, ImportError) as exc:  # an unknown or missing driver
        database = url.split("+")[0].split(":")[0]
        hint = f"; {INSTALL_HINT[database]}" if database in INSTALL_HINT else ""
        raise EnvironmentFault(f"--storage {shown(url)!r}: {exc}{hint}") from None


def check_storage(text: str) -> str:
    """The URL `database_url` gives, once a connection to it has opened (within CONNECT_TIMEOUT_S)."""
    import sqlalchemy

    url = database_url(text)
    query = sqlalchemy.engine.make_url(url).query
    connect_args = {} if "connect_timeout" in query else {"connect_timeout": CONNECT_TIMEOUT_S}
    engine = storage_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:  # server down, wrong port, bad credentials, no database
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise EnvironmentFault(f"--storage {shown(text)!r}: cannot connect ({reason})") from None
    finally:
        engine.dispose()
    return url
