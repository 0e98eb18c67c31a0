"""scheduled_jobs.interval_minutes refuses NaN, infinity and values <= 0 in the database itself
(migration 0009), and existing databases upgrade to it, even one that already holds such a row."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from db.engine import make_engine
from db.jobs import JobStore
from db.migrate import current_revision, head_revision, upgrade
from support import migrate_to

INSERT = sa.text(
    "INSERT INTO scheduled_jobs (name, session, exchange, provider, symbols, interval_minutes, bar_interval, paused, "
    "created_at, updated_at) VALUES (:name, 'regular', 'XNYS', 'demo', 'IBM', :v, '5min', false, "
    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
BAD_PG = ["NaN", "Infinity", "-Infinity", "0", "-1"]  # as PostgreSQL spells float8 values


def insert(engine: sa.Engine, name: str, value) -> None:
    with engine.begin() as conn:
        conn.execute(INSERT, {"name": name, "v": value})


def interval_check(engine: sa.Engine) -> tuple[bool, str]:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'scheduled_jobs'::regclass AND conname = 'scheduled_jobs_interval_check'"
        )).one()  # fmt: skip


@pytest.mark.parametrize("value", BAD_PG)
def test_postgresql_refuses_a_job_interval_that_is_not_a_finite_number_above_zero(pg_engine, value):
    with pytest.raises(sa.exc.IntegrityError, match="scheduled_jobs_interval_check"):
        insert(pg_engine, "bad", value)
    insert(pg_engine, "good", "5")
    with pytest.raises(sa.exc.IntegrityError, match="scheduled_jobs_interval_check"):  # an UPDATE (a hand edit) too
        with pg_engine.begin() as conn:
            conn.execute(sa.text("UPDATE scheduled_jobs SET interval_minutes = :v WHERE name = 'good'"), {"v": value})
    assert [j.interval_minutes for j in JobStore(pg_engine).all()] == [5.0]


def test_postgresql_refuses_nan_bound_as_a_python_float(pg_engine):
    with pytest.raises(sa.exc.IntegrityError):
        insert(pg_engine, "bad", float("nan"))
    with pytest.raises(sa.exc.IntegrityError):
        insert(pg_engine, "bad", float("inf"))
    insert(pg_engine, "ok", 1 / 60)  # the shortest interval the CLI takes still fits
    insert(pg_engine, "day", 1440.0)


def test_an_existing_postgresql_database_upgrades_to_the_check(fresh_pg):
    migrate_to(fresh_pg, "0008")
    insert(fresh_pg, "before", 5.0)
    insert(fresh_pg, "probe", "NaN")  # the old constraint let NaN through: what this migration fixes
    with fresh_pg.begin() as conn:
        conn.execute(sa.text("DELETE FROM scheduled_jobs WHERE name = 'probe'"))
    upgrade(fresh_pg)  # what every start does (db/migrate.py)
    assert current_revision(fresh_pg) == head_revision()  # 0009 and any later one
    validated, definition = interval_check(fresh_pg)
    assert validated and "NaN" in definition and "Infinity" in definition
    with pytest.raises(sa.exc.IntegrityError):
        insert(fresh_pg, "after", "NaN")
    assert [(j.name, j.interval_minutes) for j in JobStore(fresh_pg).all()] == [("before", 5.0)]


def test_a_postgresql_database_holding_a_nan_row_still_upgrades(fresh_pg, caplog):
    migrate_to(fresh_pg, "0008")
    insert(fresh_pg, "good", 5.0)
    insert(fresh_pg, "nan", "NaN")
    upgrade(fresh_pg)  # a failed migration would stop every start (exit 3): it must not fail
    assert current_revision(fresh_pg) == head_revision()
    assert any("nan" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    validated, _ = interval_check(fresh_pg)
    assert not validated  # NOT VALID: the old row is kept, every new write is checked
    with pytest.raises(sa.exc.IntegrityError):
        insert(fresh_pg, "new", "NaN")
    jobs, invalid = JobStore(fresh_pg).load()  # the scheduler skips the row and reports it, as before
    assert [j.name for j in jobs] == ["good"] and [i.name for i in invalid] == ["nan"]


def test_sqlite_refuses_infinity_and_upgrades_with_such_a_row(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate_to(engine, "0008")
    insert(engine, "inf", float("inf"))  # let through by interval_minutes > 0
    insert(engine, "good", 5.0)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    for value in (float("inf"), float("-inf"), 0.0, -1.0, float("nan"), "five"):  # NaN: stored as NULL, refused
        with pytest.raises(sa.exc.IntegrityError):
            insert(engine, "new", value)
    with pytest.raises(sa.exc.IntegrityError):  # the session check survived the rebuild of the table
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE scheduled_jobs SET session = 'lunch' WHERE name = 'good'"))
    jobs, invalid = JobStore(engine).load()
    assert [j.name for j in jobs] == ["good"] and [i.name for i in invalid] == ["inf"]
    engine.dispose()
