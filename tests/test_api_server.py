"""The API server over real loopback HTTP: cycles' bars pushed live by SSE and WebSocket; --api-port in every mode."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

import cli
from api import ApiServer, HubListener, PollingStatus
from clock import ManualClock, SystemClock
from db import RunLedger
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.demo import DemoProvider
from etl.redact import Redactor
from support import ROOT, SseClient

NOW = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)  # Monday 10:00 New York: the demo serves equities
MAIN = [sys.executable, str(ROOT / "main.py")]


def sse_at(url: str, headers: dict | None = None) -> SseClient:
    """:class:`support.SseClient` on ``url`` (``http://127.0.0.1:PORT/events?...``)."""
    u = httpx.URL(url)
    return SseClient(u.port, u.raw_path.decode(), headers)


def recv(ws, timeout: float = 10.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def newest(engine, symbol: str) -> dict:
    with engine.connect() as c:
        row = c.exec_driver_sql("SELECT ts, open::text, high::text, low::text, close::text, volume::text FROM bars "
                                f"WHERE symbol = '{symbol}' ORDER BY ts DESC LIMIT 1").one()  # fmt: skip
    return {"ts": row[0].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "open": row[1], "high": row[2], "low": row[3],
            "close": row[4], "volume": row[5]}  # fmt: skip


def test_bars_of_a_cycle_reach_sse_and_websocket_clients_live_and_on_resume(pg_engine):
    clock = ManualClock(NOW)
    redactor = Redactor([])
    with DemoProvider(clock=clock) as provider:
        pipe = EtlPipeline(provider, make_loader(pg_engine), RunLedger(pg_engine, redactor), clock=clock, redact=redactor)
        pipe.run_cycle(["IBM", "MSFT"], "5min", job_name="live")  # the history before anyone listens
        status = PollingStatus(mode="--continuous-poll", job_name="live", provider="demo", symbols=("IBM", "MSFT"),
                               interval="5min", clock=clock, engine=pg_engine)  # fmt: skip
        status.started()
        api = ApiServer(status, engine=pg_engine, clock=SystemClock())  # LISTENs: the database is PostgreSQL
        base = f"http://127.0.0.1:{api.port}"
        sse = ws = None
        try:
            sse = sse_at(f"{base}/events?symbols=IBM&interval=5min")
            assert sse.status == 200
            ws = ws_connect(f"ws://127.0.0.1:{api.port}/ws")
            ws.send(json.dumps({"type": "join_room", "room": "IBM"}))
            snapshot = recv(ws)  # first the room's current price, from the stored bars
            before = newest(pg_engine, "IBM")
            assert snapshot["type"] == "price_update" and snapshot["data"]["symbol"] == "IBM"
            assert snapshot["data"]["price"] == float(before["close"]) and snapshot["data"]["timestamp"] == before["ts"]
            assert snapshot["timestamp"].endswith("Z")
            assert recv(ws) == {"type": "joined", "room": "IBM", "symbols": 1}
            ws.send('{"type": "nonsense"}')
            assert recv(ws)["type"] == "error"  # and the connection stays open

            clock.advance(600)  # two new 5-minute bars per symbol
            cycle = pipe.run_cycle(["IBM", "MSFT"], "5min", job_name="live")
            loaded = {o.symbol: o.rows_loaded for o in cycle.outcomes}
            assert loaded["IBM"] >= 1 and loaded["MSFT"] >= 1
            after = newest(pg_engine, "IBM")
            want = {"provider": "demo", "symbol": "IBM", "interval": "5min", **after, "rows": loaded["IBM"]}
            event = sse.next()
            assert event["event"] == "bar" and event["data"] == want and int(event["id"]) > 0
            bar = recv(ws)
            assert bar == {"type": "bar", "data": want}
            update = recv(ws)
            assert update["type"] == "price_update" and update["data"]["symbol"] == "IBM"
            assert update["data"]["price"] == float(after["close"]) and update["data"]["timestamp"] == after["ts"]
            with pg_engine.connect() as c:  # the last close at least 24 h older, and the volume over those 24 h
                ref, vol = c.exec_driver_sql(
                    "SELECT (SELECT close FROM bars WHERE symbol = 'IBM' AND ts <= %(t)s - interval '24 hours' ORDER BY ts DESC "
                    "LIMIT 1), (SELECT sum(volume) FROM bars WHERE symbol = 'IBM' AND ts > %(t)s - interval '24 hours')",
                    {"t": datetime.fromisoformat(after["ts"].replace("Z", "+00:00"))}).one()  # fmt: skip
            change = float(after["close"]) - float(ref)
            assert update["data"]["change_24h"] == pytest.approx(change)
            assert update["data"]["change_percent_24h"] == pytest.approx(change / float(ref) * 100, abs=1e-4)
            assert update["data"]["volume_24h"] == float(vol)
            with pytest.raises(queue.Empty):
                sse.next(timeout=0.5)  # MSFT's event was filtered out

            code, body = httpx.get(f"{base}/status").status_code, httpx.get(f"{base}/status").json()
            assert code == 200 and body["polling"]["job"] == "live" and body["polling"]["polling_running"] is True
            assert body["live"]["listen"]["connected"] is True and body["live"]["ws_clients"] == 1
            assert body["live"]["subscribers"] == 2  # the stream and the WebSocket rooms' one feed
            assert httpx.get(f"{base}/health").status_code == 200

            # a client that drops out resumes with Last-Event-ID: what it missed comes from the replay buffer
            sse.close()
            clock.advance(300)
            pipe.run_cycle(["IBM", "MSFT"], "5min", job_name="live")
            assert recv(ws)["type"] == "bar"
            sse = sse_at(f"{base}/events?symbols=IBM", headers={"Last-Event-ID": event["id"]})
            missed = sse.next()
            assert missed["data"]["ts"] == newest(pg_engine, "IBM")["ts"] and int(missed["id"]) > int(event["id"])
        finally:
            if ws is not None:
                ws.close()
            if sse is not None:
                sse.close()
            api.close()


def test_sqlite_loads_go_through_the_in_process_bus_and_since_catches_up_from_the_table(sqlite_engine):
    clock = ManualClock(NOW)
    redactor = Redactor([])
    status = PollingStatus(mode="--continuous-poll", job_name="live", provider="demo", symbols=("IBM",), interval="5min",
                           clock=clock, engine=sqlite_engine)  # fmt: skip
    api = ApiServer(status, engine=sqlite_engine, clock=SystemClock())  # SQLite: no LISTEN
    started = datetime.now(UTC)
    base = f"http://127.0.0.1:{api.port}"
    streams = []
    try:
        live = sse_at(f"{base}/events")
        streams.append(live)
        with DemoProvider(clock=clock) as provider:
            pipe = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine, redactor), clock=clock,
                               redact=redactor, listeners=[HubListener(api.hub)])  # fmt: skip
            pipe.run_cycle(["IBM", "MSFT"], "5min", job_name="live")
        events = [live.next(), live.next()]
        got = {e["data"]["symbol"]: e["data"] for e in events}
        assert set(got) == {"IBM", "MSFT"} and got["IBM"]["rows"] == 100 and got["IBM"]["ts"].endswith("Z")
        # a client from before this server started: caught up from the bars table
        late = sse_at(f"{base}/events?symbols=MSFT&since={(started - timedelta(minutes=5)):%Y-%m-%dT%H:%M:%SZ}")
        streams.append(late)
        assert late.status == 200
        caught = late.next()
        assert caught["data"]["symbol"] == "MSFT" and caught["data"]["rows"] == 100
        assert caught["data"]["ts"] == got["MSFT"]["ts"] and caught["data"]["close"] == got["MSFT"]["close"]
        assert int(caught["id"]) == max(int(e["id"]) for e in events)  # the last catch-up event: the hub's id then
        assert httpx.get(f"{base}/events?since=yesterday").status_code == 400
        assert httpx.get(f"{base}/events?symbols=bad%20symbol").status_code == 400
    finally:
        for s in streams:
            s.close()
        api.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["--show-scheduled-jobs"], ["--market-status"], ["--backfill", "--symbols", "IBM",
                                     "--start", "2024-01-01", "--end", "2024-01-02"], ["--remove-job", "x"]])  # fmt: skip
