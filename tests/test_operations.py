"""marketpoll says what it is doing: waits with their reason, progress of long cycles, JSON logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import etl.pipeline
from clock import ManualClock
from db import RunLedger
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.providers.demo import DemoProvider
from etl.retry import human_seconds
from scheduler.calendar import Calendars
from scheduler.polling import PollingConfig, PollingManager
from support import ROOT, fixture, ok

NOW = datetime(2024, 3, 8, 20, 50, tzinfo=UTC)  # Friday 15:50 New York


def test_human_seconds():
    assert [human_seconds(s) for s in (0.25, 48, 125, 3600, 11400, 180000)] == [
        "0.2 s", "48 s", "2 min 5 s", "1 h", "3 h 10 min", "2 d 2 h"]  # fmt: skip


def test_every_wait_is_logged_with_its_reason_and_a_human_duration(sqlite_engine, caplog):
    clock = ManualClock(NOW)
    with DemoProvider(clock=clock) as provider:
        p = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine), clock=clock)
        manager = PollingManager(p, calendars=Calendars(), clock=clock)
        config = PollingConfig(interval_minutes=5, max_iterations=4, symbols=("IBM",), exchange="XNYS")
        with caplog.at_level(logging.INFO, logger="scheduler.polling"):
            manager.market_hours_polling(config)
    waits = [r.getMessage() for r in caplog.records if "next poll in" in r.getMessage()]
    assert "next poll in 5 min" in waits[0] and "every 5 min in the regular session" in waits[0]
    # after Friday's close: the weekend is one wait, explained, in days and hours
    assert any("next poll in 2 d 16 h" in w and "session closed; next opens Mon 09:30 EDT" in w for w in waits), waits


def test_a_long_cycle_logs_its_progress(sqlite_engine, replay, caplog, monkeypatch):
    monkeypatch.setattr(etl.pipeline, "PROGRESS_EVERY_SECONDS", 0.2)
    body = fixture("alphavantage/intraday_1min_MSFT.json")

    def slow(_p, q):
        time.sleep(0.1)
        return ok(body.replace(b'"2. Symbol": "MSFT"', f'"2. Symbol": "{q["symbol"]}"'.encode()))

    srv = replay(slow)
    provider = AlphaVantageProvider(AlphaVantageConfig(api_key="PROGRESSKEY1", base_url=srv.url))
    p = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine), clock=ManualClock(NOW))
    with caplog.at_level(logging.INFO, logger="etl.pipeline"):
        p.run_cycle([f"S{i}" for i in range(8)], "1min", job_name="slowjob")
    progress = [r.getMessage() for r in caplog.records if "symbols done" in r.getMessage()]
    assert progress and all(m.startswith("cycle slowjob: ") and "/8 symbols done" in m for m in progress), progress


def test_json_log_format_writes_one_object_per_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL"))}
    r = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--continuous-poll", "--symbols", "IBM", "--poll-interval", "0.01",
         "--poll-max-iterations", "2", "--log-format", "json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stderr.splitlines()]
    assert records and all({"time", "level", "logger", "message"} <= rec.keys() for rec in records)
    cycles = [rec for rec in records if rec["message"].startswith("cycle job=continuous_polling")]
    assert len(cycles) == 2 and cycles[0]["level"] == "INFO" and cycles[0]["logger"] == "etl.pipeline"
