"""main.py as a user runs it: a real subprocess, real HTTP, a real database."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from app import App
from etl.redact import Redactor
from settings import Settings
from support import ROOT, fixture, ok

KEY = "CLISECRETKEY9876"


def run(args, *, cwd, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL", "STREAM_STATE"))}
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
        (["--continuous-poll", "--symbols", "t\u017fla"], "'t\u017fla'"),  # 'ſ' upper-cases to 'S': never TSLA
        (["--continuous-poll", "--symbols", "IBM", "--poll-interval", "five"], "'five'"),
        (["--continuous-poll", "--symbols", "IBM", "--poll-interval", "-1"], "'-1'"),
        (["--continuous-poll", "--symbols", "IBM", "--poll-max-iterations", "0"], "'0'"),
        (["--continuous-poll", "--symbols", "IBM", "--month", "2024-1"], "'2024-1'"),
        (["--symbols", "IBM"], "required"),
        (["--continous-poll", "--symbols", "IBM"], "unrecognized arguments: --continous-poll"),  # not "a mode is required"
        (["--adaptive-poll", "--symbols", "IBM", "--min-poll-interval", "5", "--max-poll-interval", "1"], "--max-poll-interval"),
        (["--continuous-poll", "--symbols", "IBM", "--shutdown-timeout", "0"], "more than 0"),
        (["--market-hours-poll", "--exchange", "XWAR", "--sessions", "pre", "--symbols", "PKO"], "XWAR has no pre-market"),
        (["--continuous-poll", "--symbols", "IBM", "--database-url", "mysql://u@h/db"], "supports postgresql:// and sqlite"),
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


def one_line_exit_2(r: subprocess.CompletedProcess, needle: str) -> str:
    """The run refused its input: status 2 and exactly one printable stderr line holding ``needle``."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, f"exit {r.returncode}:\n{r.stderr[-3000:]}"
    assert needle in lines[0] and lines[0].startswith("main.py: error: "), lines[0]
    assert lines[0].isprintable(), repr(lines[0])  # no raw escape or bidi character reaches the terminal
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        # these used to end in a traceback
        (["--continuous-poll", "--symbols", "IBM", "--rate-limit", "0/second"], "'0/second'"),
        (["--continuous-poll", "--symbols", "IBM", "--rate-limit", "5/hour"], "'5/hour'"),
        (["--continuous-poll", "--symbols", "IBM", "--poll-interval", "1e308"], "'1e308'"),
        (["--market-status", "--at", "9999-12-31T23:59:59Z"], "'9999-12-31T23:59:59Z'"),
        (["--market-status", "--at", "0001-01-01T00:00:00+01:00"], "from 1900 to 2200"),
        # this one silently turned the rate budget off
        (["--continuous-poll", "--symbols", "IBM", "--rate-limit", ""], "--rate-limit: empty"),
        # these fell through to running the scheduler (an empty name is falsy)
        (["--schedule-market-job", "", "--job-symbols", "AAPL", "--job-interval", "5"], "job name is empty"),
        (["--schedule-pre-market-job", " ", "--job-symbols", "AAPL", "--job-interval", "5"], "job name is empty"),
        (["--remove-job", ""], "job name is empty"),
        # control and bidi characters in names
        (["--schedule-market-job", "a\x1b[2Jb", "--job-symbols", "AAPL", "--job-interval", "5"], "U+001B"),
        (["--schedule-market-job", "\u202edaily", "--job-symbols", "AAPL", "--job-interval", "5"], "U+202E"),
        (["--remove-job", "x\u2066y"], "U+2066"),
        # a near-zero interval used to be accepted, then kill the running service
        (["--schedule-market-job", "fast", "--job-symbols", "AAPL", "--job-interval", "0.001"], "'0.001'"),
        (["--schedule-market-job", "slow", "--job-symbols", "AAPL", "--job-interval", "1e308"], "'1e308'"),
        (["--continuous-poll", "--symbols", "IBM", "--poll-interval", "1e-9"], "'1e-9'"),
    ],
)
def test_everyday_mistakes_get_one_line_and_exit_2(tmp_path, args, needle):
    r = run(args, cwd=tmp_path, timeout=20)  # a fall-through to the scheduler would hang: it times out instead
    one_line_exit_2(r, needle)
    assert not (tmp_path / "marketpoll.db").exists()  # nothing was started


