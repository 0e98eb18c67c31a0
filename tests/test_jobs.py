"""Named jobs: the session trigger (pure), the job table, and a scheduler in another process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from clock import ManualClock
from db.jobs import JobDefinition, JobStore, check_job_name
from errors import ConfigError, LoadError, SchedulingError
from scheduler.calendar import Calendars, Session
from scheduler.jobs import MarketScheduler, SessionTrigger
from support import ROOT, wait_for

CALS = Calendars()


class NoPipeline:
    """What a job's fire would run on: counts cycles, fetches nothing."""

    def __init__(self) -> None:
        self.provider = SimpleNamespace(budget=None)
        self.cycles: list[str] = []

    def run_cycle(self, symbols, interval, *, job_name):
        self.cycles.append(job_name)


@pytest.fixture(params=["sqlite"])
def running(request):
    """A MarketScheduler running (real BackgroundScheduler, 50 ms table syncs) in a thread; yields it.

    SQLite unless a test parametrizes ``running`` indirectly with ``"postgresql"``.
    """
    store = JobStore(request.getfixturevalue("pg_engine" if request.param == "postgresql" else "sqlite_engine"))
    pipeline = NoPipeline()
    sched = MarketScheduler(store, pipeline_for=lambda _p, _f=None: pipeline, calendars=CALS,
                            clock=ManualClock(utc("2024-03-11T15:00:00Z")))  # fmt: skip
    stop = threading.Event()
    runner = threading.Thread(target=sched.run, args=(stop,), kwargs={"sync_seconds": 0.05})
    runner.start()
    wait_for(lambda: sched.running, "the scheduler started")
    sched.runner = runner
    try:
        yield sched
    finally:
        stop.set()
        runner.join(timeout=10)


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


def fires(exchange: str, session: Session, minutes: float, start: str, n: int) -> list[str]:
    trig = SessionTrigger(CALS.get(exchange), session, timedelta(minutes=minutes))
    out, prev, now = [], None, utc(start)
    for _ in range(n):
        prev = trig.get_next_fire_time(prev, now)
        out.append(prev.strftime("%Y-%m-%dT%H:%MZ"))
    return out


def test_regular_job_fires_from_the_open_through_the_close():
    assert fires("XNYS", Session.REGULAR, 60, "2024-03-11T12:00:00Z", 9) == [
        "2024-03-11T13:30Z", "2024-03-11T14:30Z", "2024-03-11T15:30Z", "2024-03-11T16:30Z", "2024-03-11T17:30Z",
        "2024-03-11T18:30Z", "2024-03-11T19:30Z", "2024-03-12T13:30Z", "2024-03-12T14:30Z",
    ]  # fmt: skip


def test_job_crosses_the_us_spring_switch_weekend():
    # Friday 09:30 EST = 14:30Z, Monday 09:30 EDT = 13:30Z
    assert fires("XNYS", Session.REGULAR, 390, "2024-03-08T14:00:00Z", 3) == [
        "2024-03-08T14:30Z",
        "2024-03-08T21:00Z",
        "2024-03-11T13:30Z",
    ]


def test_job_crosses_the_us_autumn_switch_weekend():
    assert fires("XNYS", Session.PRE, 330, "2024-11-01T07:00:00Z", 3) == [
        "2024-11-01T08:00Z",
        "2024-11-01T13:30Z",
        "2024-11-04T09:00Z",  # pre-market 04:00 EDT, then 04:00 EST
    ]


def test_job_skips_the_holiday_and_stops_at_the_early_close():
    assert fires("XNYS", Session.REGULAR, 30, "2024-07-03T16:10:00Z", 3) == [
        "2024-07-03T16:30Z",
        "2024-07-03T17:00Z",
        "2024-07-05T13:30Z",  # 13:00 EDT close, July 4th skipped
    ]
    assert fires("XNYS", Session.POST, 120, "2024-11-29T17:00:00Z", 4) == [
        "2024-11-29T18:00Z",
        "2024-11-29T20:00Z",
        "2024-11-29T22:00Z",
        "2024-12-02T21:00Z",  # after-hours 13:00-17:00 EST
    ]


