"""The etl_runs ledger stays honest: counts as they commit, abandoned rows, outages, statuses, bounded retries.

Real parts only: PostgreSQL behind a loopback TCP forwarder that can be cut (a database
outage), loopback HTTP servers, and main.py as a subprocess killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from clock import ManualClock
from db import RunLedger, make_engine
from db.ledger import HOST
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.providers.demo import DemoProvider
from etl.redact import Redactor
from etl.retry import RetryPolicy
from models.run import RunStatus
from netfaults import TcpForwarder
from support import ROOT, fixture, ok

NOW = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)
KEY = "LEDGERSECRET77"
BODY = fixture("alphavantage/intraday_1min_MSFT.json")
NOTE = fixture("alphavantage/throttle_note.json")


def av(url: str, **retry) -> AlphaVantageProvider:
    policy = RetryPolicy(**{"max_attempts": 4, "initial_delay_seconds": 0.01, "jitter_seconds": 0.0, **retry})
    return AlphaVantageProvider(AlphaVantageConfig(api_key=KEY, base_url=url, retry=policy))


def pipeline(engine, provider, **kw) -> EtlPipeline:
    redactor = Redactor([KEY])
    return EtlPipeline(provider, make_loader(engine), RunLedger(engine, redactor), clock=ManualClock(NOW), redact=redactor, **kw)


def rows(engine, sql: str):
    with engine.connect() as c:
        return c.exec_driver_sql(sql).all()


def msft_body_for(_path, q):
    return ok(BODY.replace(b'"2. Symbol": "MSFT"', f'"2. Symbol": "{q["symbol"]}"'.encode()))


@pytest.fixture
def forwarded(pg_url):
    """(engine through a cuttable TCP forwarder to the test PostgreSQL, the forwarder)."""
    url = sa.engine.make_url(pg_url)
    fwd = TcpForwarder((url.host or "127.0.0.1", url.port or 5432))
    engine = make_engine(url.set(host="127.0.0.1", port=fwd.port).render_as_string(hide_password=False))
    yield engine, fwd
    engine.dispose()
    fwd.close()


# -- counts as they commit, abandoned rows -----------------------------------------------------


def test_a_killed_cycle_row_counts_exactly_what_committed_and_is_marked_abandoned_later(tmp_path, replay, pg_engine, pg_url):
    def route(path, q):
        time.sleep(0.25)  # one symbol at a time, one load transaction each
        return msft_body_for(path, q)

    srv = replay(route)
    env = {**os.environ, "DATABASE_URL": pg_url, "ALPHA_VANTAGE_API_KEY": KEY, "ALPHA_VANTAGE_BASE_URL": srv.url,
           "ALPHA_VANTAGE_RATE_LIMIT": "100/second"}  # fmt: skip
    symbols = [f"S{i}" for i in range(12)]
    cmd = [sys.executable, str(ROOT / "main.py"), "--continuous-poll", "--provider", "alphavantage", "--interval", "1min",
           "--workers", "1", "--poll-interval", "0.01", "--poll-max-iterations", "1", "--symbols", *symbols]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and rows(pg_engine, "SELECT count(DISTINCT symbol) FROM bars")[0][0] < 3:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, no row is finished
    proc.wait(timeout=10)

    (row,) = rows(pg_engine, "SELECT id, status, rows_loaded, rows_fetched, symbols_succeeded, host, pid FROM etl_runs")
    run_id, status, loaded, fetched, succeeded, host, pid = row
    bars, series = rows(pg_engine, "SELECT count(*), count(DISTINCT symbol) FROM bars")[0]
    assert status == "running" and host == HOST and pid == proc.pid
    assert bars >= 300 and (loaded, succeeded, fetched) == (bars, series, bars), "the row counts exactly what committed"

    again = subprocess.run(cmd[: -len(symbols)] + ["S0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    status, summary = rows(pg_engine, f"SELECT status, error_summary FROM etl_runs WHERE id = {run_id}")[0]
    assert status == "abandoned" and "died mid-cycle" in summary, (status, summary, again.stderr[-3000:])
    assert "marked 1 etl_runs row(s) left 'running' by dead processes as abandoned" in again.stderr


def test_running_rows_of_live_processes_and_other_hosts_are_left_alone(pg_engine):
    ledger = RunLedger(pg_engine)
    with pg_engine.begin() as c:
        for host, pid in ((HOST, os.getpid()), (HOST, 999_999_999), ("elsewhere", 999_999_999), (None, 999_999_999)):
            c.exec_driver_sql("INSERT INTO etl_runs (job_name, provider, started_at, status, host, pid) "
                              "VALUES ('j', 'p', now(), 'running', %s, %s)", (host, pid))  # fmt: skip
    marked = ledger.mark_abandoned(NOW, alive=lambda pid, _started: pid == os.getpid(), own_pid=12345)
    assert marked == 1
    assert rows(pg_engine, "SELECT host, pid, status FROM etl_runs ORDER BY id") == [
        (HOST, os.getpid(), "running"),  # alive on this host
        (HOST, 999_999_999, "abandoned"),  # dead on this host
        ("elsewhere", 999_999_999, "running"),  # another host: not ours to judge
        (None, 999_999_999, "running"),  # written before hosts were recorded
    ]


def test_a_pid_reused_by_a_younger_process_does_not_keep_a_dead_row_running(pg_engine):
    """PIDs wrap (and threads take them too): the process holding a dead row's pid now started after that
    row did, so it cannot be its writer."""
    from scheduler.streaming import pid_alive

    younger = subprocess.Popen(["sleep", "30"])
    try:
        with pg_engine.begin() as c:
            for pid, started in ((younger.pid, "now() - interval '1 hour'"), (os.getpid(), "now()")):
                c.exec_driver_sql("INSERT INTO etl_runs (job_name, provider, started_at, status, host, pid) "
                                  f"VALUES ('j', 'p', {started}, 'running', %s, %s)", (HOST, pid))  # fmt: skip
        assert RunLedger(pg_engine).mark_abandoned(NOW, alive=pid_alive, own_pid=12345) == 1
        assert rows(pg_engine, "SELECT pid, status FROM etl_runs ORDER BY id") == [
            (younger.pid, "abandoned"),  # its pid is held by a process an hour younger than the row
            (os.getpid(), "running"),  # this test's process wrote it: alive, and older than the row
        ]
    finally:
        younger.kill()
        younger.wait()


# -- the database goes away ----------------------------------------------------------------------


def test_cycles_during_an_outage_are_recorded_when_the_database_returns(forwarded, pg_engine):
    engine, fwd = forwarded
    with DemoProvider(clock=ManualClock(NOW)) as provider:
        p = pipeline(engine, provider)
        fwd.cut()
        down = p.run_cycle(["IBM"], "5min", job_name="outage")
        assert down.status is RunStatus.FAILED and "database unavailable" in down.error and p.ledger.backlog == 1
        assert rows(pg_engine, "SELECT count(*) FROM etl_runs")[0][0] == 0
        fwd.restore()
        back = p.run_cycle(["IBM"], "5min", job_name="outage")
    assert back.status is RunStatus.SUCCEEDED and p.ledger.backlog == 0
    recorded = rows(pg_engine, "SELECT status, finished_at IS NOT NULL, error_summary, host FROM etl_runs ORDER BY id")
    assert sorted(r[0] for r in recorded) == ["failed", "succeeded"]
    failed = next(r for r in recorded if r[0] == "failed")
    assert failed[1] and "database unavailable" in failed[2] and failed[3] == HOST


def test_no_fetch_starts_once_the_database_is_gone(forwarded, replay, pg_engine):
    engine, fwd = forwarded
    served: list[str] = []

    def route(path, q):
        served.append(q["symbol"])
        if len(served) == 3:
            fwd.cut()  # the database dies while the cycle runs
        return msft_body_for(path, q)

    srv = replay(route)
    symbols = [f"S{i:02d}" for i in range(40)]
    cycle = pipeline(engine, av(srv.url), workers=1).run_cycle(symbols, "1min", job_name="t", retry_passes=3)
    assert len(served) <= 5, f"{len(served)} requests after the database went away (before: one per symbol per pass)"
    not_fetched = [o for o in cycle.outcomes if o.error and "not fetched" in o.error]
    assert len(not_fetched) >= 35 and cycle.status in (RunStatus.FAILED, RunStatus.PARTIAL)
    fwd.restore()
    loaded = rows(pg_engine, "SELECT count(DISTINCT symbol) FROM bars")[0][0]
    assert loaded == sum(1 for o in cycle.outcomes if o.ok) and loaded <= 3


# -- statuses and bounded retries ----------------------------------------------------------------


def test_a_cycle_whose_every_symbol_loaded_is_succeeded_even_if_a_signal_came(engine):
    stop = threading.Event()

    class SignalDuringFetch(DemoProvider):
        def fetch_bars(self, symbol, interval, *, since=None):
            stop.set()  # SIGTERM arrives while the only symbol is in flight
            return super().fetch_bars(symbol, interval, since=since)

    with SignalDuringFetch(clock=ManualClock(NOW)) as provider:
        cycle = pipeline(engine, provider, stop=stop).run_cycle(["IBM"], "5min", job_name="t")
    assert cycle.status is RunStatus.SUCCEEDED and cycle.rows_loaded == 100
    assert rows(engine, "SELECT status FROM etl_runs") == [("succeeded",)]


def test_a_throttled_symbol_costs_at_most_its_retry_budget_per_cycle(engine, replay):
    srv = replay(lambda _p, _q: ok(NOTE))
    cycle = pipeline(engine, av(srv.url), retry_attempts=4).run_cycle(["MSFT"], "1min", job_name="t", retry_passes=3)
    assert len(srv.requests) == 4, f"{len(srv.requests)} requests (4 attempts x 4 passes = 16 before the budget)"
    assert cycle.status is RunStatus.FAILED and "retry budget" in cycle.outcomes[0].error


def test_a_retry_hint_longer_than_the_budget_defers_the_symbol(engine, replay):
    srv = replay([(429, {"Retry-After": "50"}, b"slow down"), ok(BODY)])
    cycle = pipeline(engine, av(srv.url), retry_budget_seconds=20).run_cycle(["MSFT"], "1min", job_name="t", retry_passes=3)
    assert len(srv.requests) == 1 and cycle.status is RunStatus.FAILED
    assert "deferred to the next cycle" in cycle.outcomes[0].error


def test_the_budget_is_shared_by_provider_retries_and_cycle_passes(engine, replay):
    state = {"n": 0}

    def route(_p, _q):
        state["n"] += 1
        return ok(NOTE) if state["n"] <= 2 else ok(BODY)

    srv = replay(route)
    # the provider gives up after 1 attempt; the cycle's passes retry within the same budget of 3 requests
    cycle = pipeline(engine, av(srv.url, max_attempts=1), retry_attempts=3).run_cycle(["MSFT"], "1min", job_name="t",
                                                                                   retry_passes=5)  # fmt: skip
    assert cycle.status is RunStatus.SUCCEEDED and len(srv.requests) == 3


# -- start-up signals ----------------------------------------------------------------------------


def _handles_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def test_sigterm_during_start_up_is_a_graceful_exit_0(tmp_path):
    cmd = [sys.executable, str(ROOT / "main.py"), "--continuous-poll", "--symbols", "IBM", "--poll-interval", "0.01",
           "--poll-max-iterations", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not _handles_sigterm(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.002)  # the handler is installed before the heavy imports: signal inside them
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and ("during start-up" in err or "SIGTERM received" in err), err