@pytest.mark.parametrize(("var", "value"), [("HTTP_READ_TIMEOUT_SECONDS", "nan"), ("RETRY_INITIAL_DELAY_SECONDS", "inf")])
def test_nan_or_inf_setting_exits_2_with_one_line(tmp_path, var, value):
    one_line_exit_2(run([*POLL, "--symbols", "IBM"], cwd=tmp_path, env={var: value}, timeout=30), var)


def test_unknown_exchange_lists_the_valid_codes_in_one_line(tmp_path):
    line = one_line_exit_2(run(["--market-status", "--exchange", "XNOPE"], cwd=tmp_path), "'XNOPE'")
    assert all(code in line for code in ("XNYS", "XNAS", "XWAR", "XNSE", "24/7", "CRYPTO")) and "get_calendar_names" in line


def test_continuous_polling_refuses_an_unknown_exchange_too(tmp_path):
    one_line_exit_2(run([*POLL, "--symbols", "IBM", "--exchange", "XXXX"], cwd=tmp_path), "unknown exchange 'XXXX'")
    assert not (tmp_path / "marketpoll.db").exists()


@pytest.mark.parametrize(
    ("var", "url", "shown"),
    [
        ("ALPHA_VANTAGE_BASE_URL", "not a url", True),
        ("ALPHA_VANTAGE_BASE_URL", "http://", True),
        ("ALPHA_VANTAGE_BASE_URL", "ftp://example.com/query", True),
        ("ALPHA_VANTAGE_BASE_URL", "127.0.0.1:5998/query", True),
        ("BINANCE_BASE_URL", "http://user:hunter2@host:99999", False),  # a password is never echoed
    ],
)
def test_a_malformed_base_url_is_one_line_at_start(tmp_path, var, url, shown):
    provider = "alphavantage" if var.startswith("ALPHA") else "binance"
    symbol = ["--symbols", "BTCUSDT", "--interval", "1min"] if provider == "binance" else ["--symbols", "IBM"]
    r = run([*POLL, "--provider", provider, *symbol], cwd=tmp_path, env={var: url, "ALPHA_VANTAGE_API_KEY": KEY})
    line = one_line_exit_2(r, f"{var} must be an http:// or https:// URL with a host")
    assert (repr(url) in line) is shown and "hunter2" not in r.stderr
    assert not (tmp_path / "marketpoll.db").exists()  # refused before any work


def test_scheduling_a_job_without_its_key_here_warns(tmp_path):
    r = run(["--schedule-market-job", "avjob", "--provider", "alphavantage", "--job-symbols", "IBM", "--job-interval", "5"],
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and "scheduled new job 'avjob'" in r.stdout, r.stderr
    warning = [line for line in r.stderr.splitlines() if line.startswith("main.py: warning:")]
    assert len(warning) == 1 and "ALPHA_VANTAGE_API_KEY is not set" in warning[0] and "etl_runs" in warning[0]


def test_pre_market_job_on_an_exchange_without_one_says_so(tmp_path):
    r = run(["--schedule-pre-market-job", "early", "--job-symbols", "PKO", "--job-interval", "15", "--exchange", "XWAR"],
            cwd=tmp_path)  # fmt: skip
    one_line_exit_2(r, "XWAR has no pre-market session")
    assert not (tmp_path / "marketpoll.db").exists()  # checked before any database is touched


@pytest.mark.parametrize("form", ["postgresql://", "postgresql+psycopg2://"])
def test_database_url_in_either_postgresql_form(tmp_path, pg_engine, pg_url, form):
    url = form + pg_url.split("://", 1)[1]  # the fixture gives the postgresql+psycopg2:// form
    r = run([*POLL, "--symbols", "IBM"], cwd=tmp_path, env={"DATABASE_URL": url})
    assert r.returncode == 0, r.stderr
    with pg_engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM etl_runs WHERE status = 'succeeded'").scalar() == 2
    assert not (tmp_path / "marketpoll.db").exists()


def test_service_logs_the_absolute_sqlite_path(tmp_path):
    (tmp_path / "work").mkdir()
    log_file = tmp_path / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL"))}
    with open(log_file, "w") as out:
        service = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--run-scheduled-jobs"], cwd=tmp_path / "work",
                                   env={**env, "DATABASE_URL": "sqlite:///jobs.db"}, stderr=out)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "scheduler running" not in log_file.read_text():
            time.sleep(0.1)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
    text = log_file.read_text()
    assert f"named jobs from database sqlite:///{tmp_path / 'work' / 'jobs.db'}" in text, text


