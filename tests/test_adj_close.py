"""An incoming NULL ``adj_close`` means "not sent": polling unadjusted after ``--adjusted`` keeps the adjusted close.

The rule, on every write path (PostgreSQL inline upsert, COPY + merge, the one-round-trip remembered path, the
fresh loader's compare with the stored bars, the memory's fingerprints; SQLite's ``ON CONFLICT``):

- OHLCV unchanged and ``adj_close`` None: nothing is written, nothing counted, ``ingested_at`` untouched;
- OHLCV changed and ``adj_close`` None: the new OHLCV is written and ``adj_close`` becomes NULL (the old
  adjusted value belonged to the old bar);
- a non-NULL ``adj_close`` is compared and written like any other value.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from etl.load import PostgresBarLoader, SeriesMemory, make_loader
from models.bar import Bar

T0 = datetime(2024, 1, 2, 5, tzinfo=UTC)


def days(n, *, adj="9.8000", close="10.5000", symbol="IBM", start=0):
    """``n`` daily bars; ``adj`` is their adjusted close (None: an unadjusted fetch)."""
    return [
        Bar("alphavantage", symbol, "1day", T0 + timedelta(days=i), "10.0000", "11.0000", "9.5000", close, str(1000 + i), adj)
        for i in range(start, start + n)
    ]


def revise(batch, i, **values):
    return [b._replace(**values) if k == i else b for k, b in enumerate(batch)]


def stored(engine, symbol="IBM"):
    """ts -> (close, adj_close, ingested_at), values as Decimal (None for NULL)."""
    with engine.connect() as c:
        got = c.exec_driver_sql(
            "SELECT ts, close, adj_close, ingested_at FROM bars WHERE symbol = ? ORDER BY ts"
            if engine.dialect.name == "sqlite"
            else "SELECT ts, close, adj_close, ingested_at FROM bars WHERE symbol = %s ORDER BY ts",
            (symbol,),
        ).all()
    out = {}
    for ts, close, adj, ingested in got:
        if isinstance(ts, str):
            ts = datetime.fromisoformat(ts)
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        out[ts] = (Decimal(str(close)), None if adj is None else Decimal(str(adj)), ingested)
    return out


def sent(loader, before):
    return {k: loader.stats[k] - before.get(k, 0) for k in ("remembered", "compared", "appended", "written")}


@pytest.mark.parametrize("same_loader", [False, True], ids=["fresh-loader", "same-loader"])
def test_polling_unadjusted_after_adjusted_keeps_adj_close(engine, same_loader):
    first = make_loader(engine)
    loader = (lambda: first) if same_loader else (lambda: make_loader(engine))
    adjusted = days(10)
    assert first.load(adjusted) == 10
    before = stored(engine)
    assert all(adj == Decimal("9.8") for _, adj, _ in before.values())

    assert loader().load(days(10, adj=None)) == 0  # identical OHLCV, no adjusted close sent: nothing changes
    assert stored(engine) == before  # adj_close kept, ingested_at untouched

    revised = revise(days(10, adj=None), 4, close="10.7500")
    assert loader().load(revised) == 1  # a revised bar: new OHLCV, and its old adjusted close is stale
    after = stored(engine)
    ts = revised[4].ts
    assert after[ts][:2] == (Decimal("10.75"), None)
    assert {t: v for t, v in after.items() if t != ts} == {t: v for t, v in before.items() if t != ts}

    assert loader().load(revised) == 0  # idempotent
    assert stored(engine) == after


@pytest.mark.parametrize("same_loader", [False, True], ids=["fresh-loader", "same-loader"])
def test_a_sent_adj_close_is_compared_and_written(engine, same_loader):
    first = make_loader(engine)
    loader = (lambda: first) if same_loader else (lambda: make_loader(engine))
    first.load(days(10))
    assert loader().load(days(10)) == 0
    assert loader().load(revise(days(10), 2, adj_close="9.9000")) == 1  # only the adjusted close revised
    assert stored(engine)[T0 + timedelta(days=2)][1] == Decimal("9.9")
    assert loader().load(days(10, adj="9.7000")) == 10  # a dividend re-adjusts the whole history
    assert {adj for _, adj, _ in stored(engine).values()} == {Decimal("9.7")}
    assert loader().load(days(10, adj="9.7")) == 0  # numerically equal text
    first.load(days(10, adj=None))  # unadjusted: kept
    assert loader().load(days(10, adj="9.7000")) == 0


def test_an_unadjusted_row_takes_an_adjusted_close_once_sent(engine):
    loader = make_loader(engine)
    loader.load(days(5, adj=None))
    assert loader.load(days(5)) == 5
    assert make_loader(engine).load(days(5, adj=None)) == 0
    assert {adj for _, adj, _ in stored(engine).values()} == {Decimal("9.8")}


def test_mixed_batch_with_new_bars_unchanged_and_revised(engine):
    loader = make_loader(engine)
    loader.load(days(10))
    poll = revise(days(10, adj=None, start=1), 8, close="10.9100")  # slides by one bar: 1 new, 1 revised
    assert loader.load(poll) == 2
    assert make_loader(engine).load(poll) == 0  # a fresh loader finds it all done
    after = stored(engine)
    assert len(after) == 11
    assert after[T0 + timedelta(days=9)][:2] == (Decimal("10.91"), None)  # revised
    assert after[T0 + timedelta(days=10)][:2] == (Decimal("10.5"), None)  # new, unadjusted
    assert {after[T0 + timedelta(days=i)][1] for i in range(9)} == {Decimal("9.8")}  # untouched


# -- PostgreSQL: each write path on its own -----------------------------------------------------------------------


def test_postgres_memory_answers_an_unadjusted_reload_without_sending_it(pg_engine):
    loader = PostgresBarLoader(pg_engine)
    loader.load(days(100))
    before = dict(loader.stats)
    assert loader.load(days(100, adj=None)) == 0
    assert sent(loader, before) == {"remembered": 100, "compared": 0, "appended": 0, "written": 0}
    before = dict(loader.stats)
    assert loader.load(revise(days(100, adj=None), 50, close="10.6000")) == 1  # the one-round-trip path
    assert sent(loader, before) == {"remembered": 99, "compared": 0, "appended": 0, "written": 1}
    assert stored(pg_engine)[T0 + timedelta(days=50)][:2] == (Decimal("10.6"), None)
    assert stored(pg_engine)[T0 + timedelta(days=49)][1] == Decimal("9.8")
    before = dict(loader.stats)
    assert loader.load(days(100)) == 1  # adjusted again: only the revised bar's adjusted close is new
    assert stored(pg_engine)[T0 + timedelta(days=50)][:2] == (Decimal("10.5"), Decimal("9.8"))


def test_postgres_fresh_loader_compares_an_unadjusted_reload_with_the_stored_bars(pg_engine):
    PostgresBarLoader(pg_engine).load(days(100))
    fresh = PostgresBarLoader(pg_engine)
    assert fresh.load(days(100, adj=None)) == 0
    assert sent(fresh, {}) == {"remembered": 0, "compared": 100, "appended": 0, "written": 0}
    fresh = PostgresBarLoader(pg_engine)
    assert fresh.load(days(100, adj="9.8100")) == 100  # a non-null adjusted close is compared
    assert sent(fresh, {})["written"] == 100


@pytest.mark.parametrize("n", [10, 600], ids=["inline-upsert", "copy-merge"])
def test_postgres_upsert_and_merge_keep_adj_close_for_equal_ohlcv(pg_engine, n):
    PostgresBarLoader(pg_engine).load(days(n))
    before = stored(pg_engine)
    fresh = PostgresBarLoader(pg_engine)
    # "10.50" differs from the stored "10.5000" as text: every bar is sent and found equal by the database
    poll = revise(days(n, adj=None, close="10.50"), 3, close="10.6000")
    assert fresh.load(poll) == 1
    assert sent(fresh, {})["written"] == n
    after = stored(pg_engine)
    assert after[T0 + timedelta(days=3)][:2] == (Decimal("10.6"), None)
    assert {t: v for t, v in after.items() if t != T0 + timedelta(days=3)} == {
        t: v for t, v in before.items() if t != T0 + timedelta(days=3)
    }


def test_remembered_fingerprints_stay_bounded():
    memory = SeriesMemory(bars_per_series=8)
    s = ("alphavantage", "IBM", "1day")
    batch = days(20)
    entry = memory.entry(s, batch, None, (batch[0].ts, batch[-1].ts), None, None)
    assert len(entry.fingerprints) == 8 and len(entry.unadjusted) == 8  # 16 bytes a bar at most
    plain = memory.entry(s, days(20, adj=None), None, (batch[0].ts, batch[-1].ts), None, None)
    assert len(plain.fingerprints) == 8 and not plain.unadjusted  # an unadjusted series costs what it did
