"""Steady-state benchmark: do re-loads cost less than first loads, whatever the history size and statistics?

    python benchmarks/steady_bench.py                    # 50k -> 1M -> 10M stored bars, without and with ANALYZE
    python benchmarks/steady_bench.py --sizes 0 1000000  # a quicker run
    python benchmarks/steady_bench.py --soak 2000        # memory soak: RSS and open fds every 100 cycles

One cycle = 500 symbols x 100 one-minute bars from a loopback Alpha Vantage server (its own
process) through the real pipeline (HTTP -> parse -> validate -> load, etl_runs) into a
scratch PostgreSQL database, in one long-lived pipeline, as a running service has. Phases,
each run ``--repeat`` times (median shown, with the range):

1. first load into an empty table (TRUNCATEd before each run);
2. the identical re-load;
3. a re-load where each symbol brings 1 new bar and 1 revised bar;
4. a re-load of the same bars by a *fresh* pipeline (a restarted process: nothing remembered);
5. 2-4 again after ``bars`` also holds 1M and then 10M other bars (generated in SQL), each time
   first with the table in its never-analyzed state (its statistics deleted and size estimates
   reset, as on a database where autovacuum never ran), then after one ``ANALYZE``.

Also shown, as a reference: the same cycle with a loader that writes nothing (the cost of HTTP,
parsing, validation and the ledger, which no loader can go below).

Prints seconds and the ratio to the first load. Targets (issue #12): every steady-state
re-load <= 0.8x the first load; at 10M within 1.2x of the same re-load at 50k. Figures from a
shared machine drift 10-25 % between runs; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _scratch import scratch_database  # noqa: E402

DB = "marketpoll_steady_bench"
SYMBOLS = [f"S{i:04d}" for i in range(500)]
# Bars end a few minutes before the run starts (New York wall time, as Alpha Vantage stamps them): a
# watermark older than one compact reply reaches back would make each re-load catch up the hole first
# (etl.history.fetch_caught_up), a month of history per request, which is not the steady state.
T0 = (datetime.now(ZoneInfo("America/New_York")) - timedelta(minutes=125)).replace(second=0, microsecond=0, tzinfo=None)


def body_for(symbol: str, version: int) -> bytes:
    """100 bars; each ``version`` adds one newer bar (the window slides) and revises the one before it
    (the newest bar of a version is still forming: it gets its final close one version later)."""
    series = {}
    for i in range(99 + version, version - 1, -1):
        p = 100 + (i % 37) / 10
        close = p + 0.1 + (0.01 if i < 99 + version else 0)
        series[(T0 + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S")] = {
            "1. open": f"{p:.4f}", "2. high": f"{p + 0.5:.4f}", "3. low": f"{p - 0.5:.4f}",
            "4. close": f"{close:.4f}", "5. volume": str(1000 + i),
        }  # fmt: skip
    meta = {"2. Symbol": symbol, "4. Interval": "1min", "6. Time Zone": "US/Eastern"}
    return json.dumps({"Meta Data": meta, "Time Series (1min)": series}, indent=4).encode()


def serve(port_q, version, ready) -> None:
    """The loopback API. Bodies are built ahead, off the clock: after ``version`` changes, ``ready``
    takes its value once every symbol's body for it is cached (the timed cycle then only serves them)."""
    from etl.loopback import LoopbackServer

    cache: dict[tuple[str, int], bytes] = {}

    def reply(_p, q):
        key = (q["symbol"], version.value)
        body = cache.get(key)
        if body is None:
            body = cache[key] = body_for(*key)
        return 200, {"Content-Type": "application/json"}, body

    server = LoopbackServer(reply)
    port_q.put(server.url)
    while True:
        v = version.value
        if ready.value != v:
            for symbol in SYMBOLS:
                cache.setdefault((symbol, v), body_for(symbol, v))
            for key in [k for k in cache if k[1] < v - 1]:
                del cache[key]
            ready.value = v
        time.sleep(0.01)


FIRST = "first load (empty table)"
FLOOR = "reference: the same cycle with a loader that writes nothing"
PHASES = ("identical re-load", "1 new + 1 revised per symbol", "identical re-load by a fresh process")


