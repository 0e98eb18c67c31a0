"""``series_last_write``: the loader keeps one row per series in the transaction that writes its bars (on both
databases), only when it wrote rows, never from a load rolled back; migration 0012 fills it from existing bars."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import etl.load
from db.engine import make_engine
from db.migrate import upgrade
from errors import LoadError
from etl.load import PostgresBarLoader, make_loader
from models.bar import Bar
from support import migrate_to

T0 = datetime(2024, 3, 11, 13, 30, tzinfo=UTC)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def bars(n, *, symbol="IBM", start=T0, close="10.5000"):
    return [Bar("demo", symbol, "5min", start + timedelta(minutes=5 * i), "10.0000", "11.0000", "9.5000", close, "100")
            for i in range(n)]  # fmt: skip


def utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def latest(engine) -> dict[str, tuple[datetime, datetime, int]]:
    """symbol -> (newest_ts, written_at, rows_written)."""
    with engine.connect() as c:
        got = c.exec_driver_sql("SELECT symbol, newest_ts, written_at, rows_written FROM series_last_write").all()
    return {s: (utc(ts), utc(at), n) for s, ts, at, n in got}


def last_ingested(engine, symbol: str) -> datetime:
    with engine.connect() as c:
        return utc(c.exec_driver_sql("SELECT max(ingested_at) FROM bars WHERE symbol = ?" if engine.dialect.name == "sqlite"
                                     else "SELECT max(ingested_at) FROM bars WHERE symbol = %s", (symbol,)).scalar())  # fmt: skip


def age(engine, symbol: str = "IBM") -> None:
    """Set the series' written_at long ago: a load that writes nothing must leave it so."""
    at = LONG_AGO if engine.dialect.name == "postgresql" else LONG_AGO.replace(tzinfo=None)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE series_last_write SET written_at = :at WHERE symbol = :s"), {"at": at, "s": symbol})


def test_a_load_writes_its_series_row_and_an_identical_reload_leaves_it_as_it_is(engine):
    loader = make_loader(engine)
    began = datetime.now(UTC) - timedelta(seconds=2)
    assert loader.load_many([bars(10), bars(3, symbol="MSFT")]) == [10, 3]
    got = latest(engine)
    assert set(got) == {"IBM", "MSFT"}
    assert got["IBM"][0] == T0 + timedelta(minutes=45) and got["IBM"][2] == 10
    assert got["MSFT"][0] == T0 + timedelta(minutes=10) and got["MSFT"][2] == 3
    assert got["IBM"][1] >= began
    if engine.dialect.name == "postgresql":  # the writing transaction's now(), as its bars' ingested_at
        assert got["IBM"][1] == last_ingested(engine, "IBM") == got["MSFT"][1]
    age(engine)
    before = latest(engine)
    assert loader.load(bars(10)) == 0  # the identical re-load (PostgreSQL: from memory)
    assert make_loader(engine).load(bars(10)) == 0  # and by a fresh loader (compared with the database)
    assert latest(engine) == before  # written_at too: nothing written, nothing touched


def test_a_revised_bar_updates_the_row_and_older_bars_never_move_newest_ts_back(engine):
    loader = make_loader(engine)
    loader.load(bars(10))
    age(engine)
    revised = [*bars(10)[:4], bars(10, close="10.7500")[4], *bars(10)[5:]]
    assert loader.load(revised) == 1
    newest_ts, written_at, rows = latest(engine)["IBM"]
    assert (newest_ts, rows) == (T0 + timedelta(minutes=45), 1) and written_at > LONG_AGO
    if engine.dialect.name == "postgresql":
        assert written_at == last_ingested(engine, "IBM")
    # a new bar moves it forward (the remembered path on PostgreSQL), older history (a backfill) does not move it back
    assert loader.load([*revised, *bars(1, start=T0 + timedelta(minutes=50))]) == 1
    assert latest(engine)["IBM"][0] == T0 + timedelta(minutes=50)
    assert make_loader(engine).load(bars(5, start=T0 - timedelta(days=1))) == 5
    assert latest(engine)["IBM"][:3:2] == (T0 + timedelta(minutes=50), 5)


def test_a_load_rolled_back_leaves_the_row_as_it_was(engine, monkeypatch):
    loader = make_loader(engine)
    loader.load(bars(10))
    age(engine)
    before = latest(engine)
    # a bad value: the batch fails whole
    broken = [*bars(10, close="10.9000")[:9], Bar("demo", "IBM", "5min", T0 + timedelta(minutes=45), "x", "1", "1", "1", "1")]
    with pytest.raises(LoadError):
        loader.load(broken)
    assert latest(engine) == before

    # a failure after the series upsert ran, in the same transaction (the last statements before COMMIT)
    def boom(*_args, **_kwargs):
        raise sa.exc.OperationalError("UPDATE etl_runs", {}, Exception("injected"))

    if engine.dialect.name == "postgresql":
        monkeypatch.setattr(etl.load, "_notify_statements", lambda *a: ["SELECT 1 / 0"])
        fresh = PostgresBarLoader(engine)
    else:
        monkeypatch.setattr(etl.load, "credit_statement", boom)
        fresh = make_loader(engine)
    (result,) = fresh.load_many([bars(10, close="10.9000")], credits=[etl.load.Credit(1, 10, 0)])
    assert isinstance(result, LoadError)
    assert latest(engine) == before
    monkeypatch.undo()
    assert make_loader(engine).load(bars(10, close="10.9000")) == 10
    assert latest(engine)["IBM"][2] == 10 and latest(engine)["IBM"][1] > LONG_AGO