def test_after_hours_job_crosses_midnight_utc():
    assert fires("XNYS", Session.POST, 120, "2024-03-11T21:30:00Z", 3) == [
        "2024-03-11T22:00Z",
        "2024-03-12T00:00Z",
        "2024-03-12T20:00Z",
    ]


def test_xwar_job_after_the_eu_switch():
    assert fires("XWAR", Session.REGULAR, 480, "2024-03-28T09:00:00Z", 3) == [
        "2024-03-28T16:00Z",
        "2024-04-02T07:00Z",
        "2024-04-02T15:00Z",
    ]


def test_24_7_job_fires_on_weekends():
    assert fires("24/7", Session.REGULAR, 15, "2024-03-09T00:05:00Z", 2) == ["2024-03-09T00:15Z", "2024-03-09T00:30Z"]


def test_store_put_replace_remove_and_last_run(engine):
    store = JobStore(engine)
    sched = MarketScheduler(store, pipeline_for=lambda _p, _f=None: None, calendars=CALS,
                            clock=ManualClock(utc("2024-03-11T12:00:00Z")))  # fmt: skip
    assert sched.schedule_market_hours_job("daily", ["aapl", "MSFT"], 5) is False
    assert sched.schedule_market_hours_job("daily", ["AAPL"], 15, exchange="XNAS") is True
    assert sched.schedule_pre_market_job("early", ["SPY"], 15) is False
    jobs = {j["name"]: j for j in sched.get_scheduled_jobs()}
    assert (
        jobs["daily"]["symbols"] == ["AAPL"] and jobs["daily"]["exchange"] == "XNAS" and jobs["daily"]["interval_minutes"] == 15
    )
    assert jobs["daily"]["next_run_utc"] == "2024-03-11T13:30:00+00:00"
    assert jobs["daily"]["next_run_exchange"] == "2024-03-11T09:30:00-04:00"
    assert jobs["early"]["next_run_utc"] == "2024-03-11T12:00:00+00:00" and jobs["early"]["last_run_status"] is None
    assert sched.remove_job("early") is True and sched.remove_job("early") is False
    assert [j.name for j in store.all()] == ["daily"]


@pytest.mark.parametrize("cause", ["no key", "database away"])
def test_a_fire_that_cannot_build_its_provider_is_a_failed_run_on_record(engine, cause, caplog):
    """No key where the service runs: each fire is a failed etl_runs row saying why, not only a log line.
    The database away while the provider is built (its quota store): one error line, the scheduler goes on."""

    def no_key(_provider, _fallback=None):
        if cause == "database away":
            raise LoadError("database unavailable (building the quota store)", transient=True)
        raise ConfigError("ALPHA_VANTAGE_API_KEY is not set", name="ALPHA_VANTAGE_API_KEY")

    sched = MarketScheduler(JobStore(engine), pipeline_for=no_key, calendars=CALS, clock=ManualClock(utc("2024-03-11T15:00:00Z")))
    sched.schedule_market_hours_job("avjob", ["IBM"], 5, provider="alphavantage")
    stop = threading.Event()
    runner = threading.Thread(target=sched.run, args=(stop,), kwargs={"sync_seconds": 0.05})
    runner.start()
    try:
        wait_for(lambda: sched.scheduled_job_ids() == ["avjob"], "the job is picked up")
        sched.run_job("avjob", scheduled=False)
    finally:
        stop.set()
        runner.join(timeout=10)
    with engine.connect() as conn:
        runs = [tuple(r) for r in conn.execute(sa.text("SELECT job_name, provider, status, error_summary FROM etl_runs"))]
    if cause == "database away":
        assert runs == [] and "job avjob could not run: database unavailable" in caplog.text
        return
    assert runs == [("avjob", "alphavantage", "failed", "job could not run: ALPHA_VANTAGE_API_KEY is not set")]
    assert [j["last_run_status"] for j in sched.get_scheduled_jobs()] == ["failed"]


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("bad name", ["A"], 5), "name"),
        (("j", ["A B"], 5), "symbols"),
        (("j", ["A"], 0), "interval"),
        (("j", [], 5), "symbols"),
        (("bell\x07", ["A"], 5), "name"),  # control character
        (("esc\x1b[2J", ["A"], 5), "name"),  # a terminal escape
        (("\u202eboj", ["A"], 5), "name"),  # RIGHT-TO-LEFT OVERRIDE: shows as "job" reversed
        (("zero\u200bwidth", ["A"], 5), "name"),  # ZERO WIDTH SPACE
        (("j", ["A"], 0.5 / 60), "interval"),  # half a second: below the 1-second floor
        (("j", ["A"], 1e-9), "interval"),  # used to be accepted, then killed the service
        (("j", ["A"], 1441), "interval"),
        (("j", ["A"], float("inf")), "interval"),
    ],
)
def test_bad_job_definitions_are_rejected(sqlite_engine, args, name):
    sched = MarketScheduler(JobStore(sqlite_engine), pipeline_for=lambda _p, _f=None: None, calendars=CALS)
    with pytest.raises(ConfigError) as info:
        sched.schedule_market_hours_job(*args)
    assert info.value.name == name
    assert JobStore(sqlite_engine).load() == ([], [])  # nothing was written


