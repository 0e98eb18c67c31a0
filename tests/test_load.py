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


# -- the steady state: a poll re-sends what is stored, one or two bars new or revised -----------------------------


def revise(batch, i, close):
    """``batch`` with bar ``i`` given another close (a revision of the same key)."""
    return [b._replace(close=close) if k == i else b for k, b in enumerate(batch)]


def slide(batch):
    """The next compact reply: the window moves by one bar, and the bar that was newest gets its final close."""
    nxt = bars(1, start=batch[-1].ts + timedelta(minutes=5))
    return revise(batch[1:], len(batch) - 2, "10.9100") + nxt


def sent(loader, before):
    return {k: loader.stats[k] - before.get(k, 0) for k in ("remembered", "compared", "appended", "written")}


def closes(engine, symbol="IBM"):
    with engine.connect() as c:
        return {
            ts: str(v)
            for ts, v in c.exec_driver_sql(f"SELECT ts, close::text FROM bars WHERE symbol = '{symbol}' ORDER BY ts").all()
        }


def test_steady_reload_sends_only_new_and_revised_bars(pg_engine):
    loader = PostgresBarLoader(pg_engine)
    first = bars(100)
    assert loader.load(first) == 100
    before = dict(loader.stats)
    assert loader.load(first) == 0
    assert sent(loader, before) == {"remembered": 100, "compared": 0, "appended": 0, "written": 0}
    before = dict(loader.stats)
    assert loader.load(slide(first)) == 2  # 1 new + 1 revised
    assert sent(loader, before) == {"remembered": 98, "compared": 0, "appended": 0, "written": 2}
    assert len(rows(pg_engine)) == 101 and closes(pg_engine)[first[-1].ts] == "10.9100"


def test_identical_reload_from_memory_rewrites_nothing(pg_engine):
    loader = PostgresBarLoader(pg_engine)
    loader.load(bars(100))
    before = rows(pg_engine)
    for _ in range(3):
        assert loader.load(bars(100)) == 0
    assert rows(pg_engine) == before  # same ingested_at: nothing rewritten


def test_a_revised_bar_overwrites_after_being_remembered_and_back_again(pg_engine):
    loader = PostgresBarLoader(pg_engine)
    v1 = bars(20)
    v2 = revise(v1, 5, "10.7500")
    loader.load(v1)
    loader.load(v1)  # remembered
    assert loader.load(v2) == 1
    assert closes(pg_engine)[v1[5].ts] == "10.7500"
    assert loader.load(v1) == 1  # the memory follows what was committed: going back is a change too
    assert closes(pg_engine)[v1[5].ts] == "10.5000"


def test_a_fresh_loader_compares_with_the_database_and_sends_only_changes(pg_engine):
    PostgresBarLoader(pg_engine).load(bars(100))
    fresh = PostgresBarLoader(pg_engine)  # a restarted process: nothing remembered
    assert fresh.load(bars(100)) == 0
    assert sent(fresh, {}) == {"remembered": 0, "compared": 100, "appended": 0, "written": 0}
    before = dict(fresh.stats)
    assert fresh.load(slide(bars(100))) == 2
    assert sent(fresh, before) == {"remembered": 98, "compared": 0, "appended": 0, "written": 2}


def test_numerically_equal_text_is_not_a_change(engine):
    loader = make_loader(engine)
    loader.load(bars(10))
    assert loader.load(bars(10, close="10.50")) == 0  # sent (the text differs), found equal by the database
    assert make_loader(engine).load(bars(10, close="10.5")) == 0


def test_many_bars_to_compare_in_the_database_take_the_staging_path(pg_engine):
    PostgresBarLoader(pg_engine).load(bars(600))
    loader = PostgresBarLoader(pg_engine)
    assert loader.load(revise(bars(600, close="10.50"), 7, "10.6000")) == 1  # 600 differ as text, 1 in value
    assert sent(loader, {})["written"] == 600
    assert closes(pg_engine)[T0 + timedelta(minutes=35)] == "10.6000" and len(rows(pg_engine)) == 600


def test_bars_deleted_behind_our_back_are_restored(pg_engine):
    loader = PostgresBarLoader(pg_engine)
    loader.load(bars(10))
    with pg_engine.begin() as c:  # the newest bars: the series' watermark moves, the memory is not trusted
        c.exec_driver_sql("DELETE FROM bars WHERE ts > %s", (T0 + timedelta(minutes=30),))
    assert loader.load(bars(10)) == 3
    assert len(rows(pg_engine)) == 10