def test_a_group_that_fails_writes_only_the_rows_of_the_batches_that_land(engine):
    loader = make_loader(engine)
    broken = [Bar("demo", "BAD", "5min", T0, "not-a-number", "1", "1", "1", "1")]
    results = loader.load_many([bars(2, symbol="AAPL"), broken])
    assert results[0] == 2 and isinstance(results[1], LoadError)
    assert {s: v[2] for s, v in latest(engine).items()} == {"AAPL": 2}


def test_postgres_remembered_statement_undone_writes_its_row_once(pg_engine):
    loader = PostgresBarLoader(pg_engine)
    loader.load(bars(10))
    with pg_engine.begin() as c:  # the memory is now wrong: its statement fails whole, the general path loads instead
        c.exec_driver_sql("DELETE FROM bars WHERE ts = %s", (T0 + timedelta(minutes=45),))
    assert loader.load([*bars(10), *bars(1, start=T0 + timedelta(minutes=50))]) == 2
    assert latest(pg_engine)["IBM"][::2] == (T0 + timedelta(minutes=50), 2)


def test_postgres_concurrent_writers_of_the_same_series_neither_deadlock_nor_lose_the_row(pg_url):
    # 6 loaders, each writing the same three series (sent in an order that is not sorted) with its own values
    engine = make_engine(pg_url, pool_size=8)
    with engine.begin() as c:
        c.exec_driver_sql("TRUNCATE bars, series_last_write")
    results, errors = [], []
    barrier = threading.Barrier(6)

    def work(i):
        loader = PostgresBarLoader(engine)
        barrier.wait()
        try:
            for round_ in range(4):
                close = f"10.{i}{round_}00"
                results.extend(loader.load_many([bars(20, symbol=s, close=close) for s in ("CCC", "AAA", "BBB")]))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = latest(engine)
    engine.dispose()
    assert errors == [] and all(isinstance(r, int) for r in results), results
    assert set(got) == {"AAA", "BBB", "CCC"}
    assert all(ts == T0 + timedelta(minutes=95) and 0 < n <= 20 for ts, _, n in got.values())


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_migration_fills_the_table_from_existing_bars(dialect, request, tmp_path):
    engine = request.getfixturevalue("fresh_pg") if dialect == "postgresql" else make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate_to(engine, "0011")
    early, late = datetime(2024, 3, 1, 12, tzinfo=UTC), datetime(2024, 3, 2, 12, tzinfo=UTC)
    if dialect == "sqlite":
        early, late = early.replace(tzinfo=None), late.replace(tzinfo=None)
    stored = [  # IBM: 3 bars written early, 2 of them (not the newest) rewritten late; MSFT: 2 bars written early
        ("IBM", T0, late), ("IBM", T0 + timedelta(minutes=5), late), ("IBM", T0 + timedelta(minutes=10), early),
        ("MSFT", T0, early), ("MSFT", T0 + timedelta(minutes=5), early),
    ]  # fmt: skip
    with engine.begin() as c:
        for symbol, ts, at in stored:
            c.execute(sa.text("INSERT INTO bars (provider, symbol, interval, ts, open, high, low, close, volume, ingested_at) "
                              "VALUES ('demo', :s, '5min', :ts, 1, 1, 1, 1, 1, :at)"),
                      {"s": symbol, "ts": ts if dialect == "postgresql" else ts.replace(tzinfo=None), "at": at})  # fmt: skip
    upgrade(engine)
    assert latest(engine) == {
        "IBM": (T0 + timedelta(minutes=10), utc(late), 2),  # the newest bar ever, the last write and its rows
        "MSFT": (T0 + timedelta(minutes=5), utc(early), 2),
    }
    # then kept by the loader (the stored bar at 13:35 revised, two new ones)
    assert make_loader(engine).load(bars(3, symbol="MSFT", start=T0 + timedelta(minutes=5))) == 3
    assert latest(engine)["MSFT"][::2] == (T0 + timedelta(minutes=15), 3)
    migrate_to(engine, "0011", down=True)  # and the downgrade drops it
    assert "series_last_write" not in sa.inspect(engine).get_table_names()
    engine.dispose()
