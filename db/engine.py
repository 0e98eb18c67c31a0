"""Engine creation and database error translation (the load side's error boundary)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg2
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from errors import ConfigError, LoadError

__all__ = ["make_engine", "translate_db_errors", "describe_url", "is_postgres"]

T = TypeVar("T")


def describe_url(url: str) -> str:
    """``url`` with any password hidden, safe for logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database url>"


def make_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    """An Engine for ``url`` (``postgresql://...``, ``postgresql+psycopg2://...`` or ``sqlite:///file.db``).

    Raises :class:`~errors.ConfigError` for an unparseable URL or a missing driver;
    connecting happens lazily (first use raises :class:`~errors.LoadError`).
    """
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"DATABASE_URL is not a database URL: {exc}", name="DATABASE_URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        # the form everyone writes; SQLAlchemy 2.1 maps it to psycopg 3, marketpoll ships psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg2")
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        # threads share one file; a 30 s busy timeout instead of "database is locked" at once
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"cannot use database URL {describe_url(url)} (DATABASE_URL or --database-url): {exc}; "
            "marketpoll supports postgresql:// and sqlite:///",
            name="DATABASE_URL",
        ) from None
    if parsed.get_backend_name() == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # WAL: readers do not block the loader
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


def is_postgres(engine: sa.Engine) -> bool:
    return engine.dialect.name == "postgresql"


@contextmanager
def translate_db_errors(what: str) -> Iterator[None]:
    """Re-raise SQLAlchemy/DBAPI errors as :class:`~errors.LoadError` (transient when the connection failed)."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        transient = bool(exc.connection_invalidated) or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise LoadError(f"{what}: {detail}", transient=transient) from exc
    except sa_exc.SQLAlchemyError as exc:
        raise LoadError(f"{what}: {exc}") from exc
    except (psycopg2.Error, sqlite3.Error) as exc:  # raw DBAPI use (the COPY path) is not wrapped by SQLAlchemy
        transient = isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError, sqlite3.OperationalError))
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoadError(f"{what}: {detail}", transient=transient) from exc
