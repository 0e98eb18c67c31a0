"""SIGTERM in the middle of a cycle: a real subprocess, a real signal, a slow loopback API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from support import ROOT, as_symbol, fixture, ok

BODY = fixture("alphavantage/intraday_1min_MSFT.json")
SYMBOLS = ["AAA", "BBB", "SLOWX", "CCC", "DDD", "EEE", "FFF"]


def test_sigterm_mid_cycle_loses_nothing_and_half_writes_nothing(tmp_path, replay, pg_engine, pg_url):
    slow = threading.Event()
    slow.set()

    def route(_p, q):
        if slow.is_set():
            time.sleep(20 if q["symbol"] == "SLOWX" else 0.4)  # a hung request among slow ones
        return ok(as_symbol(BODY, q["symbol"]))

    srv = replay(route)
    env = {**os.environ, "DATABASE_URL": pg_url, "ALPHA_VANTAGE_API_KEY": "SHUTDOWNKEY1", "ALPHA_VANTAGE_BASE_URL": srv.url,
           "ALPHA_VANTAGE_RATE_LIMIT": "100/second", "HTTP_READ_TIMEOUT_SECONDS": "60"}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "main.py"), "--continuous-poll", "--provider", "alphavantage", "--interval", "1min",
           "--symbols", *SYMBOLS, "--workers", "2", "--poll-interval", "0.01", "--poll-max-iterations", "1",
           "--shutdown-timeout", "3"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the cycle is underway: some symbol loaded
        with pg_engine.connect() as c:
            if c.exec_driver_sql("SELECT count(*) FROM bars").scalar():
                break
        time.sleep(0.1)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - signalled

    assert proc.returncode == 0, err
    assert took < 3 + 1.5, f"exited {took:.1f}s after SIGTERM with a 3 s shutdown timeout"
    with pg_engine.connect() as c:
        counts = dict(c.exec_driver_sql("SELECT symbol, count(*) FROM bars GROUP BY symbol").all())
        (status, failed) = c.exec_driver_sql("SELECT status, failed_symbols FROM etl_runs").one()
    assert status == "interrupted" and "SLOWX" in failed
    assert set(counts.values()) == {100}, counts  # every symbol all or nothing
    assert "SLOWX" not in counts and len(counts) < len(SYMBOLS)
    assert "SHUTDOWNKEY1" not in out + err

    slow.clear()  # the next run: the API answers at once, and the rest of the data arrives
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    with pg_engine.connect() as c:
        counts = dict(c.exec_driver_sql("SELECT symbol, count(*) FROM bars GROUP BY symbol").all())
        statuses = [r[0] for r in c.exec_driver_sql("SELECT status FROM etl_runs ORDER BY id").all()]
    assert counts == dict.fromkeys(SYMBOLS, 100) and statuses == ["interrupted", "succeeded"]


def test_second_signal_exits_at_once(tmp_path, replay, sqlite_url):
    srv = replay(lambda _p, q: (time.sleep(20), ok(as_symbol(BODY, q["symbol"])))[1])
    env = {**os.environ, "DATABASE_URL": sqlite_url, "ALPHA_VANTAGE_API_KEY": "SHUTDOWNKEY2", "ALPHA_VANTAGE_BASE_URL": srv.url}
    cmd = [sys.executable, str(ROOT / "main.py"), "--continuous-poll", "--provider", "alphavantage", "--interval", "1min",
           "--symbols", "AAA", "--shutdown-timeout", "60"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not srv.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and time.monotonic() - t < 2 and "second SIGINT" in err