def test_a_row_changed_behind_our_back_is_repaired_within_verify_every_loads(pg_engine):
    from etl.load import SeriesMemory

    loader = PostgresBarLoader(pg_engine, memory=SeriesMemory(verify_every=4))
    loader.load(bars(10))
    with pg_engine.begin() as c:  # an older bar, by hand: the watermark does not move
        c.exec_driver_sql("UPDATE bars SET close = 1 WHERE ts = %s", (T0 + timedelta(minutes=10),))
    repaired = [loader.load(bars(10)) for _ in range(4)]
    assert sum(repaired) == 1 and closes(pg_engine)[T0 + timedelta(minutes=10)] == "10.5000"


def test_memory_is_filled_only_after_commit(pg_engine):
    """A revision whose transaction rolled back (here: its ledger credit fails) must be sent again."""
    from etl.load import Credit

    with pg_engine.begin() as c:
        run_id = c.exec_driver_sql(
            "INSERT INTO etl_runs (job_name, provider, started_at, status) VALUES ('j', 'demo', now(), 'running') RETURNING id"
        ).scalar()
    loader = PostgresBarLoader(pg_engine)
    v1 = bars(20)
    v2 = revise(v1, 3, "10.7500") + bars(1, start=T0 + timedelta(minutes=100))
    loader.load(v1)
    (failed,) = loader.load_many([v2], credits=[Credit(run_id, 2**31, 0)])  # integer out of range, after the bars
    assert isinstance(failed, LoadError)
    assert closes(pg_engine)[v1[3].ts] == "10.5000" and len(rows(pg_engine)) == 20
    assert loader.load_many([v2], credits=[Credit(run_id, 21, 0)]) == [2]
    assert closes(pg_engine)[v1[3].ts] == "10.7500"
    with pg_engine.connect() as c:
        assert c.exec_driver_sql(f"SELECT rows_loaded, rows_fetched FROM etl_runs WHERE id = {run_id}").one() == (2, 21)


def test_a_failed_batch_is_forgotten_and_compared_again(pg_engine):
    loader = PostgresBarLoader(pg_engine)
    loader.load(bars(10, symbol="A") + bars(10, symbol="B"))
    poisoned = bars(10, symbol="B") + [Bar("demo", "B", "5min", T0 + timedelta(minutes=50), "10", "11", "9", None, "1")]
    before = dict(loader.stats)
    results = loader.load_many([bars(10, symbol="A"), poisoned])  # the group fails, then each batch alone
    assert results[0] == 0 and isinstance(results[1], LoadError)
    # the group's rollback forgot both series; A alone then committed (compared with the database)
    assert sent(loader, before) == {"remembered": 0, "compared": 10, "appended": 0, "written": 0}
    before = dict(loader.stats)
    assert loader.load(bars(10, symbol="B")) == 0  # B's failed load left it forgotten
    assert loader.load(bars(10, symbol="A")) == 0  # A's commit refilled it
    assert sent(loader, before) == {"remembered": 10, "compared": 10, "appended": 0, "written": 0}


def test_a_failed_load_leaves_its_connection_fit_for_the_next(pg_url):
    """Autocommit is restored, and the staging table (created outside the failed transaction) is still there."""
    from db.engine import make_engine

    engine = make_engine(pg_url, pool_size=1)
    try:
        with engine.begin() as c:
            c.exec_driver_sql("TRUNCATE bars")
        PostgresBarLoader(engine).load(bars(300))
        poisoned = revise(bars(300, close="10.50"), 9, "abc")  # 300 to write: the staging path, refused mid-way
        with pytest.raises(LoadError):
            PostgresBarLoader(engine).load(poisoned)
        conn = engine.raw_connection()
        assert conn.driver_connection.autocommit is False
        conn.close()
        assert PostgresBarLoader(engine).load(revise(bars(300, close="10.50"), 9, "10.6000")) == 1
    finally:
        engine.dispose()


def test_memory_is_bounded(pg_engine):
    from etl.load import SeriesMemory

    memory = SeriesMemory(max_series=3, bars_per_series=10)
    loader = PostgresBarLoader(pg_engine, memory=memory)
    for s in "ABCDE":
        loader.load(bars(50, symbol=s))
    assert len(memory) == 3
    before = dict(loader.stats)
    assert loader.load(bars(50, symbol="E")) == 0
    assert sent(loader, before) == {"remembered": 10, "compared": 40, "appended": 0, "written": 0}  # the newest 10
    before = dict(loader.stats)
    assert loader.load(bars(50, symbol="A")) == 0  # forgotten (least recently loaded)
    assert sent(loader, before)["compared"] == 50


