"""main.py as a user runs it: a real subprocess, real HTTP, a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from support import ROOT, fixture, ok

KEY = "CLISECRETKEY9876"


def run(args, *, cwd, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


POLL = ["--continuous-poll", "--poll-interval", "0.005", "--poll-max-iterations", "2"]


def test_demo_run_with_embedded_defaults(tmp_path):
    r = run([*POLL, "--symbols", "IBM", "msft"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert results["total_iterations"] == 2 and results["successful_cycles"] == 2 and results["success_rate"] == 100.0
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'marketpoll.db'}")  # the default DATABASE_URL
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(DISTINCT symbol), count(*) FROM bars").one() == (2, 200)
        assert c.exec_driver_sql("SELECT count(*) FROM etl_runs WHERE status = 'succeeded'").scalar() == 2
    assert "cycle job=continuous_polling provider=demo" in r.stderr  # one INFO line per cycle


def test_demo_run_into_postgres(tmp_path, pg_engine, pg_url):
    r = run([*POLL, "--symbols", "IBM", "--interval", "60min", "--datatype", "csv"], cwd=tmp_path, env={"DATABASE_URL": pg_url})
    assert r.returncode == 0, r.stderr
    with pg_engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM bars WHERE interval = '60min'").scalar() == 100
        assert c.exec_driver_sql("SELECT count(*) FROM etl_runs").scalar() == 2


def test_partial_failure_exits_nonzero_and_names_the_symbol(tmp_path):
    r = run([*POLL, "--symbols", "IBM", "INVALIDX"], cwd=tmp_path)
    assert r.returncode == 1
    assert "symbol INVALIDX failed" in r.stderr and "invalid call or symbol" in r.stderr
    results = json.loads(r.stdout)
    assert results["failed_cycles"] == 2 and results["total_records_processed"] == 200


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--continuous-poll", "--provider", "nosuch", "--symbols", "IBM"], "'nosuch'"),
        (["--continuous-poll", "--interval", "7min", "--symbols", "IBM"], "'7min'"),
        (["--continuous-poll"], "--symbols"),
        (["--continuous-poll", "--symbols", "IB M"], "'IB M'"),
        (["--continuous-poll", "--symbols", "IBM", "--poll-interval", "five"], "'five'"),
        (["--continuous-poll", "--symbols", "IBM", "--poll-interval", "-1"], "'-1'"),
        (["--continuous-poll", "--symbols", "IBM", "--poll-max-iterations", "0"], "'0'"),
        (["--continuous-poll", "--symbols", "IBM", "--month", "2024-1"], "'2024-1'"),
        (["--symbols", "IBM"], "required"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    r = run(args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "marketpoll.db").exists()  # nothing was started


def test_bad_setting_exits_2(tmp_path):
    r = run([*POLL, "--symbols", "IBM"], cwd=tmp_path, env={"RETRY_MAX_ATTEMPTS": "lots"})
    assert r.returncode == 2 and "RETRY_MAX_ATTEMPTS" in r.stderr and "'lots'" in r.stderr


def test_alphavantage_without_key_exits_2(tmp_path):
    r = run([*POLL, "--provider", "alphavantage", "--symbols", "IBM"], cwd=tmp_path)
    assert r.returncode == 2 and "ALPHA_VANTAGE_API_KEY" in r.stderr


def test_help_documents_every_flag(tmp_path):
    r = run(["--help"], cwd=tmp_path)
    assert r.returncode == 0
    for flag in (
        "--continuous-poll",
        "--provider",
        "--symbols",
        "--interval",
        "--poll-interval",
        "--poll-max-iterations",
        "--database-url",
    ):
        assert flag in r.stdout


def test_unreachable_database_exits_3(tmp_path):
    r = run([*POLL, "--symbols", "IBM"], cwd=tmp_path, env={"DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/x"})
    assert r.returncode == 3 and "unavailable" in r.stderr


def test_alphavantage_through_base_url_never_shows_the_key(tmp_path, replay, sqlite_url):
    def route(_p, q):
        if q["symbol"] == "MSFT":
            return ok(fixture("alphavantage/intraday_1min_MSFT.json"))
        return ok(fixture("alphavantage/error_invalid_call.json"))

    srv = replay(route)
    # .env is read from the working directory; the environment would win over it
    (tmp_path / ".env").write_text(f"ALPHA_VANTAGE_API_KEY={KEY}\nALPHA_VANTAGE_BASE_URL={srv.url}\nLOG_LEVEL=DEBUG\n")
    r = run(
        [
            "--continuous-poll",
            "--poll-interval",
            "0.005",
            "--poll-max-iterations",
            "1",
            "--provider",
            "alphavantage",
            "--symbols",
            "MSFT",
            "BADONE",
            "--interval",
            "1min",
            "--database-url",
            sqlite_url,
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 1, r.stderr
    assert srv.requests and srv.requests[0][1]["apikey"] == KEY  # the key did reach the API
    assert KEY not in r.stdout and KEY not in r.stderr
    assert "GET /query?" in r.stderr or "apikey=***" in r.stderr or "BADONE" in r.stderr
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as c:
        dump = " ".join(str(v) for row in c.exec_driver_sql("SELECT * FROM etl_runs").all() for v in row)
        assert c.exec_driver_sql("SELECT count(*) FROM bars WHERE symbol = 'MSFT'").scalar() == 100
    assert "BADONE" in dump and KEY not in dump


def test_market_status_json(tmp_path):
    r = run(["--market-status", "--exchange", "XNYS", "--at", "2024-03-11T13:00:00Z"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["session"] == "pre" and status["is_pre_market"] and not status["is_market_open"]
    assert status["next_market_open"] == "2024-03-11T09:30:00-04:00"
    assert not (tmp_path / "marketpoll.db").exists()  # no database needed


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--market-status", "--exchange", "XNOPE"], "XNOPE"),
        (["--market-status", "--at", "2024-03-11T13:00:00"], "time zone"),
        (["--market-hours-poll", "--symbols", "IBM", "--exchange", "XNOPE"], "XNOPE"),
        (["--market-hours-poll", "--symbols", "IBM", "--sessions", "lunch"], "lunch"),
        (["--schedule-market-job", "daily", "--job-symbols", "AAPL"], "--job-interval"),
        (["--schedule-market-job", "daily", "--job-interval", "5"], "--job-symbols"),
        (["--remove-job", "nosuch"], "nosuch"),
    ],
)
def test_bad_session_and_job_input_exits_2(tmp_path, args, needle):
    r = run(args, cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_market_hours_poll_on_24_7_and_job_commands(tmp_path):
    r = run(["--market-hours-poll", "--exchange", "24/7", "--symbols", "ETH-USD", "--interval", "1min",
             "--poll-interval", "0.005", "--poll-max-iterations", "2"], cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["strategy"] == "market_hours"
    first = run(["--schedule-after-hours-job", "late", "--job-symbols", "AAPL", "--job-interval", "15"], cwd=tmp_path)
    again = run(["--schedule-after-hours-job", "late", "--job-symbols", "MSFT", "--job-interval", "30"], cwd=tmp_path)
    assert "scheduled new job 'late'" in first.stdout and "replaced existing job 'late'" in again.stdout
    (job,) = json.loads(run(["--show-scheduled-jobs"], cwd=tmp_path).stdout)
    assert (job["session"], job["symbols"], job["interval_minutes"]) == ("post", ["MSFT"], 30.0)
    assert run(["--remove-job", "late"], cwd=tmp_path).returncode == 0
    assert json.loads(run(["--show-scheduled-jobs"], cwd=tmp_path).stdout) == []