def test_job_names_and_interval_bounds():
    assert check_job_name("  daily-IBM_1.5m  ") == "daily-IBM_1.5m" and check_job_name("zürich") == "zürich"
    job = JobDefinition("fast", "regular", "24/7", "demo", ("BTC-USD",), 1 / 60)  # one second: fast 24/7 jobs are fine
    assert job.interval_minutes * 60 == pytest.approx(1.0)
    assert JobDefinition("slow", "regular", "XNYS", "demo", ("IBM",), 1440).interval_minutes == 1440


def test_pre_market_job_on_an_exchange_without_one_says_so(sqlite_engine):
    sched = MarketScheduler(JobStore(sqlite_engine), pipeline_for=lambda _p, _f=None: None, calendars=CALS)
    with pytest.raises(SchedulingError, match="XWAR has no pre-market session"):
        sched.schedule_pre_market_job("early", ["PKO"], 15, exchange="XWAR")
    with pytest.raises(SchedulingError, match="XNSE has no after-hours session"):
        sched.schedule_after_hours_job("late", ["INFY"], 15, exchange="XNSE")


def test_job_scheduled_from_one_process_runs_in_another(tmp_path, pg_engine, pg_url):
    env = {**os.environ, "DATABASE_URL": pg_url}
    main = [sys.executable, str(ROOT / "main.py")]
    log_file = tmp_path / "runner.log"
    with open(log_file, "w") as log_out:
        runner = subprocess.Popen([*main, "--run-scheduled-jobs"], cwd=tmp_path, env=env, stderr=log_out, text=True)
    try:
        wait_for(lambda: "scheduler running" in log_file.read_text(), "the scheduler is up (and syncs an empty table)")
        sched = subprocess.run(
            [*main, "--schedule-market-job", "crypto", "--job-symbols", "BTC-USD", "--job-interval", "0.02",
             "--exchange", "24/7", "--interval", "1min"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sched.returncode == 0 and "scheduled new job 'crypto'" in sched.stdout
        deadline = time.monotonic() + 20
        runs = 0
        while time.monotonic() < deadline and runs < 2:
            with pg_engine.connect() as c:
                runs = c.exec_driver_sql(
                    "SELECT count(*) FROM etl_runs WHERE job_name = 'crypto' AND status = 'succeeded'"
                ).scalar()
            time.sleep(0.3)
        assert runs >= 2, "the running scheduler picked the new job up and ran it"
        with pg_engine.begin() as c:  # pause it (as the API does) so its last run is settled when we look
            c.exec_driver_sql("UPDATE scheduled_jobs SET paused = true, updated_at = now() WHERE name = 'crypto'")
        wait_for(lambda: "job crypto is paused" in log_file.read_text(), "the runner saw the pause")

        def settled():
            with pg_engine.connect() as c:
                return not c.exec_driver_sql("SELECT count(*) FROM etl_runs WHERE status = 'running'").scalar()

        wait_for(settled, "the last run finished")
        shown = subprocess.run(
            [*main, "--show-scheduled-jobs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        (job,) = json.loads(shown.stdout)
        assert job["name"] == "crypto" and job["last_run_status"] == "succeeded"
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
    err = log_file.read_text()
    assert runner.returncode == 0, err
    assert "SIGTERM received" in err and "scheduler stopped" in err
    with pg_engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM bars WHERE symbol = 'BTC-USD'").scalar() >= 100
        assert c.exec_driver_sql("SELECT count(*) FROM etl_runs WHERE status = 'running'").scalar() == 0


def test_pause_resume_and_remove_of_a_paused_job_resync_cleanly(running):
    sched, store = running, running.store
    now = sched.clock.now()
    sched.schedule_market_hours_job("j", ["AAPL"], 5)
    wait_for(lambda: sched.scheduled_job_ids() == ["j"], "the job is picked up")
    assert [j.name for j in sched.loaded_jobs()] == ["j"] and sched.next_run_time("j") is not None
    store.set_paused("j", True, now)
    sched.sync()
    assert sched.scheduled_job_ids() == [] and sched.next_run_time("j") is None
    store.set_paused("j", False, now)
    sched.sync()  # used to raise JobLookupError: the paused job was loaded but not scheduled
    assert sched.scheduled_job_ids() == ["j"]
    store.set_paused("j", True, now)
    sched.sync()
    sched.remove_job("j")
    sched.sync()
    assert sched.loaded_jobs() == [] and sched.scheduled_job_ids() == []


def test_next_run_time_is_the_session_trigger_s(running):
    sched = running
    sched.schedule_market_hours_job("daily", ["IBM"], 30, exchange="XNYS")
    nxt = wait_for(lambda: sched.next_run_time("daily"), "the job is scheduled")
    trig = sched.trigger_for(sched.store.all()[0])
    assert nxt.tzinfo is not None and nxt == trig.get_next_fire_time(None, nxt - timedelta(microseconds=1))
    assert sched.next_run_time("nosuch") is None


@pytest.mark.parametrize(
    ("running", "column", "value"),
    [
        # values the table's CHECK constraints let through (interval_minutes finite and > 0, session IN (...))
        ("sqlite", "interval_minutes", 1e-9),  # used to raise out of the sync loop and stop the service
        ("sqlite", "interval_minutes", 1e300),
        ("postgresql", "interval_minutes", 1e-9),  # > 0, so the CHECK lets it in; under the 1-second minimum
        ("sqlite", "exchange", "XNOPE"),
        ("sqlite", "bar_interval", "7min"),
        ("sqlite", "symbols", ""),
        ("sqlite", "name", "bad\u202ename"),
    ],
    indirect=["running"],
)
def test_a_job_row_edited_into_nonsense_is_skipped_and_the_service_goes_on(running, caplog, column, value):
    sched, engine = running, running.store.engine
    caplog.set_level(logging.ERROR, logger="scheduler.jobs")
    sched.schedule_market_hours_job("good", ["IBM"], 5)
    sched.schedule_market_hours_job("bad", ["MSFT"], 5)
    wait_for(lambda: sched.scheduled_job_ids() == ["bad", "good"], "both jobs are picked up")
    with engine.begin() as c:  # a hand edit, as a user with psql would make it
        c.execute(sa.text(f"UPDATE scheduled_jobs SET {column} = :v WHERE name = 'bad'"), {"v": value})
    wait_for(lambda: sched.scheduled_job_ids() == ["good"], "the bad row is dropped, the good job stays")
    time.sleep(0.3)  # several more syncs: still running, and the error is logged once, not every sync
    assert sched.running and sched.runner.is_alive()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "skipped" in r.getMessage()]
    assert len(errors) == 1, errors
    assert "fix it with the CLI, or delete its scheduled_jobs row" in errors[0]
    shown = sched.get_scheduled_jobs(include_invalid=True)
    assert [j["name"] for j in shown if "error" not in j] == ["good"]
    assert [j["error"] for j in shown if "error" in j] and [j["name"] for j in sched.get_scheduled_jobs()] == ["good"]
    # fixed by the CLI: back in the schedule
    with engine.begin() as c:
        c.execute(sa.text("DELETE FROM scheduled_jobs WHERE name <> 'good'"))
    sched.schedule_market_hours_job("bad", ["MSFT"], 5)
    wait_for(lambda: sched.scheduled_job_ids() == ["bad", "good"], "the fixed job is picked up again")
