"""The load path against real PostgreSQL and SQLite: idempotent, exact, atomic."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from db import tables
from errors import LoadError
from etl.load import PostgresBarLoader, make_loader
from models.bar import Bar

T0 = datetime(2024, 3, 11, 13, 30, tzinfo=UTC)


def bars(n, *, symbol="IBM", start=T0, close="10.5000", provider="demo"):
    stamps = [start + timedelta(minutes=5 * i) for i in range(n)]
    return [
        Bar(provider, symbol, "5min", ts, "10.0000", "11.0000", "9.5000", close, str(int(ts.timestamp()) % 997)) for ts in stamps
    ]


def rows(engine):
    t = tables.bars.c
    with engine.connect() as c:
        return c.execute(sa.select(t.symbol, t.ts, t.close, t.volume, t.ingested_at).order_by(t.symbol, t.ts)).all()


def test_load_twice_adds_and_changes_nothing(engine):
    loader = make_loader(engine)
    assert loader.load(bars(100)) == 100
    before = rows(engine)
    assert loader.load(bars(100)) == 0
    assert rows(engine) == before  # same values, same ingested_at: nothing rewritten


def test_revised_bar_overwrites(engine):
    loader = make_loader(engine)
    loader.load(bars(10))
    revised = bars(10)[:9] + [
        Bar("demo", "IBM", "5min", T0 + timedelta(minutes=45), "10.0000", "11.0000", "9.5000", "10.7500", "999")
    ]
    assert loader.load(revised) == 1
    last = rows(engine)[-1]
    assert Decimal(str(last.close)) == Decimal("10.75") and Decimal(str(last.volume)) == 999


def test_overlapping_poll_loads_only_new_bars(engine):
    loader = make_loader(engine)
    loader.load(bars(100))
    assert loader.load(bars(100, start=T0 + timedelta(minutes=5 * 50))) == 50
    assert len(rows(engine)) == 150


def test_duplicate_keys_in_one_batch_last_wins(engine):
    dup = bars(3) + [Bar("demo", "IBM", "5min", T0, "10.0000", "11.0000", "9.5000", "10.9000", "1")]
    assert make_loader(engine).load(dup) == 3
    assert Decimal(str(rows(engine)[0].close)) == Decimal("10.9")


def test_series_are_independent(engine):
    loader = make_loader(engine)
    loader.load(bars(5, symbol="IBM"))
    assert loader.load(bars(5, symbol="MSFT") + bars(5, symbol="IBM", provider="alphavantage")) == 10


def test_timestamps_round_trip_as_utc(engine):
    make_loader(engine).load(bars(1))
    ts = rows(engine)[0].ts
    if ts.tzinfo is None:  # SQLite keeps the UTC wall time without an offset
        ts = ts.replace(tzinfo=UTC)
    assert ts == T0


def test_latest_bars_view(engine):
    loader = make_loader(engine)
    loader.load(bars(10, symbol="IBM") + bars(3, symbol="MSFT"))
    with engine.connect() as c:
        got = c.exec_driver_sql("SELECT symbol, close FROM latest_bars ORDER BY symbol").all()
        newest = c.exec_driver_sql("SELECT max(ts) FROM latest_bars WHERE symbol = 'IBM'").scalar()
    assert [g.symbol for g in got] == ["IBM", "MSFT"]
    assert str(newest).startswith("2024-03-11 14:15")


def test_a_failing_batch_lands_nothing_and_keeps_what_was_there(engine):
    loader = make_loader(engine)
    loader.load(bars(5))
    poisoned = bars(10, start=T0 + timedelta(minutes=25))
    # a value validation would have caught; the database refuses it (NOT NULL) mid-batch
    poisoned[7] = Bar("demo", "IBM", "5min", poisoned[7].ts, "10", "11", "9", None, "1")
    with pytest.raises(LoadError):
        loader.load(poisoned)
    assert len(rows(engine)) == 5


def test_postgres_refuses_non_numeric_text_in_one_piece(pg_engine):
    loader = PostgresBarLoader(pg_engine)
    loader.load(bars(5))
    poisoned = bars(10, start=T0 + timedelta(minutes=25))
    poisoned[7] = Bar("demo", "IBM", "5min", poisoned[7].ts, "abc", "11", "9", "10", "1")
    with pytest.raises(LoadError, match="numeric"):
        loader.load(poisoned)
    assert len(rows(pg_engine)) == 5


def test_postgres_keeps_decimal_text_exactly(pg_engine):
    exact = [Bar("demo", "IBM", "1day", T0, "299.83536210316964", "300.1", "61.5351215744", "124.5600", "1496329307.4141")]
    PostgresBarLoader(pg_engine).load(exact)
    with pg_engine.connect() as c:
        got = c.exec_driver_sql("SELECT open::text, low::text, close::text, volume::text FROM bars").one()
    assert tuple(got) == ("299.83536210316964", "61.5351215744", "124.5600", "1496329307.4141")


def test_postgres_concurrent_loaders_of_the_same_new_bars(pg_engine, pg_url):
    # Several writers race to append the same fresh bars: the unique violation of the
    # losers' COPY falls back to the merge; nothing is lost, duplicated or raised.
    from db.engine import make_engine

    engine = make_engine(pg_url, pool_size=8)
    errors = []
    batch = bars(500)
    barrier = threading.Barrier(6)

    def work():
        loader = PostgresBarLoader(engine)
        barrier.wait()
        try:
            loader.load(batch)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as c:
        count = c.exec_driver_sql("SELECT count(*) FROM bars").scalar()
    engine.dispose()
    assert errors == [] and count == 500


def test_dead_database_is_a_transient_load_error():
    from db.engine import make_engine

    engine = make_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none")
    with pytest.raises(LoadError) as info:
        make_loader(engine).load(bars(1))
    assert info.value.transient


def test_empty_batch_is_a_no_op(engine):
    assert make_loader(engine).load([]) == 0
    assert sa.inspect(engine).has_table("bars")


def test_load_many_counts_per_batch_and_isolates_a_bad_batch(engine):
    loader = make_loader(engine)
    loader.load(bars(10, symbol="OLD"))
    revised = bars(10, symbol="OLD")
    revised[3] = Bar("demo", "OLD", "5min", revised[3].ts, "10.0000", "11.0000", "9.5000", "10.1234", "7")
    poisoned = bars(4, symbol="BAD")
    poisoned[2] = Bar("demo", "BAD", "5min", poisoned[2].ts, "10", "11", "9", None, "1")
    results = loader.load_many(
        [bars(5, symbol="NEW"), revised + bars(2, symbol="OLD", start=T0 + timedelta(minutes=50)), poisoned, []]
    )
    assert results[0] == 5 and results[1] == 3 and results[3] == 0  # 1 revised + 2 appended
    assert isinstance(results[2], LoadError)
    counts = dict(Counter(r.symbol for r in rows(engine)))
    assert counts == {"NEW": 5, "OLD": 12}  # BAD landed nothing, the others everything


def test_load_many_in_one_group_is_idempotent(engine):
    loader = make_loader(engine)
    group = [bars(20, symbol=s) for s in ("A", "B", "C")]
    assert loader.load_many(group) == [20, 20, 20]
    assert loader.load_many(group) == [0, 0, 0]


def test_watermarks_per_series(engine):
    from db.queries import watermarks

    loader = make_loader(engine)
    loader.load(bars(10, symbol="IBM") + bars(3, symbol="MSFT") + bars(20, symbol="IBM", provider="alphavantage"))
    got = watermarks(engine, "demo", "5min", ["IBM", "MSFT", "NOBARS"])
    assert got == {"IBM": T0 + timedelta(minutes=45), "MSFT": T0 + timedelta(minutes=10)}
    assert watermarks(engine, "demo", "1min", ["IBM"]) == {} and watermarks(engine, "demo", "5min", []) == {}
