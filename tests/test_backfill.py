"""History backfill, gap filling and coverage (issue #9): real HTTP over loopback, real PostgreSQL,
real subprocesses and signals.

The provider is ``fakexd``: the Fakex API of tests/fakeprovider.py with a one-UTC-day limit per
request, so a window of several days is several chunks. Its server here (:class:`Market`) has a
bar at every minute of XNYS's regular session in March 2024 (EDT: 13:30-20:00 UTC, weekdays) and
logs every request. Subprocesses run main.py through :data:`LAUNCH`, which registers ``fakexd``
first (a provider registered in the test process does not exist in a child).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import pytest

from clock import ManualClock
from db.backfill import Chunk, ChunkStore
from db.ledger import RunLedger
from db.quota import QuotaStore
from etl.history import Backfill, LogProgress, chunk_windows, cycle_groups, log_every, subtract
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.providers.registry import PROVIDERS
from etl.ratelimit import RateBudget, key_id, parse_rates
from etl.retry import RetryPolicy
from fakeprovider import FakexProvider
from support import ROOT

KEY = "FAKEXBACKFILL7K3Q"
SESSION_UTC = (dtime(13, 30), dtime(20, 0))  # XNYS regular session in EDT (from 2024-03-10)
D = datetime(2024, 3, 11, tzinfo=UTC)  # Monday


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An instant of March 2024, UTC."""
    return datetime(2024, 3, day, hour, minute, tzinfo=UTC)


class FakexDaily(FakexProvider):
    """Fakex whose API allows one UTC day per request: each request window ends at the next UTC midnight."""

    name = "fakexd"

    def range_requests(self, symbol, interval, start, end):
        lo = start
        while lo < end:
            hi = min(end, datetime.combine(lo.date() + timedelta(days=1), dtime(0), tzinfo=UTC))
            yield self._request(symbol, interval, lo, hi)
            lo = hi


def register_daily() -> None:
    if "fakexd" not in PROVIDERS:
        PROVIDERS.register(FakexDaily)


register_daily()

#: ``python -c LAUNCH args...`` runs main.py's main() with ``fakexd`` registered.
LAUNCH = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]; import test_backfill; "
          "test_backfill.register_daily(); import main; sys.exit(main.main(sys.argv[1:]))")  # fmt: skip


def trading(t: datetime, empty_days=()) -> bool:
    return t.weekday() < 5 and SESSION_UTC[0] <= t.time() < SESSION_UTC[1] and t.date() not in empty_days


def expected(lo: datetime, hi: datetime, empty_days=()) -> list[datetime]:
    """Bar starts the market has in UTC [lo, hi)."""
    out, t = [], lo.replace(second=0, microsecond=0)
    t += timedelta(minutes=1) if t < lo else timedelta(0)
    while t < hi:
        if trading(t, empty_days):
            out.append(t)
        t += timedelta(minutes=1)
    return out


class Market:
    """A Fakex-wire server: a bar every minute of the regular session (see the module docstring), one page per
    request. Symbols starting ``AB`` exist; others are HTTP 404 (unknown symbol). ``delay`` slows every reply."""

    def __init__(self, *, delay: float = 0.0, empty_days=()) -> None:
        self.delay = delay
        self.empty_days = set(empty_days)

    def __call__(self, path: str, q: dict[str, str]):
        if q.get("key") != KEY:
            return 401, {"Content-Type": "application/json"}, b'{"error": "bad key"}'
        symbol = path.rsplit("/", 1)[-1]
        if not symbol.startswith("AB"):
            return 404, {"Content-Type": "application/json"}, b'{"error": "unknown symbol"}'
        if self.delay:
            time.sleep(self.delay)
        if "from" in q:
            lo, hi = datetime.fromtimestamp(int(q["from"]), UTC), datetime.fromtimestamp(int(q["to"]), UTC)
        else:  # the latest bars (a polling job)
            hi = at(11, 20)
            lo = hi - timedelta(minutes=10)
        candles = []
        for t in expected(lo, hi, self.empty_days):
            p = 100 + zlib.crc32(f"{symbol}{t.timestamp()}".encode()) % 1000 / 100
            candles.append({"t": int(t.timestamp()), "o": f"{p:.2f}", "h": f"{p + 0.5:.2f}", "l": f"{p - 0.5:.2f}",
                            "c": f"{p + 0.1:.2f}", "v": "100"})  # fmt: skip
        body = json.dumps({"symbol": symbol, "candles": candles, "next": None}).encode()
        return 200, {"Content-Type": "application/json"}, body


