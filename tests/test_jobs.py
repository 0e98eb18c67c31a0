"""Named jobs: the session trigger (pure), the job table, and a scheduler in another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from clock import ManualClock
from db.jobs import JobStore
from errors import ConfigError
from scheduler.calendar import Calendars, Session
from scheduler.jobs import MarketScheduler, SessionTrigger
from support import ROOT

CALS = Calendars()


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
    sched = MarketScheduler(store, pipeline_for=lambda _p: None, calendars=CALS, clock=ManualClock(utc("2024-03-11T12:00:00Z")))
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


@pytest.mark.parametrize(
    ("args", "name"),
    [(("bad name", ["A"], 5), "name"), (("j", ["A B"], 5), "symbols"), (("j", ["A"], 0), "interval"), (("j", [], 5), "symbols")],
)
def test_bad_job_definitions_are_rejected(sqlite_engine, args, name):
    sched = MarketScheduler(JobStore(sqlite_engine), pipeline_for=lambda _p: None, calendars=CALS)
    with pytest.raises(ConfigError) as info:
        sched.schedule_market_hours_job(*args)
    assert info.value.name == name


def test_job_scheduled_from_one_process_runs_in_another(tmp_path, pg_engine, pg_url):
    env = {**os.environ, "DATABASE_URL": pg_url}
    main = [sys.executable, str(ROOT / "main.py")]
    runner = subprocess.Popen([*main, "--run-scheduled-jobs"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the scheduler is up and has synced an empty table
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
        shown = subprocess.run(
            [*main, "--show-scheduled-jobs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        (job,) = json.loads(shown.stdout)
        assert job["name"] == "crypto" and job["last_run_status"] == "succeeded"
    finally:
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=30)
    assert runner.returncode == 0, err
    assert "SIGTERM received" in err and "scheduler stopped" in err
    with pg_engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM bars WHERE symbol = 'BTC-USD'").scalar() >= 100
        assert c.exec_driver_sql("SELECT count(*) FROM etl_runs WHERE status = 'running'").scalar() == 0


def test_pause_resume_and_remove_of_a_paused_job_resync_cleanly(sqlite_engine):
    import threading as _t

    store = JobStore(sqlite_engine)
    clock = ManualClock(utc("2024-03-11T15:00:00Z"))
    sched = MarketScheduler(store, pipeline_for=lambda _p: None, calendars=CALS, clock=clock)
    sched.schedule_market_hours_job("j", ["AAPL"], 5)
    stop = _t.Event()
    runner = _t.Thread(target=sched.run, args=(stop,), kwargs={"sync_seconds": 0.05})
    runner.start()
    try:
        time.sleep(0.3)
        assert [j.name for j in sched.loaded_jobs()] == ["j"] and sched._scheduler.get_job("j") is not None
        store.set_paused("j", True, clock.now())
        sched.sync()
        assert sched._scheduler.get_job("j") is None
        store.set_paused("j", False, clock.now())
        sched.sync()  # used to raise JobLookupError: the paused job was loaded but not scheduled
        assert sched._scheduler.get_job("j") is not None
        store.set_paused("j", True, clock.now())
        sched.sync()
        sched.remove_job("j")
        sched.sync()
        assert sched.loaded_jobs() == []
    finally:
        stop.set()
        runner.join(timeout=10)
