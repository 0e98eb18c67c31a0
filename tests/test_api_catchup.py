"""The API's catch-up from ``series_last_write`` and ``bars`` (SSE resume from before the replay buffer) over real
HTTP and PostgreSQL: indexed and bounded, the newest series kept, a gap never skipped silently, resume points validated."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

import api.sse
from api import ApiServer, PollingStatus
from api.events import EventFilter
from api.queries import bars_since, explain_bars_since
from clock import SystemClock
from errors import LoadError
from etl.load import PostgresBarLoader, make_loader
from models.bar import Bar
from support import SseClient, wait_for

T0 = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)


def series(symbol: str, n: int) -> list[Bar]:
    return [Bar("demo", symbol, "1min", T0 + timedelta(minutes=i), "10.0000", "11.2500", "9.7500", "10.50", "100")
            for i in range(n)]  # fmt: skip


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def us(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def http(port: int, target: str, headers: dict[str, bytes] | None = None) -> tuple[int, bytes]:
    """One request whose answer is not a stream: (status, body). Header values as raw bytes."""
    head = [f"GET {target} HTTP/1.0".encode(), b"Host: 127.0.0.1", *(k.encode() + b": " + v for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.fixture
def serve(pg_engine):
    """Start the API on ``pg_engine`` (no LISTEN: the tests publish or load before it starts)."""
    servers = []

    def start() -> ApiServer:
        status = PollingStatus(mode="--continuous-poll", job_name="live", provider="demo", symbols=("IBM",),
                               interval="1min", clock=SystemClock(), engine=pg_engine)  # fmt: skip
        servers.append(ApiServer(status, engine=pg_engine, clock=SystemClock(), listen=False))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_the_catch_up_reads_the_series_table_and_bars_only_through_the_primary_key(pg_engine):
    # 200,000 rows (2,000 series), one written every 12 s over the last 28 days: 600 series last written in the
    # last 2 hours; series_last_write filled from them as migration 0012 does (one row per series)
    with pg_engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO bars (provider, symbol, interval, ts, open, high, low, close, volume, ingested_at) "
            "SELECT 'demo', 'S' || (g %% 2000), '5min', timestamptz '2024-01-01' + (g / 2000) * interval '5 minutes', "
            "1, 1, 1, g, g, now() - (199999 - g) * interval '12 seconds' FROM generate_series(0, 199999) g"
        )
        c.exec_driver_sql(
            "INSERT INTO series_last_write (provider, symbol, interval, newest_ts, written_at, rows_written) "
            "SELECT provider, symbol, interval, max(ts), max(ingested_at), 1 FROM bars GROUP BY provider, symbol, interval"
        )
    recent = datetime.now(UTC) - timedelta(minutes=30)
    for analyzed in (False, True):  # never analyzed (autovacuum off, as here), then with statistics
        if analyzed:
            with pg_engine.begin() as c:
                c.exec_driver_sql("ANALYZE bars, series_last_write")
        for since in (recent, datetime.now(UTC) - timedelta(hours=2), datetime(1970, 1, 1, tzinfo=UTC)):
            plan = explain_bars_since(pg_engine, since)
            # bars: one backward primary-key probe per series, whatever its statistics and however far back
            assert "Seq Scan on bars" not in plan and "Hash Join" not in plan and "Merge Join" not in plan, plan
            assert "Index Scan Backward using bars_pkey on bars" in plan, plan
            assert "series_last_write" in plan, plan
            if analyzed and since == recent:  # 150 of 2,000 series: through the written_at index
                assert "series_last_write_written_at" in plan, plan
            # never analyzed, the planner may read the 2,000 rows of the series table whole (one per series:
            # small, and no bigger as bars grows); measured at 20,000 series: 1.4 ms against 0.3 ms by the index
    # unauthenticated "since 1970": clamped to the window, and it says so
    t0 = time.perf_counter()
    found = bars_since(pg_engine, datetime(1970, 1, 1, tzinfo=UTC))
    elapsed = time.perf_counter() - t0
    assert found.clamped and not found.truncated and elapsed < 1.0
    assert abs((found.since - (datetime.now(UTC) - timedelta(hours=2))).total_seconds()) < 60
    assert 590 <= len(found.payloads) <= 601  # the series last written within the 2 hours
    newest = found.payloads[-1]
    assert newest == {"provider": "demo", "symbol": "S1999", "interval": "5min", "ts": "2024-01-01T08:15:00Z", "open": "1",
                      "high": "1", "low": "1", "close": "199999", "volume": "199999", "rows": 1}  # fmt: skip
    assert not bars_since(pg_engine, recent).clamped


def test_a_catch_up_sends_each_series_newest_bar_and_the_rows_of_its_last_write(engine):
    began = datetime.now(UTC) - timedelta(seconds=5)
    loader = make_loader(engine)
    assert loader.load(series("IBM", 3)) == 3
    assert loader.load([*series("IBM", 3), series("IBM", 5)[4]]) == 1  # a later write of one bar, newer
    assert loader.load(series("MSFT", 2)) == 2
    found = bars_since(engine, began)
    assert not found.clamped and not found.truncated
    got = [(p["symbol"], p["ts"], p["close"], p["rows"]) for p in found.payloads]
    close = "10.50" if engine.dialect.name == "postgresql" else "10.5"  # SQLite keeps a number
    assert sorted(got) == [("IBM", "2024-03-11T14:04:00Z", close, 1), ("MSFT", "2024-03-11T14:01:00Z", close, 2)]
    assert bars_since(engine, datetime.now(UTC) + timedelta(minutes=1), window=None).payloads == []
    only = bars_since(engine, began, EventFilter(symbols=frozenset({"MSFT"}))).payloads
    assert [(p["symbol"], p["rows"]) for p in only] == [("MSFT", 2)]


def test_a_truncated_catch_up_keeps_the_newest_series_and_tells_the_client_to_reload(pg_engine, serve, monkeypatch):
    monkeypatch.setattr("api.queries.CATCHUP_SERIES_MAX", 3)
    began = datetime.now(UTC)
    loader = PostgresBarLoader(pg_engine)
    for symbol in ("AAA", "BBB", "CCC", "DDD", "EEE"):  # one transaction each: written in this order
        loader.load(series(symbol, 2))
    server = serve()  # started after: the hub's replay buffer does not cover the resume point
    cursor = server.hub.last_id
    stream = SseClient(server.port, f"/events?since={iso(began)}")
    try:
        assert stream.status == 200
        got = [stream.next() for _ in range(4)]
        assert [(e["event"], e["data"].get("symbol")) for e in got] == [
            ("bar", "CCC"), ("bar", "DDD"), ("bar", "EEE"), ("reload", None)]  # fmt: skip
        assert {int(e["id"]) for e in got[:3]} == {us(began)}  # the client is not moved past what it did not get
        assert int(got[3]["id"]) == cursor and got[3]["data"]["reason"] == "truncated" and got[3]["data"]["series"] == 3
        live = server.hub.publish({**got[2]["data"], "rows": 1})  # then it goes on live
        ev = stream.next()
        assert ev["event"] == "bar" and int(ev["id"]) == live.id > cursor
    finally:
        stream.close()


def test_a_resume_point_older_than_the_window_is_clamped_and_the_client_told(pg_engine, serve):
    loader = PostgresBarLoader(pg_engine)
    loader.load(series("IBM", 2))
    loader.load(series("MSFT", 2))
    with pg_engine.begin() as c:  # MSFT last written three hours ago: outside the window
        c.exec_driver_sql("UPDATE series_last_write SET written_at = now() - interval '3 hours' WHERE symbol = 'MSFT'")
    server = serve()
    stream = SseClient(server.port, "/events", headers={"Last-Event-ID": "1"})
    try:
        assert stream.status == 200
        first, second = stream.next(), stream.next()
        assert (first["event"], first["data"]["symbol"], first["data"]["rows"], first["id"]) == ("bar", "IBM", 2, "1")
        assert second["event"] == "reload" and second["data"]["reason"] == "window" and second["data"]["series"] == 1
        since = datetime.fromisoformat(second["data"]["since"].replace("Z", "+00:00"))
        assert abs((since - (datetime.now(UTC) - timedelta(hours=2))).total_seconds()) < 60
    finally:
        stream.close()


def test_a_failed_catch_up_ends_the_stream_before_sending_anything_and_the_retry_catches_up(pg_engine, serve, monkeypatch):
    real, calls = api.sse.bars_since, []

    def flaky(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            raise LoadError("could not connect to the database", transient=True)
        return real(*args, **kwargs)

    monkeypatch.setattr("api.sse.bars_since", flaky)
    began = datetime.now(UTC)
    PostgresBarLoader(pg_engine).load(series("IBM", 2))
    server = serve()
    resume = {"Last-Event-ID": str(us(began))}
    stream = SseClient(server.port, "/events", headers=resume)
    try:
        assert stream.status == 200
        server.hub.publish({"provider": "demo", "symbol": "MSFT", "interval": "1min", "ts": "2024-03-11T15:00:00Z", "rows": 1})
        assert stream.ended.wait(5), "the stream went on after a failed catch-up"
        assert stream.events.empty()  # nothing sent: the browser retries with the same Last-Event-ID
    finally:
        stream.close()
    retry = SseClient(server.port, "/events", headers=resume)
    try:
        got = retry.next()
        assert (got["event"], got["data"]["symbol"], got["data"]["rows"]) == ("bar", "IBM", 2)
        assert len(calls) == 2 and calls[0] == calls[1]
    finally:
        retry.close()


def test_table_catch_ups_run_at_most_catchups_max_at_once_the_others_wait(pg_engine, serve, monkeypatch):
    monkeypatch.setattr("api.sse.CATCHUPS_MAX", 2, raising=False)  # new with the fix
    release, lock, running, peak = threading.Event(), threading.Lock(), [0], [0]
    real = api.sse.bars_since

    def slow(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            release.wait(10)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr("api.sse.bars_since", slow)
    began = datetime.now(UTC)
    PostgresBarLoader(pg_engine).load(series("IBM", 2))
    server = serve()
    streams = [SseClient(server.port, "/events", headers={"Last-Event-ID": str(us(began))}) for _ in range(5)]
    try:
        gate = lambda: getattr(server.app.state, "catch_up_gate", None)  # noqa: E731
        wait_for(lambda: gate() is not None and gate().running == 2 and gate().waiting == 3, "not gated", 10, step=0.02)
        assert running[0] == 2
        base = server.hub.stats()["subscribers"] - 5  # the WebSocket rooms' feed
        release.set()
        for s in streams:
            assert s.next()["data"]["symbol"] == "IBM"
        assert peak[0] == 2
        # clients that leave while their read runs keep its slot until the read is done: no pile-up behind the limit
        release.clear()
        for s in streams:
            s.close()
        streams = [SseClient(server.port, "/events", headers={"Last-Event-ID": str(us(began))}) for _ in range(2)]
        wait_for(lambda: gate().running == 2 and running[0] == 2, "gate().running == 2 and running[0] == 2", 10, step=0.02)
        for s in streams:
            s.close()
        wait_for(lambda: server.hub.stats()["subscribers"] == base, "both streams ended, reads running", 10, step=0.02)
        assert gate().running == 2
        streams = [SseClient(server.port, "/events", headers={"Last-Event-ID": str(us(began))})]
        wait_for(lambda: gate().waiting == 1, "gate().waiting == 1", 10, step=0.02)
        release.set()
        assert streams[0].next()["data"]["symbol"] == "IBM" and peak[0] == 2
    finally:
        release.set()
        for s in streams:
            s.close()


def test_malformed_out_of_range_or_future_resume_points_are_a_one_line_400(pg_engine, serve, caplog):
    server = serve()
    future = datetime.now(UTC) + timedelta(hours=1)
    bad = [
        ({"Last-Event-ID": "\u00b2".encode("latin-1")}, ""),  # a digit to str.isdigit(), not to int()
        ({}, "since=%C2%B2"),
        ({}, "since=0001-01-01T00:00:00%2B14:00"),  # year 0 in UTC
        ({}, "since=1969-12-31T23:59:59Z"),
        ({}, "since=9999-12-31T23:59:59Z"),
        ({}, "since=" + "9" * 30),
        ({"Last-Event-ID": b"9" * 20}, ""),
        ({"Last-Event-ID": str(us(future)).encode()}, ""),  # an id this server never sent
        ({}, f"since={iso(future)}"),
        ({}, "since=" + "x" * 100),
        ({}, "since=2024-03-11T14:00:00"),  # no zone
    ]
    for headers, query in bad:
        status, body = http(server.port, f"/events?{query}", headers)
        assert status == 400, (headers, query, status, body)
        assert body.count(b"\n") == 0 and set(json.loads(body)) == {"error"}, body
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    ok = SseClient(server.port, f"/events?since={iso(datetime.now(UTC) - timedelta(seconds=5))}")
    try:
        assert ok.status == 200
    finally:
        ok.close()