def test_a_one_shot_command_given_api_port_is_one_line_and_exit_2(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args([*command, "--api-port", "8080"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("main.py: error: argument --api-port: only with a long-running mode")
    assert cli.parse_args(["--stream", "--symbols", "IBM", "--api-port", "8080"]).api_port == 8080


def test_api_port_in_continuous_poll_and_a_busy_port(tmp_path, sqlite_url):
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    # a busy port: one line, exit 2, no traceback, no cycle
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*MAIN, "--continuous-poll", "--symbols", "IBM", "--api-port", str(port)], cwd=tmp_path, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.splitlines()[-1] == f"main.py: error: --api-port {port}: cannot listen on 127.0.0.1:{port}: already in use"

    port = free_port()
    launched = datetime.now(UTC)
    proc = subprocess.Popen([*MAIN, "--continuous-poll", "--symbols", "BTC-USD", "IBM", "--interval", "1min",
                             "--poll-interval", "0.05", "--api-port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"{base}/status", timeout=5).json()
                if status["polling"]["cycles"] >= 1:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        polling = status["polling"]
        assert polling["mode"] == "--continuous-poll" and polling["job"] == "continuous_polling"
        assert polling["symbols"] == ["BTC-USD", "IBM"] and polling["polling_running"] is True
        assert polling["last_cycle"]["rows_loaded"] >= 100 and status["jobs"] == [] and "rate_budget" in status
        assert httpx.get(f"{base}/health").json() == {"status": "ok", "polling_running": True, "job": "continuous_polling",
                                                      "last_cycle_status": polling["last_cycle"]["status"]}  # fmt: skip
        assert httpx.post(f"{base}/jobs/x/pause").status_code == 404  # no named jobs here
        # BTC-USD trades around the clock: its bars are in the table whatever the day; a stream from before catches up
        sse = sse_at(f"{base}/events?symbols=BTC-USD&since={launched:%Y-%m-%dT%H:%M:%SZ}")
        try:
            event = sse.next()
            assert event["data"]["symbol"] == "BTC-USD" and event["data"]["interval"] == "1min"
        finally:
            sse.close()
        with ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            ws.send(json.dumps({"type": "join_room", "room": "prices"}))
            first = recv(ws)
            assert first["type"] == "price_update" and first["data"]["symbol"] == "BTC-USD"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)["total_iterations"] >= 1


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536, 70_000])
def test_a_ready_made_text_frame_is_the_frame_the_websockets_library_builds_and_reads(size):
    """The rooms write each message's frame once for all clients (api.ws.text_frame): it must be byte for byte
    what websockets would send, at each length encoding (7-bit, 16-bit, 64-bit), and parse back to the text."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from api.ws import text_frame

    text = "é" + "x" * (size - 2) if size else ""  # ``size`` bytes of UTF-8, one character of them two bytes
    assert len(text.encode()) == size
    frame = text_frame(text)
    assert frame == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        assert done.value.opcode is Opcode.TEXT and done.value.fin and done.value.data.decode() == text
    else:
        raise AssertionError("the frame did not parse from its own bytes")
