"""The dashboard (``GET /``) in a real headless browser, against a real marketpoll process.

A real ``main.py --run-scheduled-jobs --api-port`` runs one job every second on the 24/7
market, fetching from a loopback server that answers like Alpha Vantage with bars the test
controls, into the scratch PostgreSQL. Debian's ``chromium`` (through ``chromedriver`` and
selenium) opens the page and must show the close the database holds; then the test adds a
bar upstream, a later cycle loads it, and the page must show it through ``/events`` without
a reload.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``apt-get install chromium chromium-driver``;
``.ci/run`` installs them). Without them the test is skipped, unless ``CI`` is set: then it
fails. ``MARKETPOLL_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also writes the page's screenshot
there (the README's picture comes from such a run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from api.dashboard import SPARK_POINTS, snapshot
from db.jobs import JobDefinition, JobStore
from db.tables import bars
from scheduler.calendar import Calendars
from support import ROOT, ok
from support import wait_for as _wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MAIN = [sys.executable, str(ROOT / "main.py")]
NY = ZoneInfo("America/New_York")
WAIT_SECONDS = 15.0  # every wait below is bounded by this


def wait_for(pred, what, timeout: float = WAIT_SECONDS):
    return _wait_for(pred, what, timeout, step=0.1)


@pytest.fixture(scope="module")
def calendars():
    return Calendars()  # shared: a calendar takes a moment to build


def test_snapshot_gives_newest_bars_bounded_sparklines_and_sessions(engine, manual_clock, calendars):
    now = manual_clock.now()  # Monday 2024-03-11 15:00 UTC
    rows = [("demo", "TSLA", now - timedelta(minutes=80 - k), f"{100 + k}.2500") for k in range(75)]
    rows += [("demo", "IBM", now - timedelta(minutes=90 - k), f"{190 + k}.5000") for k in range(3)]
    rows += [("yahoo", "TSLA", now - timedelta(days=3), "99.0000")]
    with engine.begin() as c:
        c.execute(sa.insert(bars), [{"provider": p, "symbol": s, "interval": "1min", "ts": ts, "open": close, "high": close,
                                     "low": close, "close": close, "volume": None if p == "yahoo" else "10"}
                                    for p, s, ts, close in rows])  # fmt: skip
    jobs = [{"name": "j", "exchange": "XWAR", "next_run_utc": "2024-03-11T15:05:00+00:00"}]
    status = {"jobs": jobs, "markets": {}, "recent_errors": [{"job_name": "j", "status": "failed"}] * 8}

    snap = snapshot(engine, now, status, calendars, exchanges=["CRYPTO", "24/7", "NOPE"])
    assert snap["now"] == "2024-03-11T15:00:00Z" and snap["jobs"] == jobs and len(snap["recent_errors"]) == 5
    assert [(s["provider"], s["symbol"]) for s in snap["series"]] == [("demo", "TSLA"), ("demo", "IBM"), ("yahoo", "TSLA")]
    tsla, ibm, old = snap["series"]
    assert tsla["ts"] == "2024-03-11T14:54:00Z" and tsla["age_seconds"] == 360.0
    assert Decimal(tsla["close"]) == Decimal("174.25") and tsla["volume"] == "10" and old["volume"] is None
    closes = tsla["closes"]  # the newest SPARK_POINTS closes, oldest first
    assert len(closes) == SPARK_POINTS and closes[-1] == [tsla["ts"], tsla["close"]]
    assert closes[0][0] == (now - timedelta(minutes=80 - (75 - SPARK_POINTS))).isoformat().replace("+00:00", "Z")
    assert [Decimal(c) for _, c in ibm["closes"]] == [Decimal("190.5"), Decimal("191.5"), Decimal("192.5")]
    assert old["age_seconds"] == 3 * 86400.0
    sessions = {m["exchange"]: m.get("session") for m in snap["markets"]}
    # the job's exchange (16:00 in Warsaw, CET) and those asked for, an alias once
    assert sessions == {"XWAR": "regular", "24/7": "regular", "NOPE": None}
    assert [m["exchange"] for m in snap["markets"]] == ["24/7", "NOPE", "XWAR"]
    assert "unknown exchange 'NOPE'" in snap["markets"][1]["error"]
    assert snapshot(engine, now, {"markets": {"XNYS": {"session": "post"}}}, calendars)["markets"] == [
        {"exchange": "XNYS", "session": "post"}
    ]  # /status's own answer is used as it is
    # filters: one symbol, one provider
    assert [s["provider"] for s in snapshot(engine, now, {}, calendars, symbols=["TSLA"])["series"]] == ["demo", "yahoo"]
    assert [s["symbol"] for s in snapshot(engine, now, {}, calendars, provider="demo")["series"]] == ["TSLA", "IBM"]
    assert snapshot(engine, now, {}, calendars, interval="5min")["series"] == []


def require_browser():
    """selenium's ``webdriver`` module; skips (or, under ``CI``, fails) when the browser stack is absent."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
        missing.append("the selenium package")
    if missing:
        reason = f"the dashboard's browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: required under CI")
        pytest.skip(reason)
    return webdriver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tape:
    """The upstream's bars per symbol (1-minute, complete, in the past); Alpha Vantage's JSON on request."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.closes: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def add(self, symbol: str, *closes: str) -> None:
        with self.lock:
            self.closes.setdefault(symbol, []).extend(closes)

    def route(self, _path: str, q: dict[str, str]):
        symbol = q.get("symbol", "")
        with self.lock:
            closes = list(self.closes.get(symbol, ()))
        if q.get("function") != "TIME_SERIES_INTRADAY" or not closes:
            return ok(json.dumps({"Error Message": "Invalid API call."}).encode())
        series = {}
        for k in reversed(range(len(closes))):  # newest first, naive New York time, as Alpha Vantage sends
            ts = (self.start + timedelta(minutes=k)).astimezone(NY).strftime("%Y-%m-%d %H:%M:%S")
            c = closes[k]
            series[ts] = {"1. open": c, "2. high": c, "3. low": c, "4. close": c, "5. volume": "1000"}
        meta = {"1. Information": "Intraday (1min) open, high, low, close prices and volume", "2. Symbol": symbol,
                "3. Last Refreshed": next(iter(series)), "4. Interval": "1min", "5. Output Size": "Compact",
                "6. Time Zone": "US/Eastern"}  # fmt: skip
        return ok(json.dumps({"Meta Data": meta, "Time Series (1min)": series}).encode())


def http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answers (503 while the first cycle runs is fine)
    except OSError:
        return False


def start_browser(webdriver, out: dict) -> None:
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,560",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        out["driver"] = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=opts)
    except Exception as exc:  # noqa: BLE001 - reported by the test's thread
        out["error"] = exc


def test_dashboard_shows_a_loaded_bar_and_updates_live(tmp_path, pg_engine, pg_url, replay):
    webdriver = require_browser()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    tape = Tape(start=now - timedelta(minutes=15))  # the newest bar is a few minutes old
    tape.add("TSLA", *(f"{180 + (k % 5) * 0.75 - k * 0.1:.4f}" for k in range(12)))
    tape.add("IBM", *(f"{190 - (k % 4) * 0.5 + k * 0.2:.4f}" for k in range(12)))
    upstream = replay(tape.route)  # closed by the fixture
    JobStore(pg_engine).put(JobDefinition("dash", "regular", "24/7", "alphavantage", ("TSLA", "IBM"), 1 / 60, "1min"), now)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_URL": pg_url, "ALPHA_VANTAGE_API_KEY": "dashboard-test-key",
           "ALPHA_VANTAGE_BASE_URL": upstream.url, "ALPHA_VANTAGE_RATE_LIMIT": "6000/minute 1000000/day"}  # fmt: skip
    env.pop("MARKETPOLL_API_TOKEN", None)
    log_path = tmp_path / "marketpoll.log"
    browser: dict = {}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([*MAIN, "--run-scheduled-jobs", "--api-port", str(port)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=log_file)  # fmt: skip
    starter = threading.Thread(target=start_browser, args=(webdriver, browser), daemon=True)
    starter.start()  # the browser starts while marketpoll does

    def newest_close(symbol: str) -> tuple[str, str] | None:
        with pg_engine.connect() as c:
            row = c.exec_driver_sql("SELECT ts, close::text FROM bars WHERE symbol = %(s)s ORDER BY ts DESC LIMIT 1",
                                    {"s": symbol}).first()  # fmt: skip
        return (row[0].astimezone(UTC).isoformat(), row[1]) if row else None

    def count_bars(symbol: str) -> int:
        with pg_engine.connect() as c:
            return c.exec_driver_sql("SELECT count(*) FROM bars WHERE symbol = %(s)s", {"s": symbol}).scalar()

    try:
        wait_for(lambda: http_answers(f"{base}/health") or proc.poll() is not None, "marketpoll's API answers")
        assert proc.poll() is None, f"marketpoll exited {proc.returncode}: {log_path.read_text()[-2000:]}"
        wait_for(lambda: count_bars("TSLA") == 12, "the first cycle loads TSLA's 12 bars")
        _, first_close = newest_close("TSLA")
        assert first_close == tape.closes["TSLA"][-1]  # the upstream's newest close, as decimal text

        starter.join(WAIT_SECONDS)
        assert "driver" in browser, f"chromium did not start: {browser.get('error')!r}"
        driver = browser["driver"]
        driver.set_page_load_timeout(WAIT_SECONDS)
        driver.set_script_timeout(WAIT_SECONDS)
        driver.get(f"{base}/")
        driver.execute_script("window.__sameDocument = true")  # gone if the page reloads

        def page(script: str):
            return driver.execute_script(script)

        last = "const r = document.querySelector('tr[data-symbol=\"TSLA\"]'); return r && r.querySelector('td.last').textContent"
        points = "const s = document.querySelector('tr[data-symbol=\"TSLA\"] svg.spark'); return s && +s.dataset.points"
        wait_for(lambda: page(last) == first_close, lambda: f"the page shows TSLA's close {first_close} (not {page(last)!r})")
        assert page(points) == 12  # the sparkline has the series' 12 closes
        ibm = "const r = document.querySelector('tr[data-symbol=\"IBM\"]'); return r && r.querySelector('td.last').textContent"
        wait_for(lambda: page(ibm) == tape.closes["IBM"][-1] == newest_close("IBM")[1], "the page shows IBM's close")
        # the job with its next fire, and the 24/7 market's session
        job = page("const r = document.querySelector('tr[data-job=\"dash\"]'); return r && r.textContent")
        assert job and "24/7 / regular" in job and "TSLA IBM" in job and ("in " in job or "due" in job)
        assert page("return document.querySelector('tr[data-exchange=\"24/7\"] .badge').textContent") == "regular"
        wait_for(lambda: page("return document.getElementById('conn').dataset.state") == "live", "the page follows /events")
        bars_before = int(page("return document.body.dataset.bars || '0'"))

        # a later cycle loads a new bar upstream: the page shows it live, without a reload
        tape.add("TSLA", "181.2345")
        wait_for(lambda: newest_close("TSLA")[1] == "181.2345", "a later cycle loads the new TSLA bar")
        wait_for(lambda: page(last) == "181.2345", lambda: f"the page shows the new close live (not {page(last)!r})")
        assert page("return window.__sameDocument === true"), "the page was reloaded"
        assert int(page("return document.body.dataset.bars || '0'")) > bars_before  # it came through /events
        assert page(points) == 13
        newest_ts = page("return document.querySelector('tr[data-symbol=\"TSLA\"] td.ts').textContent")
        assert newest_ts == (tape.start + timedelta(minutes=12)).strftime("%Y-%m-%d %H:%M:%S")

        # offline-ready: every resource came from marketpoll itself, and the console stayed clean
        sources = page("return performance.getEntriesByType('resource').map(e => e.name)")
        assert sources and all(u.startswith(base + "/") for u in sources), sources
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not severe, severe

        if os.environ.get("MARKETPOLL_DASHBOARD_SCREENSHOT"):  # the README's picture
            shot = tmp_path / "dashboard.png"
            assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            shutil.copyfile(shot, ROOT / os.environ["MARKETPOLL_DASHBOARD_SCREENSHOT"])
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- marketpoll's log, the end ---\n{log_path.read_text()[-3000:]}") from exc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # it stops while the browser does
        starter.join(WAIT_SECONDS)
        if "driver" in browser:
            browser["driver"].quit()
        if proc.poll() is None:
            try:
                proc.wait(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
