"""Rate budgets as the app wires them: each provider's default budget applies in every mode
(polling, named jobs, the systemd service) without any --rate-limit flag."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from app import App
from clock import ManualClock
from etl.ratelimit import key_id
from etl.redact import Redactor
from scheduler.calendar import Session
from settings import Settings
from support import ROOT, fixture, ok, wait_for

BODY = fixture("alphavantage/intraday_1min_MSFT.json")


def body_for(symbol: str) -> bytes:
    """The MSFT recording, relabelled for ``symbol`` (a reply for another symbol is refused)."""
    return BODY.replace(b'"2. Symbol": "MSFT"', f'"2. Symbol": "{symbol}"'.encode())


MONDAY = datetime(2024, 3, 11, 15, 0, tzinfo=UTC)


def fake_key() -> str:
    """A fresh key per test: budgets are process-wide per (provider, key)."""
    return f"FAKEKEY{uuid.uuid4().hex[:12].upper()}"


@pytest.fixture
def timed(replay):
    """A loopback Alpha Vantage that notes when each request arrives (monotonic seconds)."""
    arrivals: list[float] = []
    lock = threading.Lock()

    def route(_path, query):
        with lock:
            arrivals.append(time.monotonic())
        return ok(body_for(query.get("symbol", "")))

    srv = replay(route)
    srv.arrivals = arrivals
    return srv


def gaps(arrivals: list[float]) -> list[float]:
    ts = sorted(arrivals)
    return [b - a for a, b in zip(ts, ts[1:], strict=False)]


def make_app(srv, key: str, db_url: str, *, clock=None, rate_limit=None, **env: str) -> App:
    settings = Settings.from_env({"ALPHA_VANTAGE_API_KEY": key, "ALPHA_VANTAGE_BASE_URL": srv.url, "DATABASE_URL": db_url, **env})
    return App(settings, Redactor([key]), threading.Event(), rate_limit=rate_limit, clock=clock or ManualClock(MONDAY))


def quota_rows(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.exec_driver_sql("SELECT provider, key_id, used FROM api_quota").all()]


def test_cli_polling_applies_the_free_tier_budget_without_a_flag(tmp_path, timed, pg_engine, pg_url):
    key = fake_key()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL", "DEMO_"))}
    env.update(ALPHA_VANTAGE_API_KEY=key, ALPHA_VANTAGE_BASE_URL=timed.url, DATABASE_URL=pg_url)
    r = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--continuous-poll", "--provider", "alphavantage", "--symbols", "AAA", "BBB",
         "CCC", "--interval", "1min", "--poll-max-iterations", "1", "--workers", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "alphavantage rate budget: 1/second 25/day" in r.stderr
    # three workers, yet one request a second (50 ms of loopback jitter allowed); the API never throttled us
    assert len(timed.arrivals) == 3 and all(g >= 0.95 for g in gaps(timed.arrivals)), gaps(timed.arrivals)
    assert quota_rows(pg_engine) == [("alphavantage", key_id(key), 3)]  # counted per key, never the key itself


def test_each_provider_gets_its_own_default_budget_and_budgets_reports_it(timed, sqlite_url):
    key = fake_key()
    app = make_app(timed, key, sqlite_url)
    try:
        cycle = app.pipeline("alphavantage").run_cycle(["IBM", "MSFT"], "1min", job_name="budget")
        assert cycle.status.value == "succeeded" and len(timed.arrivals) == 2 and gaps(timed.arrivals)[0] >= 0.95
        assert app.budgets() == {
            "alphavantage": {"rates": ["1/second", "25/day"], "remaining_today": 23, "paused_until": None},
        }
        app.provider("demo")
        assert set(app.budgets()) == {"alphavantage"}  # the demo has no budget unless one is set
    finally:
        app.close()
    demo = make_app(timed, key, sqlite_url, DEMO_RATE_LIMIT="50/second")
    flag = make_app(timed, fake_key(), sqlite_url, rate_limit=["75/minute"])
    try:
        demo.provider("demo")
        assert demo.budgets() == {"demo": {"rates": ["50/second"], "remaining_today": None, "paused_until": None}}
        flag.provider("alphavantage")  # --rate-limit overrides ALPHA_VANTAGE_RATE_LIMIT
        assert flag.budgets()["alphavantage"]["rates"] == ["75/minute"]
    finally:
        demo.close()
        flag.close()


def test_a_used_up_daily_quota_pauses_the_provider_until_the_next_utc_day(timed, sqlite_url):
    key = fake_key()
    app = make_app(timed, key, sqlite_url, ALPHA_VANTAGE_RATE_LIMIT="50/second 2/day")
    try:
        pipeline = app.pipeline("alphavantage")
        first = pipeline.run_cycle(["AAA", "BBB", "CCC"], "1min", job_name="quota")
        assert len(timed.arrivals) == 2 and len(first.failed) == 1 and "daily quota" in first.failed[0].error
        assert app.budgets()["alphavantage"] == {"rates": ["50/second", "2/day"], "remaining_today": 0,
                                                 "paused_until": "2024-03-12T00:00:00+00:00"}  # fmt: skip
        second = pipeline.run_cycle(["AAA"], "1min", job_name="quota")
        assert len(timed.arrivals) == 2 and "paused" in (second.error or "")  # no request at all
        assert quota_rows(app.engine) == [("alphavantage", key_id(key), 2)]
    finally:
        app.close()


def test_named_jobs_run_on_the_provider_s_default_budget(timed, sqlite_url):
    key = fake_key()
    app = make_app(timed, key, sqlite_url)
    sched = app.scheduler()
    # fires only at the 09:30 open (New York): during the test it runs when told to
    sched.schedule_job("budgeted", Session.REGULAR, ["AAA", "BBB"], 1440, exchange="XNYS", provider="alphavantage",
                       bar_interval="1min")  # fmt: skip
    runner = threading.Thread(target=sched.run, args=(app.stop,), kwargs={"sync_seconds": 0.05})
    runner.start()
    try:
        wait_for(lambda: sched.scheduled_job_ids() == ["budgeted"], "the job is picked up")
        assert sched.run_now("budgeted")
        wait_for(lambda: len(timed.arrivals) == 2, "the job's cycle fetched both symbols")
        assert gaps(timed.arrivals)[0] >= 0.95
        assert quota_rows(app.engine) == [("alphavantage", key_id(key), 2)]
        assert app.budgets()["alphavantage"]["remaining_today"] == 23
    finally:
        app.stop.set()
        runner.join(timeout=30)
        app.close()


@pytest.mark.parametrize(("flag", "unit_args"), [(["75/minute"], "--rate-limit 75/minute"),
                                                 (["1/second 25/day"], "--rate-limit 1/second 25/day")])  # fmt: skip
def test_the_service_unit_carries_the_rate_limit_flag(tmp_path, flag, unit_args):
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--install-service", "--dry-run", "--rate-limit", *flag],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    (exec_start,) = [line for line in r.stdout.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.endswith(unit_args) or f"{unit_args} " in exec_start, exec_start