def fetched(srv) -> list[tuple[str, datetime, datetime]]:
    """The (symbol, from, to) of every windowed request the server got, in order."""
    with srv.lock:
        reqs = list(srv.requests)
    return [(p.rsplit("/", 1)[-1], datetime.fromtimestamp(int(q["from"]), UTC), datetime.fromtimestamp(int(q["to"]), UTC))
            for p, q in reqs if "from" in q]  # fmt: skip


def child_env(srv, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKEX", "DATABASE_URL", "ALPHA_VANTAGE"))}
    env.update(FAKEX_BASE_URL=srv.server.url, FAKEX_API_KEY=KEY, DATABASE_URL=db_url, **extra)
    return env


def main_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCH, *args]


def run_main(args, *, env, cwd, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(main_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def summary(r: subprocess.CompletedProcess | str) -> dict:
    return json.loads(r if isinstance(r, str) else r.stdout)


def bars_of(engine, symbol: str) -> list[datetime]:
    with engine.connect() as c:
        rows = c.exec_driver_sql("SELECT ts FROM bars WHERE provider = 'fakexd' AND symbol = %s ORDER BY ts", (symbol,)).all()
    return [r[0].astimezone(UTC) for r in rows]


def chunk_rows(engine) -> list[tuple]:
    with engine.connect() as c:
        rows = c.exec_driver_sql("SELECT symbol, window_start, window_end, status, rows_loaded, error FROM backfill_chunks "
                                 "ORDER BY symbol, window_start").all()  # fmt: skip
    return [(s, lo.astimezone(UTC), hi.astimezone(UTC), st, n, e) for s, lo, hi, st, n, e in rows]


def coverage_ready() -> bool:
    try:
        from db.coverage import CoverageLedger
    except ImportError:
        return False
    return all(hasattr(CoverageLedger, m) for m in ("compute", "missing_ranges", "record_no_data"))


needs_coverage = pytest.mark.skipif(not coverage_ready(), reason="needs db/coverage.py's CoverageLedger "
                                    "(compute, missing_ranges, record_no_data), which has not landed yet")  # fmt: skip


# -- planning ------------------------------------------------------------------------------------


def test_subtract_leaves_the_parts_not_loaded():
    span = (at(1), at(10))
    assert subtract(span, []) == [span]
    assert subtract(span, [(at(3), at(4)), (at(6), at(7))]) == [(at(1), at(3)), (at(4), at(6)), (at(7), at(10))]
    assert subtract(span, [(at(1), at(2)), (at(9), at(12))]) == [(at(2), at(9))]
    assert subtract(span, [(at(2), at(5)), (at(4), at(6))]) == [(at(1), at(2)), (at(6), at(10))]  # overlapping
    assert subtract(span, [(at(1), at(10))]) == []


def test_chunks_are_the_providers_request_windows():
    av = AlphaVantageProvider(AlphaVantageConfig(api_key="PLANKEY000000001"))
    jan15, apr10 = datetime(2024, 1, 15, tzinfo=UTC), datetime(2024, 4, 10, tzinfo=UTC)
    ny_month = [datetime(2024, m, 1, 5, tzinfo=UTC) for m in (2, 3)] + [datetime(2024, 4, 1, 4, tzinfo=UTC)]  # EST, EDT
    windows = chunk_windows(av, "IBM", "5min", [(jan15, apr10)])
    assert windows == [(jan15, ny_month[0]), (ny_month[0], ny_month[1]), (ny_month[1], ny_month[2]), (ny_month[2], apr10)]
    # two holes of one month are one request (month=2024-03), so one chunk; Fakex asks per window, so two
    holes = [(at(4, 14), at(4, 15)), (at(20, 14), at(20, 16))]
    assert chunk_windows(av, "IBM", "5min", holes) == [(at(4, 14), at(20, 16))]
    daily = FakexDaily(FakexDaily.Config(api_key=KEY))
    assert chunk_windows(daily, "ABC", "1min", holes) == holes
    assert chunk_windows(daily, "ABC", "1min", [(at(4, 12), at(6, 3))]) == [(at(4, 12), at(5)), (at(5), at(6)), (at(6), at(6, 3))]


def test_cycles_group_the_symbols_of_one_window_oldest_first():
    chunks = [Chunk(i, "p", s, "1min", at(d), at(d + 1)) for i, (s, d) in enumerate([("B", 2), ("A", 1), ("A", 2), ("C", 2)])]
    groups = cycle_groups(chunks, max_symbols=2)
    assert [[(c.symbol, c.start.day) for c in g] for g in groups] == [[("A", 1)], [("B", 2), ("A", 2)], [("C", 2)]]


def test_off_a_terminal_progress_is_one_line_per_n_chunks(caplog):
    assert log_every(7) == 1 and log_every(200) == 10
    progress = LogProgress("backfill")
    with caplog.at_level(logging.INFO, logger="etl.history"):
        progress.start(40)
        for _ in range(40):
            progress.advance(1, 100)
        progress.rate_wait(1.5)
    lines = [r.getMessage() for r in caplog.records if r.name == "etl.history"]
    assert len(lines) == 20 and lines[-1].startswith("backfill: 40/40 chunks (100%), 4,000 bars loaded")


# -- in-process runs (both databases where it matters) -------------------------------------------


def make_backfill(srv, engine, clock, *, stop=None, rate_limit=None, workers=2) -> Backfill:
    cfg = FakexDaily.Config(base_url=srv.server.url, api_key=KEY, retry=RetryPolicy(max_attempts=2, initial_delay_seconds=0))
    provider = FakexDaily(cfg, clock=clock)
    stop = stop or threading.Event()
    if rate_limit:
        provider.budget = RateBudget("fakexd", key_id(KEY), parse_rates(rate_limit), quota=QuotaStore(engine), clock=clock,
                                     stop=stop)  # fmt: skip
    pipeline = EtlPipeline(provider, make_loader(engine), RunLedger(engine), clock=clock, stop=stop, workers=workers)
    return Backfill(pipeline, ChunkStore(engine, clock.now), clock=clock, stop=stop)


def test_rerun_skips_what_is_loaded_and_a_wider_window_fetches_only_the_new_part(engine, replay):
    srv = replay(Market())
    clock = ManualClock(at(20))
    runner = make_backfill(srv, engine, clock)
    plan = runner.plan(["ABC", "ABD"], "1min", at(11, 15), at(13, 14))
    assert [(c.symbol, c.start, c.end) for c in plan.chunks] == [
        (s, lo, hi) for s in ("ABC", "ABD") for lo, hi in [(at(11, 15), at(12)), (at(12), at(13)), (at(13), at(13, 14))]
    ]
    res = runner.run(plan, "1min")
    assert (res.chunks_done, res.chunks_pending, res.cycles) == (6, 0, 3)
    with engine.connect() as c:
        stored = c.exec_driver_sql("SELECT symbol, count(*), min(ts), max(ts) FROM bars GROUP BY symbol ORDER BY symbol").all()
    want = expected(at(11, 15), at(13, 14))
    assert [(s, n) for s, n, _, _ in stored] == [("ABC", len(want)), ("ABD", len(want))]
    assert len(srv.requests) == 6

    again = runner.plan(["ABC", "ABD"], "1min", at(11, 15), at(13, 14))
    assert again.chunks == [] and again.already_loaded == 6
    wider = runner.plan(["ABC"], "1min", at(11, 12), at(14))  # only the two new ends are fetched
    assert [(c.start, c.end) for c in wider.chunks] == [(at(11, 12), at(11, 15)), (at(13, 14), at(14))]
    runner.run(wider, "1min")
    assert fetched(srv)[6:] == [("ABC", at(11, 12), at(11, 15)), ("ABC", at(13, 14), at(14))]


def test_a_window_the_provider_says_is_empty_is_a_no_data_chunk(pg_engine, replay):
    srv = replay(Market(empty_days={date(2024, 3, 12)}))
    runner = make_backfill(srv, pg_engine, ManualClock(at(20)))
    res = runner.run(runner.plan(["ABC"], "1min", at(11), at(14)), "1min")
    assert (res.chunks_done, res.chunks_no_data) == (2, 1)
    rows = chunk_rows(pg_engine)
    assert [(lo.day, st, n) for _, lo, _, st, n, _ in rows] == [(11, "done", 390), (12, "no_data", 0), (13, "done", 390)]
    assert runner.plan(["ABC"], "1min", at(11), at(14)).chunks == []  # an empty window is not asked for again


@needs_coverage
def test_no_data_windows_are_recorded_for_the_coverage_ledger(tmp_path, pg_engine, pg_url, replay):
    srv = replay(Market(empty_days={date(2024, 3, 12)}))
    r = run_main(["--backfill", "--provider", "fakexd", "--symbols", "ABC", "--interval", "1min", "--start", "2024-03-12T00:00Z",
                  "--end", "2024-03-13T00:00Z"], env=child_env(srv, pg_url), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert summary(r)["chunks_no_data"] == 1
    with pg_engine.connect() as c:
        rows = c.exec_driver_sql("SELECT provider, symbol, interval, range_start, range_end FROM no_data_ranges").all()
    assert [(p, s, i, lo.astimezone(UTC), hi.astimezone(UTC)) for p, s, i, lo, hi in rows] == [
        ("fakexd", "ABC", "1min", at(12), at(13))
    ]


def test_given_ranges_fetch_exactly_those_ranges(pg_engine, replay):
    srv = replay(Market())
    runner = make_backfill(srv, pg_engine, ManualClock(at(20)))
    holes = [("ABC", at(12, 15), at(12, 15, 30)), ("ABD", at(11, 18), at(11, 18, 10)), ("ABD", at(11, 23), at(12, 1))]
    plan = runner.plan_ranges(holes, "1min")  # the last one crosses the API's day limit: two chunks
    res = runner.run(plan, "1min")
    assert sorted(fetched(srv)) == sorted([*holes[:2], ("ABD", at(11, 23), at(12)), ("ABD", at(12), at(12, 1))])
    assert (res.chunks_done, res.chunks_no_data, res.bars_loaded) == (2, 2, 40)


def test_a_used_up_daily_quota_is_waited_out_not_failed(pg_engine, replay):
    srv = replay(Market())
    clock = ManualClock(at(20, 12))
    runner = make_backfill(srv, pg_engine, clock, rate_limit="100/second 3/day", workers=1)
    res = runner.run(runner.plan(["ABC"], "1min", at(11), at(16)), "1min")
    assert (res.chunks_done + res.chunks_no_data, res.chunks_failed, res.chunks_pending) == (5, 0, 0)
    assert res.quota_paused_until == at(21)  # the next UTC midnight
    assert clock.now() >= at(21) and len(srv.requests) == 5
    with pg_engine.connect() as c:
        used = c.exec_driver_sql("SELECT day, used FROM api_quota ORDER BY day").all()
    assert [(d.day, n) for d, n in used] == [(20, 3), (21, 2)]


# -- main.py in a subprocess -------------------------------------------------------------------------


def test_backfill_loads_exactly_the_window_and_a_rerun_fetches_nothing_unless_refetch(tmp_path, pg_engine, pg_url, replay):
    srv = replay(Market())
    env = child_env(srv, pg_url)
    # instants: one with a zone, one without (UTC)
    args = ["--backfill", "--provider", "fakexd", "--symbols", "ABC", "ABD", "--interval", "1min",
            "--start", "2024-03-11T15:00:00Z", "--end", "2024-03-13T14:00:00", "--workers", "2"]  # fmt: skip
    r = run_main(args, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    want = expected(at(11, 15), at(13, 14))
    assert bars_of(pg_engine, "ABC") == want and bars_of(pg_engine, "ABD") == want
    out = summary(r)
    assert (out["chunks_planned"], out["chunks_done"], out["chunks_pending"], out["bars_loaded"]) == (6, 6, 0, 2 * len(want))
    assert out["start"] == "2024-03-11T15:00:00+00:00" and out["end"] == "2024-03-13T14:00:00+00:00"
    windows = [(at(11, 15), at(12)), (at(12), at(13)), (at(13), at(13, 14))]
    assert sorted(fetched(srv)) == sorted((s, lo, hi) for s in ("ABC", "ABD") for lo, hi in windows)
    with pg_engine.connect() as c:
        runs = c.exec_driver_sql("SELECT job_name, status, symbols_requested FROM etl_runs ORDER BY id").all()
    assert [tuple(x) for x in runs] == [("backfill", "succeeded", 2)] * 3  # one cycle per window, both symbols in it

    again = run_main(args, env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(srv.requests) == 6 and summary(again)["chunks_planned"] == 0 and summary(again)["chunks_already_loaded"] == 6

    refetch = run_main([*args, "--refetch"], env=env, cwd=tmp_path)
    assert refetch.returncode == 0, refetch.stderr
    assert len(srv.requests) == 12 and summary(refetch)["bars_loaded"] == 0  # same bars: nothing rewritten
    assert bars_of(pg_engine, "ABC") == want


def test_a_bad_symbol_fails_alone_and_is_named(tmp_path, pg_engine, pg_url, replay):
    srv = replay(Market())
    args = ["--backfill", "--provider", "fakexd", "--symbols", "ABC", "NOSUCH", "--interval", "1min",
            "--start", "2024-03-11", "--end", "2024-03-14", "--exchange", "24/7"]  # dates: UTC midnights on 24/7  # fmt: skip
    r = run_main(args, env=child_env(srv, pg_url), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "main.py: backfill: symbol NOSUCH failed: fakexd: unknown symbol 'NOSUCH'" in r.stderr
    assert "Traceback" not in r.stderr and KEY not in r.stdout + r.stderr
    assert bars_of(pg_engine, "ABC") == expected(at(11), at(14))
    out = summary(r)
    assert (out["chunks_done"], out["chunks_failed"]) == (3, 3) and list(out["failed_symbols"]) == ["NOSUCH"]
    # its first chunk failed terminally: its other chunks were not asked for (the quota is spared) ...
    assert [s for s, _, _ in fetched(srv)].count("NOSUCH") == 1
    failed = [(lo.day, st, e) for s, lo, _, st, _, e in chunk_rows(pg_engine) if s == "NOSUCH"]
    assert [(d, st) for d, st, _ in failed] == [(11, "failed"), (12, "failed"), (13, "failed")]
    assert "unknown symbol" in failed[0][2] and failed[1][2].startswith("not fetched: NOSUCH failed in this run")
    # ... and a rerun tries again only what failed
    again = run_main(args, env=child_env(srv, pg_url), cwd=tmp_path)
    assert again.returncode == 1 and summary(again)["chunks_planned"] == 3
    assert [s for s, _, _ in fetched(srv)].count("ABC") == 3


def test_resume_after_sigterm_in_the_middle_of_a_backfill(tmp_path, pg_engine, pg_url, replay):
    market = Market(delay=0.5)
    srv = replay(market)
    symbols = ["ABC", "ABD"]
    args = ["--backfill", "--provider", "fakexd", "--symbols", *symbols, "--interval", "1min", "--workers", "2",
            "--start", "2024-03-11T00:00Z", "--end", "2024-03-21T00:00Z", "--shutdown-timeout", "10"]  # fmt: skip
    # 10 days x 2 symbols: 20 chunks, 10 cycles
    proc = subprocess.Popen(main_cmd(*args), env=child_env(srv, pg_url), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # some chunks done, most still to go
        with pg_engine.connect() as c:
            if c.exec_driver_sql("SELECT count(*) FROM backfill_chunks WHERE status <> 'pending'").scalar() >= 4:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "chunk(s) pending: run the same command again" in err
    first = summary(out)
    assert first["interrupted"] and 0 < first["chunks_pending"] < 20
    rows = chunk_rows(pg_engine)
    pending = sorted((s, lo, hi) for s, lo, hi, st, _, _ in rows if st == "pending")
    finished = {(s, lo, hi) for s, lo, hi, st, _, _ in rows if st != "pending"}
    assert len(pending) == first["chunks_pending"] and len(finished) == 20 - len(pending)
    for s, lo, hi in finished:  # every finished chunk is fully loaded
        assert [t for t in bars_of(pg_engine, s) if lo <= t < hi] == expected(lo, hi)

    before = len(srv.requests)
    market.delay = 0.0
    again = run_main(args, env=child_env(srv, pg_url), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(fetched(srv)[before:]) == pending  # only the remaining chunks
    assert summary(again)["chunks_already_loaded"] == 20 - len(pending)
    want = expected(at(11), at(21))
    for s in symbols:
        assert bars_of(pg_engine, s) == want  # complete, each bar once
    assert {st for _, _, _, st, _, _ in chunk_rows(pg_engine)} <= {"done", "no_data"}


def test_the_daily_quota_is_shared_with_a_running_job(tmp_path, pg_engine, pg_url, replay):
    srv = replay(Market())
    env = child_env(srv, pg_url, FAKEX_RATE_LIMIT="100/second 5/day")
    job_err, bf_err = tmp_path / "job.err", tmp_path / "backfill.err"
    job = subprocess.Popen(main_cmd("--continuous-poll", "--provider", "fakexd", "--symbols", "ABC", "--interval", "1min",
                                    "--poll-interval", "0.02"), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=job_err.open("w"), text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not srv.requests and time.monotonic() < deadline:  # the job is running and has used the quota
            time.sleep(0.05)
        assert srv.requests, job_err.read_text()
        cmd = main_cmd("--backfill", "--provider", "fakexd", "--symbols", "ABD", "--interval", "1min", "--workers", "1",
                       "--start", "2024-03-11T00:00Z", "--end", "2024-03-17T00:00Z")  # fmt: skip
        backfill = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=bf_err.open("w"), text=True)
        deadline = time.monotonic() + 60
        while "daily quota used up" not in bf_err.read_text() and backfill.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backfill.poll() is None, bf_err.read_text()  # it waits for the quota, it does not fail
        backfill.send_signal(signal.SIGTERM)
        out, _ = backfill.communicate(timeout=30)
    finally:
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=30)
    err = bf_err.read_text()
    assert backfill.returncode == 0, err
    assert "Traceback" not in err
    assert "fakexd: daily quota used up (counted in api_quota): waiting" in err and "Ctrl-C or SIGTERM stops cleanly" in err
    result = summary(out)
    assert result["quota_paused_until"] is not None and result["chunks_pending"] >= 2 and result["chunks_failed"] == 0
    with pg_engine.connect() as c:
        quota = c.exec_driver_sql("SELECT provider, key_id, used FROM api_quota").all()
        pending = c.exec_driver_sql("SELECT count(*) FROM backfill_chunks WHERE status = 'pending'").scalar()
    # one row, the job's and the backfill's requests counted together: every request the API got, and no more
    assert [tuple(q) for q in quota] == [("fakexd", key_id(KEY), 5)] and len(srv.requests) == 5
    assert 1 <= len(fetched(srv)) <= 4  # the backfill's share
    assert pending == result["chunks_pending"]


@needs_coverage
def test_gap_filling_fetches_only_the_holes(tmp_path, pg_engine, pg_url, replay):
    srv = replay(Market())
    env = child_env(srv, pg_url)
    common = ["--provider", "fakexd", "--symbols", "ABC", "ABD", "--interval", "1min"]
    r = run_main(["--backfill", *common, "--start", "2024-03-11", "--end", "2024-03-14"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    holes = [("ABC", at(12, 15), at(12, 15, 30)), ("ABD", at(11, 18), at(11, 18, 10))]
    with pg_engine.begin() as c:
        for s, lo, hi in holes:
            c.exec_driver_sql("DELETE FROM bars WHERE symbol = %s AND ts >= %s AND ts < %s", (s, lo, hi))
    before = len(srv.requests)
    fill = run_main(["--fill-gaps", *common, "--start", "2024-03-11", "--end", "2024-03-13", "--sessions", "regular"],
                    env=env, cwd=tmp_path)  # fmt: skip
    assert fill.returncode == 0, fill.stderr
    assert sorted(fetched(srv)[before:]) == sorted(holes)
    assert summary(fill)["bars_loaded"] == 40
    for s in ("ABC", "ABD"):
        assert bars_of(pg_engine, s) == expected(at(11), at(14))
    filled = len(srv.requests)
    nothing = run_main(["--fill-gaps", *common, "--start", "2024-03-11", "--end", "2024-03-13"], env=env, cwd=tmp_path)
    assert nothing.returncode == 0 and len(srv.requests) == filled  # no hole left, no request


@needs_coverage
def test_coverage_report_as_json_and_heatmap(tmp_path, pg_url, replay):
    srv = replay(Market())
    env = child_env(srv, pg_url)
    common = ["--provider", "fakexd", "--symbols", "ABC", "--interval", "1min", "--start", "2024-03-11", "--end", "2024-03-13"]
    assert run_main(["--backfill", *common], env=env, cwd=tmp_path).returncode == 0
    r = run_main(["--coverage", *common, "--format", "json", "--coverage-plot", "cov.png"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)  # --end is excluded, as in --backfill: the days backfilled, all complete
    assert [(x["symbol"], x["session_date"], x["missing"]) for x in rows] == [("ABC", "2024-03-11", 0), ("ABC", "2024-03-12", 0)]
    assert (tmp_path / "cov.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run_main(["--coverage", *common], env=env, cwd=tmp_path)
    assert table.returncode == 0 and "ABC" in table.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--start", "2024-13-01", "--end", "2024-03-02"], "'2024-13-01'"),
        (["--start", "yesterday", "--end", "2024-03-02"], "'yesterday'"),
        (["--start", "2024-03-01", "--end", "2024-03-01T25:00:00Z"], "'2024-03-01T25:00:00Z'"),
        (["--start", "2024-03-05", "--end", "2024-03-01"], "--end: must be after --start"),
        (["--start", "2024-03-01T10:00:00Z", "--end", "2024-03-01T10:00:00"], "--end: must be after --start"),
        (["--start", "2024-03-12", "--end", "2024-03-12T03:00:00Z"], "must be after --start"),  # midnight New York = 04:00Z
        (["--start", "1850-01-01", "--end", "2024-03-01"], "from 1900 to 2200"),
        (["--start", "2024-03-01"], "--end: required with --backfill"),
        (["--start", "2024-03-01", "--end", "2024-03-02", "--interval", "15min", "--provider", "fakexd"], "no interval 15min"),
        (["--start", "2024-03-01", "--end", "2024-03-02", "--coverage-plot", "x.png"], "--coverage-plot: only with --coverage"),
    ],
)
def test_bad_history_input_exits_2_with_one_line(tmp_path, args, needle):
    r = run_main(["--backfill", "--symbols", "ABC", *args], env={**os.environ, "FAKEX_API_KEY": KEY}, cwd=tmp_path, timeout=30)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0] and lines[0].startswith("main.py: error: "), r.stderr
    assert not (tmp_path / "marketpoll.db").exists()  # nothing was started


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backfill", "--start", "2024-03-01", "--end", "2024-03-02"], "--symbols"),
        (["--coverage", "--symbols", "ABC", "--start", "2024-03-01T00:00:00Z", "--end", "2024-03-02"], "takes a date"),
        (["--fill-gaps", "--symbols", "ABC", "--start", "2024-03-01", "--end", "2024-03-02", "--refetch"], "--refetch"),
        (["--backfill", "--symbols", "ABC", "--start", "2024-03-01", "--end", "2024-03-02", "--format", "json"], "--format"),
        (["--continuous-poll", "--symbols", "ABC", "--start", "2024-03-01"], "--start: only with --backfill"),
    ],
)
def test_history_modes_refuse_what_they_cannot_use(tmp_path, args, needle):
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr


def test_an_unreachable_database_exits_3(tmp_path, replay):
    srv = replay(Market())
    env = child_env(srv, "postgresql://nobody@127.0.0.1:1/none")
    r = run_main(["--backfill", "--provider", "fakexd", "--symbols", "ABC", "--interval", "1min", "--start", "2024-03-11",
                  "--end", "2024-03-12"], env=env, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 3 and not srv.requests, r.stderr
