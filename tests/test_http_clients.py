"""HTTP clients stay bounded over many cycles: the pipeline's fresh fetch threads never leak sessions.

The pipeline makes a new thread pool every cycle. Sessions kept per thread were never closed:
a 2,000-cycle soak grew by +14,400 open file descriptors (about 8 sockets a cycle). These tests
run many real cycles (loopback Alpha Vantage wire format -> validate -> PostgreSQL) and count
the process's open descriptors and the connections the server accepted.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

from clock import ManualClock
from db import RunLedger
from etl.load import make_loader
from etl.loopback import LoopbackServer
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.providers.base import MAX_IDLE_CLIENTS
from etl.redact import Redactor
from models.run import RunStatus
from support import as_symbol, fixture, ok

NOW = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)
KEY = "CLIENTSECRET7"
SYMBOLS = [f"S{i:02d}" for i in range(8)]
WORKERS = 4


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_settle_to(limit: int, timeout_seconds: float = 3.0) -> int:
    """Open fds once at most ``limit`` or after the timeout: the server's handler threads close their ends
    of a connection the client closed a moment later."""
    deadline = time.monotonic() + timeout_seconds
    while (n := open_fds()) > limit and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


class CountingServer:
    """A loopback Alpha Vantage (1min MSFT fixture relabelled per symbol) that counts accepted connections."""

    def __init__(self, gate: threading.Barrier | None = None) -> None:
        self.accepted = 0
        self.gate = gate
        body = fixture("alphavantage/intraday_1min_MSFT.json")
        replies = {s: as_symbol(body, s) for s in SYMBOLS}

        def handler(_path: str, q: dict[str, str]):
            if self.gate is not None:
                self.gate.wait(timeout=10)
            return ok(replies.get(q.get("symbol", ""), body))

        self.server = LoopbackServer(handler)
        inner = self.server._server  # count at accept(): the server loop calls get_request once per connection
        accept = inner.get_request

        def counting_accept():
            conn = accept()
            self.accepted += 1
            return conn

        inner.get_request = counting_accept

    def close(self) -> None:
        self.server.close()


def test_many_cycles_keep_fds_and_connections_flat(pg_engine):
    srv = CountingServer()
    provider = AlphaVantageProvider(AlphaVantageConfig(api_key=KEY, base_url=f"{srv.server.url}/query"), clock=ManualClock(NOW))
    redactor = Redactor([KEY])
    pipe = EtlPipeline(provider, make_loader(pg_engine), RunLedger(pg_engine, redactor), clock=ManualClock(NOW),
                       redact=redactor, workers=WORKERS)  # fmt: skip
    try:
        fds = []
        for i in range(40):
            cycle = pipe.run_cycle(SYMBOLS, "1min", job_name="soak")
            assert cycle.status is RunStatus.SUCCEEDED, cycle.error
            if i in (4, 39):
                fds.append(open_fds())
        clients = provider.http_clients()
        # 40 cycles x 4 new fetch threads: per-thread sessions would have opened ~160 connections
        assert srv.accepted <= WORKERS, f"{srv.accepted} connections accepted for 320 requests"
        assert clients["open"] <= WORKERS and clients["idle"] == clients["open"]
        assert fds[1] - fds[0] <= 1, f"open fds grew from {fds[0]} to {fds[1]} over 35 cycles"
    finally:
        provider.close()
        srv.close()
    assert provider.http_clients() == {"open": 0, "idle": 0}


def test_idle_clients_are_capped_and_close_releases_them():
    """40 requests held in flight at once need 40 clients; only MAX_IDLE_CLIENTS are kept afterwards."""
    n = MAX_IDLE_CLIENTS + 8
    srv = CountingServer(gate=threading.Barrier(n))
    provider = AlphaVantageProvider(AlphaVantageConfig(api_key=KEY, base_url=f"{srv.server.url}/query"), clock=ManualClock(NOW))
    try:
        before = open_fds()
        threads = [threading.Thread(target=provider.fetch_bars, args=(SYMBOLS[i % len(SYMBOLS)], "1min")) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
        assert srv.accepted == n
        assert provider.http_clients() == {"open": MAX_IDLE_CLIENTS, "idle": MAX_IDLE_CLIENTS}
        # each kept client holds one connection (two fds here: the server is in this process too);
        # the 8 extra ones were closed on return
        assert fds_settle_to(before + 2 * MAX_IDLE_CLIENTS) <= before + 2 * MAX_IDLE_CLIENTS
        provider.close()
        assert provider.http_clients() == {"open": 0, "idle": 0}
        assert fds_settle_to(before) <= before
        srv.gate = None
        provider.fetch_bars("S01", "1min")  # still usable after close: a fresh client
        assert provider.http_clients() == {"open": 1, "idle": 1}
    finally:
        provider.close()
        srv.close()