def test_install_service_dry_run_names_the_database_and_warns_when_it_differs(tmp_path):
    url = "postgresql://mp:PW-SECRET-4321@db.internal:5432/prices"
    r = run(["--install-service", "--dry-run"], cwd=tmp_path, env={"DATABASE_URL": url})
    assert r.returncode == 0, r.stderr
    assert "PW-SECRET-4321" not in r.stdout + r.stderr  # never a password in the unit or a message
    (db_line,) = [line for line in r.stdout.splitlines() if line.startswith("# database: ")]
    assert "mp:***@db.internal" not in db_line  # the unit does not get this shell's database ...
    assert "the service will use the database" in r.stderr and "warning: this shell uses the database" in r.stderr
    assert "postgresql://mp:***@db.internal:5432/prices" in r.stderr  # ... and says so


def make_app(tmp_path, env: dict[str, str], cwd) -> App:
    settings = Settings.from_env(env, cwd=cwd)
    return App(settings, Redactor(), threading.Event(), checkout=tmp_path / "checkout")


@pytest.mark.parametrize(
    ("checkout_env", "shell_env", "cwd", "warns"),
    [
        # the default SQLite file: the same only when the CLI runs in the checkout
        ("", {}, "checkout", False),
        ("", {}, "home", True),
        # a DATABASE_URL that only lives in the shell is not the service's
        ("", {"DATABASE_URL": "postgresql://u@h/db"}, "checkout", True),
        ("DATABASE_URL=postgresql+psycopg2://u:pw@h:5432/db\n", {"DATABASE_URL": "postgresql://u:pw@h/db"}, "home", False),
        ("DATABASE_URL=sqlite:///data/m.db\n", {"DATABASE_URL": "sqlite:///../checkout/data/m.db"}, "home", False),
    ],
)
def test_install_service_compares_the_unit_s_database_with_this_shell_s(tmp_path, capsys, checkout_env, shell_env, cwd, warns):
    (tmp_path / "checkout").mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "checkout" / ".env").write_text(checkout_env)
    app = make_app(tmp_path, shell_env, tmp_path / cwd)
    args = argparse.Namespace(shutdown_timeout=30.0, api_port=None, api_host="127.0.0.1", user=True, dry_run=True,
                              rate_limit=None)  # fmt: skip
    assert app.install_service(args) == 0
    out, err = capsys.readouterr()
    expected = Settings.from_env({"DATABASE_URL": checkout_env.partition("=")[2].strip()}, cwd=tmp_path / "checkout")
    assert f"# database: {sa.engine.make_url(expected.database_url).render_as_string(hide_password=True)}" in out
    assert ("warning: this shell uses the database" in err) is warns, err
    # the unit's PrivateTmp=yes hides this shell's /tmp from the service: a SQLite file there is another one
    in_tmp = expected.database_url.startswith("sqlite:////tmp/") or expected.database_url.startswith("sqlite:////var/tmp/")
    assert ("PrivateTmp" in err) is in_tmp, err
    assert "pw@" not in out + err


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
    # LOG_LEVEL=DEBUG: one line per request from etl.http, "GET <redacted url> -> <status> in <ms> ms", key masked
    requests_logged = re.findall(r"DEBUG etl\.http: GET (\S+) -> (\d{3}) in \d+ ms", r.stderr)
    assert sorted(re.search(r"symbol=(\w+)", u).group(1) for u, _ in requests_logged) == ["BADONE", "MSFT"], r.stderr
    assert all(u.startswith(srv.url + "?") and "apikey=***" in u and status == "200" for u, status in requests_logged)
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
    assert first.stdout.rstrip().endswith(f"in sqlite:///{tmp_path / 'marketpoll.db'}")  # where the service must look
    (job,) = json.loads(run(["--show-scheduled-jobs"], cwd=tmp_path).stdout)
    assert (job["session"], job["symbols"], job["interval_minutes"]) == ("post", ["MSFT"], 30.0)
    assert run(["--remove-job", "late"], cwd=tmp_path).returncode == 0
    assert json.loads(run(["--show-scheduled-jobs"], cwd=tmp_path).stdout) == []