def forget_statistics(conn) -> None:
    """Put ``bars`` back in the never-analyzed state of a database where autovacuum never ran.

    Only in this scratch database: deletes its planner statistics and resets its size estimates
    (``reltuples = -1``, as after ``CREATE TABLE``), so the planner sees what it sees before any ``ANALYZE``.
    """
    conn.exec_driver_sql("DELETE FROM pg_statistic WHERE starelid = 'bars'::regclass")
    conn.exec_driver_sql(
        "UPDATE pg_class SET reltuples = -1, relpages = 0, relallvisible = 0 "
        "WHERE oid = 'bars'::regclass OR oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'bars'::regclass)"
    )


def fill_other_bars(engine, total: int) -> float:
    """Add bars of other series until ``bars`` holds ``total`` of them; returns seconds."""
    t = time.perf_counter()
    with engine.begin() as c:
        have = c.exec_driver_sql("SELECT count(*) FROM bars WHERE provider = 'other'").scalar()
        if total > have:
            c.exec_driver_sql(
                "INSERT INTO bars (provider, symbol, interval, ts, open, high, low, close, volume) "
                "SELECT 'other', 'O' || (g / 10000), '1min', timestamptz '2015-01-01' + (g %% 10000) * interval '1 minute', "
                "100, 101, 99, 100.5, g FROM generate_series(%s, %s) g",
                (have, total - 1),
            )
    return time.perf_counter() - t


