"""``WS /ws`` over real loopback WebSockets against the running API server (SQLite, loads through the
in-process bus): bad input answered without dropping the connection, bounded state (clients, rooms),
``/status`` safe while rooms change, ``price_update`` naming its series, and the rooms' feed surviving
a full hub."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

import api.ws
from api import ApiServer, HubListener, PollingStatus
from api.events import EventHub
from api.queries import prices
from clock import ManualClock, SystemClock
from db import RunLedger
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.demo import DemoProvider
from etl.redact import Redactor

NOW = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)  # Monday 10:00 New York: the demo serves equities


def recv(ws, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def wait_until(condition, timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def pong(ws) -> None:
    """A round trip: every message sent before is handled once the pong arrives."""
    ws.send('{"type":"ping"}')
    assert recv(ws) == {"type": "pong"}


@pytest.fixture
def serve(sqlite_engine):
    servers = []

    def start(**kwargs) -> ApiServer:
        status = PollingStatus(mode="--continuous-poll", job_name="live", provider="demo", symbols=("IBM",),
                               interval="5min", clock=ManualClock(NOW), engine=sqlite_engine)  # fmt: skip
        server = ApiServer(status, engine=sqlite_engine, clock=SystemClock(), **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def url(server: ApiServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


def test_binary_frames_and_deeply_nested_json_are_answered_and_the_connection_stays(serve, caplog):
    caplog.set_level(logging.DEBUG)
    server = serve()
    with ws_connect(url(server)) as ws:
        ws.send(b"\x00\x01binary")
        error = recv(ws)
        assert error["type"] == "error" and "binary" in error["error"] and error["message"] == error["error"]
        ws.send("[" * 3_000)  # under the 4 KB limit, deeper than the JSON decoder recurses
        error = recv(ws)
        assert error["type"] == "error" and "nested" in error["error"]
        ws.send('{"type":"join_room","room":' + "[" * 1_500 + "]" * 1_500 + "}")  # well-formed, as deep
        assert recv(ws)["type"] == "error"
        ws.send('{"type":"join_room","room":"not a symbol"}')
        assert recv(ws)["type"] == "error"
        ws.send(json.dumps({"type": "join_room", "room": "IBM"}))
        assert recv(ws) == {"type": "joined", "room": "IBM", "symbols": 0}  # still open, still serving
        pong(ws)
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake logged a traceback"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(("api", "uvicorn"))]


def test_clients_over_the_cap_are_closed_with_1013_and_a_reason(serve, monkeypatch):
    monkeypatch.setattr(api.ws, "WS_CLIENTS_MAX", 2, raising=False)
    server = serve()
    first, second = ws_connect(url(server)), ws_connect(url(server))
    try:
        pong(first), pong(second)
        with ws_connect(url(server)) as third:
            with pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=5)
            assert closed.value.rcvd.code == 1013 and "too many WebSocket clients" in closed.value.rcvd.reason
        live = httpx.get(f"http://127.0.0.1:{server.port}/status").json()["live"]
        assert live["ws_clients"] == 2 and live["ws_clients_max"] == 2 and live["ws_refused_clients"] == 1
        first.close()
        wait_until(lambda: server.app.state.rooms.clients == 1, what="the closed client to leave")
        with ws_connect(url(server)) as fourth:  # a place is free again
            pong(fourth)
    finally:
        first.close()
        second.close()


def test_rooms_per_client_are_capped_and_empty_rooms_are_forgotten(serve):
    server = serve()
    rooms = server.app.state.rooms
    names = [f"R{i}" for i in range(api.ws.ROOMS_PER_CLIENT_MAX + 1)]
    with ws_connect(url(server)) as ws:
        for name in names:
            ws.send(json.dumps({"type": "join_room", "room": name}))
        got = [recv(ws) for _ in names]
        assert [m["type"] for m in got] == ["joined"] * api.ws.ROOMS_PER_CLIENT_MAX + ["error"]
        assert len(rooms.members) == api.ws.ROOMS_PER_CLIENT_MAX
        for name in names[:50]:
            ws.send(json.dumps({"type": "leave_room", "room": name}))
        assert [recv(ws)["type"] for _ in range(50)] == ["left"] * 50
        assert len(rooms.members) == api.ws.ROOMS_PER_CLIENT_MAX - 50  # left: forgotten
    # the other 50 go with the connection
    wait_until(lambda: rooms.clients == 0 and not rooms.members, what="the rooms of the closed client to go")
    assert httpx.get(f"http://127.0.0.1:{server.port}/status").json()["live"]["ws_rooms"] == 0


def test_status_counts_are_safe_while_clients_join_and_leave_rooms(serve):
    """``/status`` reads the rooms' counts on a threadpool thread while the event loop changes them."""
    server = serve()
    base = f"http://127.0.0.1:{server.port}"
    stop, errors = threading.Event(), []

    def churn() -> None:
        with ws_connect(url(server)) as ws:
            n = 0
            while not stop.is_set():
                batch = [f"C{n + i}" for i in range(100)]  # new room names each time
                n += 100
                for name in batch:
                    ws.send(json.dumps({"type": "join_room", "room": name}))
                for name in batch:
                    ws.send(json.dumps({"type": "leave_room", "room": name}))
                for _ in range(200):
                    ws.recv(timeout=5)

    churner = threading.Thread(target=churn, daemon=True)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: a reader iterating a dict the loop changes would see it
    try:
        churner.start()
        deadline = time.monotonic() + 1.0
        with httpx.Client() as http:
            while time.monotonic() < deadline and not errors:
                try:
                    server.ctx.live_stats()  # what /status calls on its threadpool thread
                except RuntimeError as exc:
                    errors.append(exc)
                if http.get(f"{base}/status").status_code != 200:
                    errors.append("GET /status failed")
    finally:
        sys.setswitchinterval(old)
        stop.set()
        churner.join(timeout=10)
    assert not errors


