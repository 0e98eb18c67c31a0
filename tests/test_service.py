"""The long-running service: health, status, metrics, job control, sd_notify, the systemd unit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from scheduler.api import job_health
from scheduler.calendar import Calendars, Session
from scheduler.jobs import SessionTrigger
from support import ROOT

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(pred, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_service_health_metrics_control_and_sd_notify(tmp_path, pg_engine, pg_url):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    port = free_port()
    token = "TOKEN-0123456789"
    env = {**os.environ, "DATABASE_URL": pg_url, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "4000000",
           "MARKETPOLL_API_TOKEN": token}  # fmt: skip
    schedule = ["--job-interval", "0.02", "--exchange", "24/7", "--interval", "1min"]
    subprocess.run(
        [*MAIN, "--schedule-market-job", "good", "--job-symbols", "BTC-USD", *schedule], cwd=tmp_path, env=env, check=True
    )
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

    try:
        wait_for(lambda: "READY=1" in drain())
        wait_for(lambda: drain().count("WATCHDOG=1") >= 2)  # the loop pings while alive
        wait_for(lambda: get(f"{base}/health")[0] == 200)
        health = json.loads(get(f"{base}/health")[1])
        assert health["jobs"][0]["name"] == "good" and health["jobs"][0]["healthy"]

        code, metrics = get(f"{base}/metrics")
        text = metrics.decode()
        assert code == 200 and 'marketpoll_cycles_total{job="good",provider="demo",status="succeeded"}' in text
        assert "marketpoll_request_seconds_bucket" in text and 'marketpoll_data_freshness_seconds{job="good"}' in text

        status = json.loads(get(f"{base}/status")[1])
        assert status["markets"]["24/7"]["is_market_open"] and status["jobs"][0]["last_run_status"] == "succeeded"
        assert "rate_budget" in status and "recent_errors" in status

        # control needs the token
        assert get(f"{base}/jobs/good/pause", method="POST")[0] == 401
        assert get(f"{base}/jobs/good/pause", token="wrong-token", method="POST")[0] == 401
        assert get(f"{base}/jobs/good/pause", token=token, method="POST")[0] == 200
        assert get(f"{base}/jobs/good/run", token=token, method="POST")[0] == 409  # paused
        assert get(f"{base}/jobs/nosuch/pause", token=token, method="POST")[0] == 404
        assert get(f"{base}/jobs/good/resume", token=token, method="POST")[0] == 200
        assert get(f"{base}/jobs/good/run", token=token, method="POST")[0] == 202

        # a failing job scheduled from another process turns health red within a few seconds
        subprocess.run(
            [*MAIN, "--schedule-market-job", "bad", "--job-symbols", "INVALID-X", *schedule], cwd=tmp_path, env=env, check=True
        )
        wait_for(lambda: get(f"{base}/health")[0] == 503)
        jobs = {j["name"]: j for j in json.loads(get(f"{base}/health")[1])["jobs"]}
        assert jobs["good"]["healthy"] and not jobs["bad"]["healthy"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "STOPPING=1" in drain()
    assert token not in err


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