def test_memory_settings_are_validated():
    from errors import ConfigError
    from etl.load import SeriesMemory

    for bad in ({"max_series": -1}, {"bars_per_series": 0}, {"verify_every": 0}, {"verify_every": 2.5}):
        with pytest.raises(ConfigError):
            SeriesMemory(**bad)


def test_ledger_credits_count_rows_inserted_or_changed_in_the_steady_state(pg_engine):
    from etl.load import Credit

    with pg_engine.begin() as c:
        run_id = c.exec_driver_sql(
            "INSERT INTO etl_runs (job_name, provider, started_at, status) VALUES ('j', 'demo', now(), 'running') RETURNING id"
        ).scalar()
    loader = PostgresBarLoader(pg_engine)
    a, b = bars(100, symbol="A"), bars(100, symbol="B")
    assert loader.load_many([a, b], credits=[Credit(run_id, 100, 0)] * 2) == [100, 100]
    assert loader.load_many([slide(a), b], credits=[Credit(run_id, 100, 0)] * 2) == [2, 0]
    assert loader.load_many([slide(a), b], credits=[Credit(run_id, 100, 1)] * 2) == [0, 0]
    with pg_engine.connect() as c:
        got = c.exec_driver_sql(f"SELECT symbols_succeeded, rows_fetched, rows_loaded, rows_rejected FROM etl_runs "
                                f"WHERE id = {run_id}").one()  # fmt: skip
    assert tuple(got) == (6, 600, 202, 2)


def test_postgres_concurrent_loaders_sharing_one_memory(pg_engine, pg_url):
    # One loader (one memory) used by several threads at once, as two jobs of one process would:
    # overlapping loads of a series make it forgotten, never trusted wrongly.
    from db.engine import make_engine

    engine = make_engine(pg_url, pool_size=8)
    loader = PostgresBarLoader(engine)
    versions = [bars(100, close=f"10.{i:04d}") for i in range(6)]
    errors = []
    barrier = threading.Barrier(6)

    def work(i):
        barrier.wait()
        try:
            for _ in range(5):
                loader.load(versions[i])
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for version in (versions[0], versions[3]):  # whatever the race left, the next load makes the table exactly this
        loader.load(version)
        assert set(closes(engine).values()) == {version[0].close}
    assert len(rows(engine)) == 100
    engine.dispose()


@pytest.mark.parametrize("n", [100, 500])  # the inline upsert and the COPY append
def test_postgres_concurrent_fresh_loaders_of_the_same_new_bars_count_each_row_once(pg_url, n):
    from db.engine import make_engine

    engine = make_engine(pg_url, pool_size=8)
    with engine.begin() as c:
        c.exec_driver_sql("TRUNCATE bars")
    counts, errors = [], []
    barrier = threading.Barrier(6)

    def work():
        loader = PostgresBarLoader(engine)
        barrier.wait()
        try:
            counts.append(loader.load(bars(n)))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    assert errors == [] and sum(counts) == n  # each bar counted by the one writer that inserted it
    assert len(rows(make_engine(pg_url))) == n


def test_postgres_reads_bars_only_through_the_primary_key_without_statistics(pg_engine):
    """The loader's statements never scan ``bars`` whole, on a table never analyzed (autovacuum off)."""
    from db.queries import SERIES_STATE_SQL
    from etl.load import _CREATE_STAGE, _MERGE, _STAGE, _UPSERT

    with pg_engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO bars (provider, symbol, interval, ts, open, high, low, close, volume) "
            "SELECT 'demo', 'S' || (g / 100), '5min', timestamptz '2024-01-01' + (g %% 100) * interval '5 minutes', "
            "1, 1, 1, 1, g FROM generate_series(0, 19999) g"
        )
    PostgresBarLoader(pg_engine).load(bars(300))
    conn = pg_engine.raw_connection()
    try:
        cur = conn.cursor()
        cur.execute(_CREATE_STAGE)
        cur.execute(f"INSERT INTO {_STAGE} SELECT provider, symbol, interval, ts, open, high, low, close, volume FROM bars "
                    "WHERE symbol IN ('S1', 'S2', 'IBM')")  # fmt: skip
        plans = []
        n, day = 3, timedelta(days=1)
        for sql, params in (
            (SERIES_STATE_SQL, (["demo"] * n, ["S1", "S2", "IBM"], ["5min"] * n, [T0] * n, [T0 + day] * n, [216] * n)),
            (_MERGE, None),
            (_UPSERT, [[v] for v in bars(1)[0]]),
        ):
            cur.execute("EXPLAIN " + sql, params)
            plans.append("\n".join(r[0] for r in cur.fetchall()))
    finally:
        conn.rollback()
        conn.close()
    for plan in plans:
        assert "Seq Scan on bars" not in plan and "bars_pkey" in plan, plan