def test_price_updates_name_their_series_and_the_snapshot_matches_the_live_updates(serve, sqlite_engine):
    clock = ManualClock(NOW)
    redactor = Redactor([])
    server = serve()
    with DemoProvider(clock=clock) as provider:
        pipe = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine, redactor), clock=clock,
                           redact=redactor, listeners=[HubListener(server.hub)])  # fmt: skip
        pipe.run_cycle(["IBM"], "5min", job_name="intraday")
        pipe.run_cycle(["IBM"], "1day", job_name="daily")  # a second series of the same symbol
        stored = prices(sqlite_engine, [("demo", "IBM", "5min"), ("demo", "IBM", "1day")])
        assert len(stored) == 2
        with ws_connect(url(server)) as ws:
            ws.send(json.dumps({"type": "join_room", "room": "IBM"}))
            snapshot = [recv(ws), recv(ws)]
            assert recv(ws) == {"type": "joined", "room": "IBM", "symbols": 1}
            assert [m["type"] for m in snapshot] == ["price_update", "price_update"]
            by_series = {(m["data"]["provider"], m["data"]["symbol"], m["data"]["interval"]): m["data"] for m in snapshot}
            for series, (_, data) in stored.items():
                assert by_series[series] == {**data, "provider": "demo", "interval": series[2]}  # every old field kept
            assert snapshot[-1]["data"]["interval"] == "5min"  # the newest bar last: a client keyed by symbol ends on it

            clock.advance(600)
            pipe.run_cycle(["IBM"], "5min", job_name="intraday")
            assert recv(ws)["type"] == "bar"
            update = recv(ws)
            assert update["type"] == "price_update"
            (_, now), = prices(sqlite_engine, [("demo", "IBM", "5min")]).values()  # fmt: skip
            assert update["data"] == {**now, "provider": "demo", "interval": "5min"}
            assert set(update["data"]) == set(snapshot[0]["data"])


def test_the_rooms_feed_subscribes_again_when_the_hub_was_full(serve, sqlite_engine, monkeypatch):
    monkeypatch.setattr(api.ws, "_FEED_QUEUE_MAX", 2)  # the rooms' feed is dropped 3 events behind
    hub = EventHub(clock=SystemClock())
    attempts = []
    subscribe = hub.subscribe

    def counted(*args, **kwargs):
        attempts.append(hub.subscribers_max)
        return subscribe(*args, **kwargs)

    monkeypatch.setattr(hub, "subscribe", counted)
    server = serve(hub=hub)
    wait_until(lambda: len(attempts) == 1 and hub.stats()["subscribers"] == 1, what="the rooms' feed")
    with ws_connect(url(server)) as ws:
        ws.send(json.dumps({"type": "join_room", "room": "IBM"}))
        assert recv(ws)["type"] == "joined"
        other = subscribe(maxsize=100)
        hub.subscribers_max = 1  # full: the other subscriber holds the one place
        payload = {"provider": "demo", "symbol": "IBM", "interval": "5min", "ts": "2024-03-11T13:55:00Z", "open": "1",
                   "high": "1", "low": "1", "close": "1", "volume": "1", "rows": 1}  # fmt: skip
        hub.publish_many([payload] * 3)  # the feed is dropped, and cannot subscribe again
        wait_until(lambda: len(attempts) >= 2, what="the feed to try to subscribe again")
        assert hub.stats()["subscribers"] == 1 and hub.dropped == 1
        hub.subscribers_max = 10  # a place again
        wait_until(lambda: hub.stats()["subscribers"] == 2, what="the feed to subscribe again")
        hub.publish(payload)
        assert recv(ws) == {"type": "bar", "data": payload}  # the room is live again
        other.close()
