"""The long-running service: health, status, metrics, job control, sd_notify, the systemd unit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.server import ApiServer
from api.status import SchedulerStatus, job_health
from db.jobs import JobStore
from db.tables import etl_runs
from errors import ConfigError
from scheduler.calendar import Calendars, Session
from scheduler.jobs import MarketScheduler, SessionTrigger
from support import ROOT, wait_for

MAIN = [sys.executable, str(ROOT / "main.py")]


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


@pytest.mark.parametrize(
    ("now", "last_success", "healthy"),
    [
        ("2024-03-11T15:00:00Z", "2024-03-11T14:55:00Z", True),  # ran at the last fire
        ("2024-03-11T15:00:00Z", "2024-03-11T14:45:00Z", False),  # missed two fires
        ("2024-03-11T15:00:00Z", None, False),  # never succeeded, fires were due
        ("2024-03-11T13:31:00Z", None, True),  # first fire at 13:30 is too recent to judge
        ("2024-03-09T15:00:00Z", "2024-03-08T20:55:00Z", True),  # Saturday: nothing due
        ("2024-03-11T20:10:00Z", "2024-03-11T20:00:00Z", True),  # after the close
    ],
)
def test_job_health_is_judged_against_the_session(now, last_success, healthy):
    trig = SessionTrigger(Calendars().get("XNYS"), Session.REGULAR, timedelta(minutes=5))
    ok, lag = job_health(trig, timedelta(minutes=5), utc(last_success) if last_success else None, utc(now))
    assert ok is healthy
    assert lag == ((utc(now) - utc(last_success)).total_seconds() if last_success else None)


def test_fires_before_a_job_was_scheduled_or_resumed_are_not_held_against_it():
    trig = SessionTrigger(Calendars().get("XNYS"), Session.REGULAR, timedelta(minutes=60))
    # a 60-minute job scheduled mid-session at 15:00Z: the 14:30Z fire happened before it existed
    assert job_health(trig, timedelta(minutes=60), None, utc("2024-03-11T15:29:00Z"), since=utc("2024-03-11T15:00:00Z"))[0]
    assert not job_health(trig, timedelta(minutes=60), None, utc("2024-03-11T15:29:00Z"))[0]
    # its own first fire (15:30Z) is judged once it had time to run
    assert not job_health(trig, timedelta(minutes=60), None, utc("2024-03-11T16:10:00Z"), since=utc("2024-03-11T15:00:00Z"))[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "TOKEN-0123456789"


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str, token: str | None = None, method: str = "GET") -> tuple[int, dict]:
    code, body = get(url, token, method)
    return code, json.loads(body)


def metrics_of(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(sample name, its labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def job_labels(samples: dict, name: str) -> set[str]:
    return {dict(labels)["job"] for (n, labels) in samples if n == name}


def test_service_health_metrics_control_and_sd_notify(tmp_path, pg_engine, pg_url):
    # a real process on the real clock: a 24/7 market, so that the job runs whatever the day
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": pg_url, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "4000000",
           "MARKETPOLL_API_TOKEN": TOKEN, "DEMO_RATE_LIMIT": "600/minute 100000/day"}  # fmt: skip
    schedule = ["--job-interval", "0.05", "--exchange", "24/7", "--interval", "1min"]  # every 3 s
    subprocess.run(
        [*MAIN, "--schedule-market-job", "good", "--job-symbols", "BTC-USD", *schedule], cwd=tmp_path, env=env, check=True
    )
    launched = time.time()
    proc = subprocess.Popen([*MAIN, "--run-scheduled-jobs", "--api-port", str(port)], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    messages: list[str] = []

    def drain():
        try:
            while True:
                messages.extend(notify.recv(4096).decode().splitlines())
        except TimeoutError:
            pass
        return messages

    def sql(query: str):
        with pg_engine.connect() as c:
            return c.exec_driver_sql(query).scalar()

    def paused(name: str) -> bool:
        return sql(f"SELECT paused FROM scheduled_jobs WHERE name = '{name}'")

    def good_runs(status: str | None = None) -> int:
        return sql("SELECT count(*) FROM etl_runs WHERE job_name = 'good'" + (f" AND status = '{status}'" if status else ""))

    def scrape() -> dict:
        code, body = get(f"{base}/metrics")
        assert code == 200
        return metrics_of(body.decode())

    try:
        wait_for(lambda: "READY=1" in drain())
        wait_for(lambda: drain().count("WATCHDOG=1") >= 2)  # the loop pings while alive

        # /metrics after the first cycle: its counters, under the job's and provider's labels
        wait_for(lambda: (metric(scrape(), "marketpoll_rows_loaded_total", job="good") or 0) >= 100)
        m = scrape()
        succeeded = metric(m, "marketpoll_cycles_total", job="good", provider="demo", status="succeeded")
        assert succeeded >= 1 and job_labels(m, "marketpoll_cycles_total") == {"good"}
        assert metric(m, "marketpoll_rows_rejected_total", job="good") == 0
        assert metric(m, "marketpoll_request_seconds_count", provider="demo") >= succeeded
        assert metric(m, "marketpoll_request_seconds_sum", provider="demo") > 0
        assert launched <= metric(m, "marketpoll_last_success_timestamp_seconds", job="good") <= time.time()
        # the newest complete 1-minute bar started at least a minute ago
        assert 60 <= metric(m, "marketpoll_data_freshness_seconds", job="good") < 600
        loaded = metric(m, "marketpoll_rows_loaded_total", job="good")
        assert loaded <= sql("SELECT count(*) FROM bars WHERE symbol = 'BTC-USD'")  # counted after the commit

        code, health = get_json(f"{base}/health")
        assert code == 200 and health["status"] == "ok" and health["scheduler_running"] is True
        (only,) = health["jobs"]
        assert only["name"] == "good" and only["healthy"] is True and 0 <= only["lag_seconds"] < 60

        def counted() -> bool:  # (a cycle after midnight UTC counts on the new day's quota)
            return get_json(f"{base}/status")[1]["rate_budget"]["demo"]["remaining_today"] < 100000

        wait_for(counted)  # every request counted against the day's quota
        code, status = get_json(f"{base}/status")
        now = utc(status["now"])
        assert code == 200 and status["scheduler_running"] is True and launched - 5 <= now.timestamp() <= time.time() + 5
        (job,) = status["jobs"]
        expected = {"name": "good", "session": "regular", "exchange": "24/7", "provider": "demo", "symbols": ["BTC-USD"],
                    "interval_minutes": 0.05, "bar_interval": "1min", "paused": False}  # fmt: skip
        assert {k: job[k] for k in expected} == expected
        assert now <= utc(job["next_run_utc"]) <= now + timedelta(seconds=3 + 10)  # within one interval (+ slack)
        assert job["next_run_exchange"] == job["next_run_utc"] and job["next_run_utc"].endswith("+00:00")  # 24/7 keeps UTC
        assert job["last_run_status"] in ("running", "succeeded") and utc(job["last_run_started_at"]) <= now
        market = {"exchange": "24/7", "at": status["now"], "session": "regular", "is_market_open": True, "is_pre_market": False,
                  "is_after_hours": False, "next_market_open": None, "next_market_close": None, "timezone": "UTC"}  # fmt: skip
        assert list(status["markets"]) == ["24/7"] and {k: status["markets"]["24/7"][k] for k in market} == market
        budget = status["rate_budget"]["demo"]
        assert budget["rates"] == ["600/minute", "100000/day"] and budget["paused_until"] is None
        assert status["recent_errors"] == []

        # control needs the token; a refused call changes nothing
        assert get(f"{base}/jobs/good/pause", method="POST")[0] == 401
        assert get(f"{base}/jobs/good/pause", token="wrong-token", method="POST")[0] == 401
        assert paused("good") is False
        assert get_json(f"{base}/jobs/good/pause", token=TOKEN, method="POST") == (
            200, {"job": "good", "action": "pause", "result": "paused"})  # fmt: skip
        assert paused("good") is True
        (job,) = get_json(f"{base}/status")[1]["jobs"]
        assert job["paused"] is True and job["next_run_utc"] is None
        assert get_json(f"{base}/health")[1]["jobs"] == [{"name": "good", "paused": True, "healthy": True}]
        time.sleep(0.5)  # a fire already handed to the executor may still start
        runs = good_runs()
        time.sleep(4)  # more than an interval: a paused job starts no cycle
        assert good_runs() == runs
        assert get(f"{base}/jobs/good/run", token=TOKEN, method="POST")[0] == 409  # paused
        assert get(f"{base}/jobs/nosuch/pause", token=TOKEN, method="POST")[0] == 404
        assert get_json(f"{base}/jobs/good/resume", token=TOKEN, method="POST") == (
            200, {"job": "good", "action": "resume", "result": "resumed"})  # fmt: skip
        assert paused("good") is False
        succeeded = good_runs("succeeded")
        wait_for(lambda: good_runs("succeeded") > succeeded)  # cycles again
        assert get_json(f"{base}/jobs/good/run", token=TOKEN, method="POST") == (
            202, {"job": "good", "action": "run", "result": "started"})  # fmt: skip

        # a failing job scheduled from another process turns health red within a few seconds
        subprocess.run(
            [*MAIN, "--schedule-market-job", "bad", "--job-symbols", "INVALID-X", *schedule], cwd=tmp_path, env=env, check=True
        )
        wait_for(lambda: sql("SELECT count(*) FROM etl_runs WHERE job_name = 'bad' AND status = 'failed'"))
        wait_for(lambda: get(f"{base}/health")[0] == 503)
        code, health = get_json(f"{base}/health")
        jobs = {j["name"]: j for j in health["jobs"]}
        assert health["status"] == "unhealthy" and health["scheduler_running"] is True
        assert jobs["good"]["healthy"] is True and jobs["bad"] == {"name": "bad", "healthy": False, "lag_seconds": None}
        assert metric(scrape(), "marketpoll_cycles_total", job="bad", provider="demo", status="failed") >= 1
        errors = get_json(f"{base}/status")[1]["recent_errors"]
        assert errors and {(e["job_name"], e["status"]) for e in errors} == {("bad", "failed")}
        assert all("INVALID-X" in e["error_summary"] for e in errors)
        # pausing the failing job makes the service healthy again
        assert get(f"{base}/jobs/bad/pause", token=TOKEN, method="POST")[0] == 200
        assert get(f"{base}/health")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "STOPPING=1" in drain()
    assert TOKEN not in err


def _no_pipeline(provider: str, fallback: str | None = None):
    raise ConfigError(f"no pipeline for {provider} in this test")  # run_job logs it; nothing runs


def _ran(engine, job: str, started: str, status: str, error: str | None = None) -> int:
    with engine.begin() as c:
        return c.execute(etl_runs.insert().values(job_name=job, provider="demo", interval="5min", started_at=utc(started),
                                                  finished_at=utc(started) + timedelta(seconds=5), status=status,
                                                  error_summary=error).returning(etl_runs.c.id)).scalar_one()  # fmt: skip


def test_status_and_health_at_a_fixed_instant(sqlite_engine, manual_clock):
    # the API in-process on a manual clock (Monday 2024-03-11 15:00Z = 11:00 EDT): exact answers
    sched = MarketScheduler(JobStore(sqlite_engine), _no_pipeline, calendars=Calendars(), clock=manual_clock)
    sched.schedule_market_hours_job("open", ["IBM", "MSFT"], 5)
    sched.schedule_pre_market_job("early", ["SPY"], 15)
    _ran(sqlite_engine, "open", "2024-03-11T14:55:00Z", "succeeded")
    failed_id = _ran(sqlite_engine, "early", "2024-03-11T12:00:00Z", "failed", "SPY: boom")
    api = ApiServer(SchedulerStatus(sched, clock=manual_clock, budgets=lambda: {"demo": {"remaining_today": 7}}),
                    engine=sqlite_engine, clock=manual_clock, token=TOKEN)  # fmt: skip
    base = f"http://127.0.0.1:{api.port}"
    stop = threading.Event()
    runner = threading.Thread(target=sched.run, args=(stop,), kwargs={"sync_seconds": 0.05})
    try:
        assert get_json(f"{base}/health") == (503, {"status": "unhealthy", "scheduler_running": False, "jobs": []})
        runner.start()
        wait_for(lambda: sched.running and len(sched.loaded_jobs()) == 2)

        code, status = get_json(f"{base}/status")
        assert code == 200 and status["now"] == "2024-03-11T15:00:00+00:00"
        early, opening = status["jobs"]  # by name
        # open's fires are 13:30Z + k x 5 min, so one is due right now; early's pre-market is over for today
        want_open = {"name": "open", "session": "regular", "exchange": "XNYS", "symbols": ["IBM", "MSFT"],
                     "interval_minutes": 5.0, "paused": False, "next_run_utc": "2024-03-11T15:00:00+00:00",
                     "next_run_exchange": "2024-03-11T11:00:00-04:00", "last_run_status": "succeeded",
                     "last_run_started_at": "2024-03-11T14:55:00+00:00"}  # fmt: skip
        want_early = {"name": "early", "session": "pre", "exchange": "XNYS", "symbols": ["SPY"], "interval_minutes": 15.0,
                      "next_run_utc": "2024-03-12T08:00:00+00:00",
                      "next_run_exchange": "2024-03-12T04:00:00-04:00", "last_run_status": "failed"}  # fmt: skip
        assert {k: opening[k] for k in want_open} == want_open and {k: early[k] for k in want_early} == want_early
        market = {"exchange": "XNYS", "at": "2024-03-11T15:00:00+00:00", "session": "regular", "is_market_open": True,
                  "is_pre_market": False, "is_after_hours": False, "next_market_open": "2024-03-12T09:30:00-04:00",
                  "next_market_close": "2024-03-11T16:00:00-04:00", "timezone": "America/New_York"}  # fmt: skip
        assert list(status["markets"]) == ["XNYS"] and {k: status["markets"]["XNYS"][k] for k in market} == market
        assert status["rate_budget"] == {"demo": {"remaining_today": 7}}
        assert [(e["id"], e["job_name"], e["status"], e["error_summary"]) for e in status["recent_errors"]] == [
            (failed_id, "early", "failed", "SPY: boom")]  # fmt: skip

        # open last succeeded at 14:55, its 15:00 fire is too recent to judge; nothing was due for early
        healthy = {"status": "ok", "scheduler_running": True,
                   "jobs": [{"name": "early", "healthy": True, "lag_seconds": None},
                            {"name": "open", "healthy": True, "lag_seconds": 300.0}]}  # fmt: skip
        assert get_json(f"{base}/health") == (200, healthy)
        manual_clock.set(utc("2024-03-11T15:10:00Z"))  # the 15:00 fire was due, and nothing succeeded since
        code, health = get_json(f"{base}/health")
        assert code == 503 and health["status"] == "unhealthy"
        assert health["jobs"][1] == {"name": "open", "healthy": False, "lag_seconds": 900.0}
        _ran(sqlite_engine, "open", "2024-03-11T15:05:00Z", "succeeded")
        assert get_json(f"{base}/health")[0] == 200

        # a paused job is not judged; resumed, it is again
        manual_clock.set(utc("2024-03-11T15:30:00Z"))  # the 15:20 and 15:25 fires did not succeed
        assert get_json(f"{base}/health")[0] == 503
        assert get_json(f"{base}/jobs/open/pause", token=TOKEN, method="POST")[0] == 200
        assert JobStore(sqlite_engine).all()[1].paused is True
        assert get_json(f"{base}/health") == (200, {**healthy, "jobs": [healthy["jobs"][0], {"name": "open", "paused": True,
                                                                                              "healthy": True}]})  # fmt: skip
        assert get_json(f"{base}/status")[1]["jobs"][1]["next_run_utc"] is None
        assert get_json(f"{base}/jobs/open/resume", token=TOKEN, method="POST")[0] == 200
        assert JobStore(sqlite_engine).all()[1].paused is False
        # fires missed while it was paused are not held against it; the first fire after resuming is
        assert get_json(f"{base}/health")[0] == 200
        manual_clock.set(utc("2024-03-11T15:40:00Z"))  # the 15:35 fire was due, nothing succeeded since
        assert get_json(f"{base}/health")[0] == 503
    finally:
        stop.set()
        runner.join(timeout=30)
        try:
            assert get_json(f"{base}/health")[1]["scheduler_running"] is False  # stopped: unhealthy again
        finally:
            api.close()


def test_no_control_routes_without_a_token(tmp_path, sqlite_url):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MARKETPOLL_API_TOKEN"} | {"DATABASE_URL": sqlite_url}
    proc = subprocess.Popen(
        [*MAIN, "--run-scheduled-jobs", "--api-port", str(port)], cwd=tmp_path, env=env, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: _reachable(port))
        assert get(f"http://127.0.0.1:{port}/jobs/any/pause", token="x", method="POST")[0] == 404
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200  # running, no jobs
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def _reachable(port: int) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}/health")[0] in (200, 503)
    except OSError:
        return False


def test_installed_unit_verifies(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    r = subprocess.run([*MAIN, "--install-service", "--user", "--shutdown-timeout", "20"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    unit = tmp_path / ".config" / "systemd" / "user" / "marketpoll.service"
    text = unit.read_text()
    expected = ["Type=notify", "WatchdogSec=60", "Restart=on-failure", "KillSignal=SIGTERM", "TimeoutStopSec=35",
                f"ExecStart={sys.executable} {ROOT / 'main.py'} --run-scheduled-jobs",
                f"EnvironmentFile=-{ROOT / '.env'}"]  # fmt: skip
    for line in expected:
        assert line in text
    assert "systemctl --user enable --now marketpoll" in r.stdout
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here; the unit's text was checked above")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and "marketpoll.service" not in verify.stderr, verify.stderr
