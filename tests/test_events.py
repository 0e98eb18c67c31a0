"""Bar events: NOTIFY from the loader's transactions, the hub's bounded fan-out, the LISTEN reconnect."""

from __future__ import annotations

import asyncio
import json
import select
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from api.events import EventFilter, EventHub
from api.listen import PgListener
from clock import ManualClock
from errors import ConfigError, LoadError
from etl.events import BARS_CHANNEL, bar_payload
from etl.load import PostgresBarLoader
from models.bar import Bar
from support import wait_for

T0 = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)


def bar(symbol: str, minute: int, close: str = "10.50", *, open_: str = "10.0000", volume: str | None = "100") -> Bar:
    return Bar("demo", symbol, "1min", T0 + timedelta(minutes=minute), open_, "11.2500", "9.7500", close, volume)


def series(symbol: str, n: int, start: int = 0) -> list[Bar]:
    return [bar(symbol, start + i) for i in range(n)]


class Notes:
    """A plain psycopg2 LISTEN connection: what any consumer sees (the README's Python example)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
        self.conn.autocommit = True
        self.conn.cursor().execute(f"LISTEN {BARS_CHANNEL}")

    def take(self, wait: float = 0.3) -> list[dict]:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            select.select([self.conn], [], [], max(0.0, deadline - time.monotonic()))
            self.conn.poll()
        out = [json.loads(n.payload) for n in self.conn.notifies]
        assert all(n.channel == BARS_CHANNEL for n in self.conn.notifies)
        self.conn.notifies.clear()
        return out

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def notes(pg_url):
    n = Notes(pg_url)
    yield n
    n.close()


def test_each_path_notifies_once_per_series_on_commit_only(pg_engine, notes):
    loader = PostgresBarLoader(pg_engine)
    # general path, first load: one NOTIFY per series, the newest bar's values as sent, rows written
    assert loader.load_many([series("IBM", 3), series("MSFT", 2)]) == [3, 2]
    got = {p["symbol"]: p for p in notes.take()}
    assert got == {
        "IBM": {"provider": "demo", "symbol": "IBM", "interval": "1min", "ts": "2024-03-11T14:02:00Z", "open": "10.0000",
                "high": "11.2500", "low": "9.7500", "close": "10.50", "volume": "100", "rows": 3},
        "MSFT": {**bar_payload(bar("MSFT", 1), 2)},
    }  # fmt: skip
    assert got["MSFT"]["ts"] == "2024-03-11T14:01:00Z"
    # the same bars again (the remembered path, nothing written): nothing to tell
    assert loader.load_many([series("IBM", 3), series("MSFT", 2)]) == [0, 0]
    assert notes.take() == []
    # one new bar and one revised (remembered path, one statement): both series notify, in that statement's transaction
    assert loader.load_many([[*series("IBM", 3), bar("IBM", 3)], [bar("MSFT", 0), bar("MSFT", 1, close="10.75")]]) == [1, 1]
    got = {p["symbol"]: (p["ts"], p["close"], p["rows"]) for p in notes.take()}
    assert got == {"IBM": ("2024-03-11T14:03:00Z", "10.50", 1), "MSFT": ("2024-03-11T14:01:00Z", "10.75", 1)}
    assert loader.stats["remembered"] > 0
    # the remembered statement rolled back (its memory is wrong: the newest bar was deleted): it told nobody;
    # the general path that loads instead tells once
    with pg_engine.begin() as c:
        c.exec_driver_sql("DELETE FROM bars WHERE symbol = 'IBM' AND ts = '2024-03-11T14:03:00Z'")
    assert loader.load_many([[*series("IBM", 4), bar("IBM", 4, volume=None)]]) == [2]
    assert [(p["symbol"], p["ts"], p["volume"], p["rows"]) for p in notes.take()] == [
        ("IBM", "2024-03-11T14:04:00Z", None, 2)]  # fmt: skip
    # a group that fails rolls back with its NOTIFY; each batch is then loaded alone: only the good one tells
    broken = [Bar("demo", "BAD", "1min", T0, "not-a-number", "1", "1", "1", "1")]
    results = loader.load_many([series("AAPL", 2), broken])
    assert results[0] == 2 and isinstance(results[1], Exception)
    assert [(p["symbol"], p["rows"]) for p in notes.take()] == [("AAPL", 2)]


def test_a_rolled_back_transaction_notifies_nobody(pg_engine, notes):
    # the loader's statement form, in a transaction that is rolled back: the NOTIFY dies with it
    with pg_engine.connect() as c:
        tx = c.begin()
        c.exec_driver_sql(f"SELECT pg_notify('{BARS_CHANNEL}', p) FROM unnest(ARRAY['x']) AS p")
        tx.rollback()
    assert notes.take() == []


def test_filters_are_parsed_and_matched():
    f = EventFilter.parse("ibm, msft", "demo", "1min")
    assert f.symbols == {"IBM", "MSFT"} and f.matches(bar_payload(bar("IBM", 0), 1))
    assert not f.matches(bar_payload(bar("TSLA", 0), 1))
    assert not f.matches({**bar_payload(bar("IBM", 0), 1), "provider": "polygon"})
    assert EventFilter.parse(None, None, None) == EventFilter()
    for bad in ({"symbols": "IBM,bad sym"}, {"interval": "2min"}, {"provider": ""}):
        with pytest.raises(ConfigError):
            EventFilter.parse(**bad)


def test_a_slow_subscriber_is_dropped_and_never_blocks_publishing_or_the_others():
    hub = EventHub(clock=ManualClock(T0), replay_max=50)
    slow = hub.subscribe(maxsize=10)  # never read
    ibm_only = hub.subscribe(EventFilter.parse("IBM"), maxsize=10_000)
    got: list = []

    async def consume() -> None:
        while (ev := await ibm_only.get()) is not None:
            got.append(ev)

    loop = asyncio.new_event_loop()
    consumer = threading.Thread(target=loop.run_until_complete, args=(consume(),))
    consumer.start()
    t0 = time.perf_counter()
    for i in range(200):  # from this thread, as the LISTEN thread does
        hub.publish_many([bar_payload(bar("IBM", i), 1), bar_payload(bar("MSFT", i), 1)])
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5  # never waited for anyone
    assert slow.reason == "slow" and len(slow) == 0 and hub.dropped == 1  # its queue freed
    assert hub.stats()["subscribers"] == 1 and hub.stats()["published"] == 400
    hub.close()
    consumer.join(timeout=5)
    loop.close()
    assert ibm_only.reason == "shutdown"
    assert [e.payload["ts"] for e in got] == [bar_payload(bar("IBM", i), 1)["ts"] for i in range(200)]
    ids = [e.id for e in got]
    assert ids == sorted(set(ids))  # strictly increasing, even on a clock that stands still
    # the replay buffer keeps the last 50; older ids are no longer covered
    assert not hub.covers(ids[0]) and hub.covers(hub.last_id - 10)
    assert [e.id for e in hub.replay(hub.last_id - 3)] == [hub.last_id - 2, hub.last_id - 1, hub.last_id]


def test_listen_reconnects_after_the_backend_is_killed_and_catches_up(pg_engine, monkeypatch):
    monkeypatch.setattr("api.listen.RECONNECT_INITIAL_SECONDS", 1.5)  # a window in which a load commits unheard
    hub = EventHub()
    sub = hub.subscribe(maxsize=1_000)
    listener = PgListener(pg_engine, hub)
    loader = PostgresBarLoader(pg_engine)
    try:
        assert listener.connected.wait(10)
        loader.load(series("IBM", 2))
        wait_for(lambda: len(sub) >= 1, "len(sub) >= 1", 10, step=0.02)
        assert [e.payload["rows"] for e in sub.drain()] == [2]
        with pg_engine.connect() as c:
            c.exec_driver_sql("SELECT pg_terminate_backend(%s)", (listener.state["backend_pid"],))
        wait_for(lambda: not listener.connected.is_set(), "not listener.connected.is_set()", 10, step=0.02)
        loader.load([*series("IBM", 2), bar("IBM", 2)])  # committed while nobody listens
        loader.load(series("MSFT", 3))
        wait_for(lambda: len(sub) >= 2, "len(sub) >= 2", 15, step=0.02)
        got = {e.payload["symbol"]: e.payload for e in sub.drain()}
        assert got["IBM"]["ts"] == "2024-03-11T14:02:00Z" and got["MSFT"]["ts"] == "2024-03-11T14:02:00Z"
        assert got["MSFT"]["rows"] == 3 and got["MSFT"]["close"] == "10.50"
        assert listener.state["reconnects"] == 1 and listener.state["caught_up"] >= 2 and listener.state["connected"]
        loader.load(series("AAPL", 1))  # and it listens again
        wait_for(lambda: len(sub) >= 1, "len(sub) >= 1", 10, step=0.02)
        assert [e.payload["symbol"] for e in sub.drain()] == ["AAPL"]
    finally:
        listener.close()
        hub.close()


def _kill(pg_engine, listener: PgListener) -> None:
    with pg_engine.connect() as c:
        c.exec_driver_sql("SELECT pg_terminate_backend(%s)", (listener.state["backend_pid"],))


def test_notifications_held_for_the_batch_when_the_connection_breaks_are_published_once(pg_engine, monkeypatch):
    monkeypatch.setattr("api.listen.BATCH_SECONDS", 60.0)  # a notification waits in the batch: the break falls inside it
    hub = EventHub()
    sub = hub.subscribe(maxsize=1_000)
    listener = PgListener(pg_engine, hub)
    loader = PostgresBarLoader(pg_engine)
    try:
        assert listener.connected.wait(10)
        loader.load(series("IBM", 2))
        wait_for(lambda: listener.state["notifications"] == 1, "heard, held until the batch is due", 10, step=0.02)
        assert len(sub) == 0
        _kill(pg_engine, listener)
        wait_for(lambda: len(sub) >= 1, "len(sub) >= 1", 10, step=0.02)  # handed over when the connection broke
        assert [(e.payload["symbol"], e.payload["ts"], e.payload["rows"]) for e in sub.drain()] == [
            ("IBM", "2024-03-11T14:01:00Z", 2)]  # fmt: skip
        # after the reconnect the catch-up reads IBM from the table and skips it: published once, not lost
        wait_for(
            lambda: listener.state["reconnects"] == 1 and listener.connected.is_set() and listener.state["connected"],
            "one reconnect, connected again", 10, step=0.02,
        )  # fmt: skip
        assert len(sub) == 0 and listener.state["caught_up"] == 0
    finally:
        listener.close()
        hub.close()


def test_a_failed_catch_up_keeps_the_start_of_the_gap_and_is_retried(pg_engine, monkeypatch):
    import api.listen

    monkeypatch.setattr("api.listen.RECONNECT_INITIAL_SECONDS", 1.0)  # a window in which a load commits unheard
    monkeypatch.setattr("api.listen.CATCHUP_RETRY_SECONDS", 0.1, raising=False)  # new with the fix
    real, calls = api.listen.bars_since, []

    def flaky(engine, since, *args, **kwargs):
        calls.append(since)
        if len(calls) == 1:
            raise LoadError("the database went away again", transient=True)
        return real(engine, since, *args, **kwargs)

    monkeypatch.setattr("api.listen.bars_since", flaky)
    hub = EventHub()
    sub = hub.subscribe(maxsize=1_000)
    listener = PgListener(pg_engine, hub)
    loader = PostgresBarLoader(pg_engine)
    try:
        assert listener.connected.wait(10)
        loader.load(series("IBM", 2))
        wait_for(lambda: len(sub) >= 1, "len(sub) >= 1", 10, step=0.02)
        sub.drain()
        _kill(pg_engine, listener)
        wait_for(lambda: not listener.connected.is_set(), "not listener.connected.is_set()", 10, step=0.02)
        loader.load(series("MSFT", 3))  # committed while nobody listens
        wait_for(lambda: len(sub) >= 1, "len(sub) >= 1", 10, step=0.02)  # the second catch-up, from the same start, finds it
        assert [(e.payload["symbol"], e.payload["rows"]) for e in sub.drain()] == [("MSFT", 3)]
        assert len(calls) == 2 and calls[1] == calls[0]
        assert listener.state["catch_up_failures"] == 1 and listener.state["catch_up_owed"] is False
    finally:
        listener.close()
        hub.close()