def test_a_bad_value_in_a_stored_series_is_refused_whole(engine):
    loader = make_loader(engine)
    loader.load(bars(10))
    poisoned = revise(bars(10), 4, None)  # an older bar, compared with what is stored before it is written
    with pytest.raises(LoadError):
        make_loader(engine).load(poisoned + bars(2, start=T0 + timedelta(minutes=50)))
    with pytest.raises(LoadError):
        loader.load(poisoned)
    assert len(rows(engine)) == 10 and Decimal(str(rows(engine)[4].close)) == Decimal("10.5")


def test_a_kept_connection_that_died_is_replaced_without_failing_the_load(pg_engine, caplog):
    loader = PostgresBarLoader(pg_engine)
    loader.load(bars(10))  # its connection is kept for the next load
    with pg_engine.connect() as c:  # a server restart, as far as that connection can tell
        c.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
    with caplog.at_level("INFO", logger="etl.load"):
        assert loader.load(bars(12)) == 2
    assert "loading again on a new one" in caplog.text
    assert len(rows(pg_engine)) == 12


def test_a_loader_keeps_at_most_one_connection_and_returns_it(pg_url, monkeypatch):
    import gc

    import etl.load
    from db.engine import make_engine

    engine = make_engine(pg_url, pool_size=2)
    try:
        loader = PostgresBarLoader(engine)
        for i in range(3):
            loader.load(bars(5, symbol=f"K{i}"))
        assert engine.pool.checkedout() == 1
        monkeypatch.setattr(etl.load, "KEEP_CONNECTION_SECONDS", 0.0)  # too old: back to the pool, a pinged one used
        loader.load(bars(5, symbol="K9"))
        assert engine.pool.checkedout() == 1
        del loader
        gc.collect()
        assert engine.pool.checkedout() == 0
    finally:
        engine.dispose()


def test_a_revision_another_writer_made_first_is_not_counted(pg_engine):
    """The one-round-trip path predicts what it will change; the database refuses the prediction when wrong."""
    from etl.load import Credit

    with pg_engine.begin() as c:
        run_id = c.exec_driver_sql(
            "INSERT INTO etl_runs (job_name, provider, started_at, status) VALUES ('j', 'demo', now(), 'running') RETURNING id"
        ).scalar()
    loader = PostgresBarLoader(pg_engine)
    v1 = bars(20)
    loader.load(v1)
    with pg_engine.begin() as c:  # someone else wrote the same revision first
        c.exec_driver_sql("UPDATE bars SET close = 10.7500 WHERE ts = %s", (v1[3].ts,))
    assert loader.load_many([revise(v1, 3, "10.7500")], credits=[Credit(run_id, 20, 0)]) == [0]
    with pg_engine.begin() as c:  # and appended the next bar
        c.exec_driver_sql("INSERT INTO bars (provider, symbol, interval, ts, open, high, low, close, volume) "
                          "VALUES ('demo', 'IBM', '5min', %s, 1, 1, 1, 1, 1)", (T0 + timedelta(minutes=100),))  # fmt: skip
    nxt = revise(v1, 3, "10.7500") + bars(2, start=T0 + timedelta(minutes=100))
    assert loader.load_many([nxt], credits=[Credit(run_id, 22, 0)]) == [2]  # the one it appended is revised, one new
    with pg_engine.connect() as c:
        assert c.exec_driver_sql(f"SELECT rows_loaded, rows_fetched FROM etl_runs WHERE id = {run_id}").one() == (2, 42)
    assert len(rows(pg_engine)) == 22 and set(closes(pg_engine).values()) == {"10.5000", "10.7500"}


def test_a_fresh_loader_finds_bars_without_volume_unchanged(pg_engine):
    index = [b._replace(symbol="I:NDX", volume=None) for b in bars(10)]
    PostgresBarLoader(pg_engine).load(index)
    fresh = PostgresBarLoader(pg_engine)
    assert fresh.load(index) == 0
    assert sent(fresh, {}) == {"remembered": 0, "compared": 10, "appended": 0, "written": 0}
    assert fresh.load(revise(index, 2, "10.6000")[:5]) == 1