def steady(sizes: list[int], workers: int, repeat: int) -> None:
    from db import RunLedger, make_engine, upgrade
    from etl.load import BarLoader, make_loader

    class _NullLoader(BarLoader):
        def _load_group(self, batches, credits):
            return [0] * len(batches)

    from etl.pipeline import EtlPipeline
    from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider

    version = multiprocessing.Value("i", 0)
    ready = multiprocessing.Value("i", -1)
    q = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(q, version, ready), daemon=True)
    server.start()
    base = q.get(timeout=30)
    engine = make_engine(scratch_database(DB), pool_size=4)
    upgrade(engine)
    with engine.connect() as c:
        autovacuum = c.exec_driver_sql("SHOW autovacuum").scalar()

    def make_pipeline():
        provider = AlphaVantageProvider(AlphaVantageConfig(api_key="BENCHKEY0001", base_url=f"{base}/query"))
        return EtlPipeline(provider, make_loader(engine), RunLedger(engine), workers=workers)

    pipeline = make_pipeline()

    def cycle(p=None) -> tuple[float, int]:
        p = p or pipeline
        while ready.value != version.value:  # the server builds the new bodies before the clock starts
            time.sleep(0.01)
        t = time.perf_counter()
        c = p.run_cycle(SYMBOLS, "1min", job_name="steady", batch_size=workers * 2)
        wall = time.perf_counter() - t
        assert c.status.value == "succeeded", c.error_summary()
        return wall, c.rows_loaded

    results: dict[str, tuple[float, int]] = {}

    def record(label: str, runs: list[tuple[float, int]]) -> None:
        wall, n = statistics.median(w for w, _ in runs), runs[-1][1]
        results[label] = (wall, n)
        first = results.get(FIRST, (wall, 0))[0]
        spread = f"{min(w for w, _ in runs):.2f}-{max(w for w, _ in runs):.2f}"
        print(f"{label:<74} {wall:>8.2f} {spread:>11} {wall / first:>8.2f} {n:>12,}", flush=True)

    print(f"500 symbols x 100 bars, {workers} workers, loopback server, PostgreSQL (autovacuum={autovacuum}), median of {repeat}")
    print(f"{'phase':<74} {'seconds':>8} {'range':>11} {'x first':>8} {'rows loaded':>12}", flush=True)
    firsts = []
    for _ in range(repeat):  # each into an empty table; the last one's pipeline goes on (it remembers what it loaded)
        with engine.begin() as c:
            c.exec_driver_sql("TRUNCATE bars")
        firsts.append(cycle())
    record(FIRST, firsts)
    # a reference, not a target: the same cycle with a loader that writes nothing (HTTP, parsing, validation,
    # the ledger): what no loader can go below
    null = EtlPipeline(pipeline.provider, _NullLoader(engine), RunLedger(engine), workers=workers)
    record(FLOOR, [cycle(null) for _ in range(repeat)])
    for size in sizes:
        if size:
            took = fill_other_bars(engine, size)
            # the fill leaves gigabytes of dirty pages and WAL: flush them now, or the next phases measure the
            # fill's write-back (a running poller does not just have had millions of rows inserted)
            t = time.perf_counter()
            with engine.connect() as c:
                c.exec_driver_sql("CHECKPOINT")
            os.sync()
            flushed = time.perf_counter() - t
            print(f"  (filled bars with {size:,} other bars in {took:.0f} s; checkpoint and sync {flushed:.0f} s)", flush=True)
        for analyzed in (False, True):
            with engine.begin() as c:
                if analyzed:
                    c.exec_driver_sql("ANALYZE bars")
                else:
                    forget_statistics(c)
            label = f"{size + 50_000:,} bars, {'analyzed' if analyzed else 'never analyzed'}"
            record(f"identical re-load, {label}", [cycle() for _ in range(repeat)])
            runs = []
            for _ in range(repeat):
                version.value += 1
                runs.append(cycle())
            record(f"1 new + 1 revised per symbol, {label}", runs)
            record(f"identical re-load by a fresh process, {label}", [cycle(make_pipeline()) for _ in range(repeat)])
    server.terminate()
    engine.dispose()
    first = results[FIRST][0]
    worst = max((w / first, label) for label, (w, _) in results.items() if label not in (FIRST, FLOOR))
    print(f"worst steady-state re-load: {worst[0]:.2f}x the first load ({worst[1]}); target <= 0.8x")
    base, top = min(sizes), max(sizes)
    if top > base:
        for label, (wall, _) in results.items():
            if label.startswith(tuple(f"{p}, {top + 50_000:,} bars" for p in PHASES)):
                ref = results[label.replace(f"{top + 50_000:,} bars", f"{base + 50_000:,} bars")][0]
                print(f"  {label}: {wall / ref:.2f}x the same at {base + 50_000:,} bars (target <= 1.2x)")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def soak(cycles: int, symbols: int) -> None:
    """``cycles`` fast cycles of ``symbols`` demo symbols through the polling loop; RSS and fds every 100."""
    import threading

    from clock import SystemClock
    from db import RunLedger, make_engine, upgrade
    from etl.load import make_loader
    from etl.pipeline import EtlPipeline
    from etl.providers.demo import DemoProvider
    from scheduler.polling import PollingConfig, PollingManager
    from scheduler.strategies import ContinuousStrategy

    engine = make_engine(scratch_database(DB), pool_size=4)
    upgrade(engine)
    provider = DemoProvider()
    pipeline = EtlPipeline(provider, make_loader(engine), RunLedger(engine), workers=4, clock=SystemClock())
    names = tuple(f"D{i:03d}" for i in range(symbols))
    marks: list[tuple[int, float, int]] = []
    count = {"n": 0}

    def on_cycle(_cycle) -> None:
        count["n"] += 1
        if count["n"] % 100 == 0:
            marks.append((count["n"], rss_mb(), open_fds()))
            print(f"cycle {count['n']:>5}: RSS {marks[-1][1]:7.1f} MB, open fds {marks[-1][2]}", flush=True)

    config = PollingConfig(interval_minutes=1e-6, max_iterations=cycles, symbols=names, interval="5min")
    manager = PollingManager(pipeline, stop=threading.Event())
    manager.run(ContinuousStrategy(config), on_cycle=on_cycle)
    provider.close()
    engine.dispose()
    base = next((m for m in marks if m[0] >= 200), marks[0])
    last = marks[-1]
    print(f"growth after cycle {base[0]}: {last[1] - base[1]:+.2f} MB RSS, {last[2] - base[2]:+d} fds "
          f"(target: < 1 MB); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 1_000_000, 10_000_000],
                    help="other bars in the table for each round (default: 0 1000000 10000000)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each phase; the median is shown (default 3)")
    ap.add_argument("--soak", type=int, metavar="CYCLES", help="run the memory soak instead")
    ap.add_argument("--soak-symbols", type=int, default=50)
    args = ap.parse_args()
    if args.soak:
        soak(args.soak, args.soak_symbols)
    else:
        steady(args.sizes, args.workers, args.repeat)


if __name__ == "__main__":
    main()
