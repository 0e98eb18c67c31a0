"""Shared fixtures: a real PostgreSQL scratch database, SQLite files, a loopback replay server, a fixed clock.

PostgreSQL is required: when it cannot be reached the tests that need it *error*
(they never skip), so a missing database cannot pass CI unnoticed.
``MARKETPOLL_TEST_ADMIN_URL`` names a database to connect to for creating the
scratch one (default: the machine's ``postgres@127.0.0.1:5432/test``).

Every test that needs the server (it uses ``pg_url``, directly or through ``pg_engine``,
or is the ``postgresql`` case of ``engine``) is marked ``postgres`` at collection, so
``python -m pytest -m "not postgres"`` runs the rest on a machine without PostgreSQL, and
``-m postgres`` only those.

Time: ``manual_clock`` is a :class:`clock.ManualClock` standing at :data:`support.FIXED_NOW`
(Monday 2024-03-11 15:00 UTC, 11:00 New York, XNYS regular session); it moves only when
the test moves it (``advance``, ``set``) or code under test sleeps on it. Pass it wherever
the code under test takes ``clock=``, so no result depends on the day the suite runs.

Data: ``support.fixture(name)`` reads our own payloads in tests/fixtures/, present in every
clone; ``support.real(name)`` reads a real recording from ../shared/data/real and skips the
test, with that reason, where it is absent (a fresh clone).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clock import ManualClock  # noqa: E402
from db.engine import make_engine  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from etl.loopback import LoopbackServer, Reply  # noqa: E402
from support import FIXED_NOW  # noqa: E402

ADMIN_URL = os.environ.get("MARKETPOLL_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCRATCH_DB = f"marketpoll_test_{os.getpid()}"


def pytest_collection_modifyitems(config, items):
    """Mark ``postgres`` every test that needs the server (see the module docstring)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("engine") == "postgresql"
        if "pg_url" in getattr(item, "fixturenames", ()) or on_postgres:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A fresh :class:`clock.ManualClock` at :data:`support.FIXED_NOW` (2024-03-11T15:00:00Z)."""
    return ManualClock(FIXED_NOW)


def _admin():
    try:
        conn = psycopg2.connect(ADMIN_URL, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for this test and is not reachable at {ADMIN_URL}: {exc}")
    conn.autocommit = True
    return conn


def _create_database(admin, name: str) -> str:
    """(Re)create the empty PostgreSQL database ``name`` through ``admin``; its URL."""
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg2.extensions.parse_dsn(ADMIN_URL)
    return sa.engine.URL.create(
        "postgresql+psycopg2",
        username=dsn.get("user"),
        password=dsn.get("password"),
        host=dsn.get("host"),
        port=int(dsn["port"]) if dsn.get("port") else None,
        database=name,
    ).render_as_string(hide_password=False)


def _drop_database(admin, name: str) -> None:
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def pg_url():
    """URL of a scratch PostgreSQL database, migrated, dropped at the end of the session."""
    admin = _admin()
    url = _create_database(admin, SCRATCH_DB)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    _drop_database(admin, SCRATCH_DB)


@pytest.fixture
def fresh_pg():
    """An engine on an empty PostgreSQL database (no schema: migrate it as a test needs), dropped afterwards."""
    admin = _admin()
    engine = make_engine(_create_database(admin, f"{SCRATCH_DB}_fresh"))
    yield engine
    engine.dispose()
    _drop_database(admin, f"{SCRATCH_DB}_fresh")


def _clean(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("TRUNCATE bars, series_last_write, etl_runs, scheduled_jobs, api_quota, rejected_bars, "
                                 "corporate_actions, series_preference, backfill_chunks, no_data_ranges, coverage, "
                                 "cluster_chunks, cluster_nodes RESTART IDENTITY")  # fmt: skip
        else:
            conn.exec_driver_sql("DELETE FROM bars")
            conn.exec_driver_sql("DELETE FROM series_last_write")
            conn.exec_driver_sql("DELETE FROM etl_runs")
            conn.exec_driver_sql("DELETE FROM scheduled_jobs")
            conn.exec_driver_sql("DELETE FROM api_quota")
            conn.exec_driver_sql("DELETE FROM rejected_bars")
            conn.exec_driver_sql("DELETE FROM corporate_actions")
            conn.exec_driver_sql("DELETE FROM series_preference")
            # cluster_chunks too: etl_runs ids restart, and a chunk left by an earlier test would claim run 1
            for table in ("backfill_chunks", "no_data_ranges", "coverage", "cluster_chunks", "cluster_nodes"):
                conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 - fixed names


@pytest.fixture
def pg_engine(pg_url):
    engine = make_engine(pg_url)
    _clean(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'marketpoll.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request):
    """Each test using this runs against both databases."""
    return request.getfixturevalue("pg_engine" if request.param == "postgresql" else "sqlite_engine")


@dataclass
class ReplayServer:
    """A loopback HTTP server whose replies come from ``route(path, query)``; every request is logged."""

    route: Callable[[str, dict[str, str]], Reply]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: LoopbackServer | None = None

    def __post_init__(self) -> None:
        def handler(path: str, query: dict[str, str]) -> Reply:
            with self.lock:
                self.requests.append((path, query))
            return self.route(path, query)

        self.server = LoopbackServer(handler)

    @property
    def url(self) -> str:
        return f"{self.server.url}/query"

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def replay():
    """Factory: ``replay(route)`` or ``replay([reply, reply, ...])`` (served in order, the last repeated)."""
    servers: list[ReplayServer] = []

    def make(route) -> ReplayServer:
        if not callable(route):
            replies = list(route)
            state = {"i": 0}

            def seq(_path, _query):
                reply = replies[min(state["i"], len(replies) - 1)]
                state["i"] += 1
                return reply

            route = seq
        srv = ReplayServer(route)
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.close()
