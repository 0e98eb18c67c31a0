"""Steady-state benchmark: do re-loads cost less than first loads, whatever the history size and statistics?

    python benchmarks/steady_bench.py                    # 50k -> 1M -> 10M stored bars, without and with ANALYZE
    python benchmarks/steady_bench.py --sizes 0 1000000  # a quicker run
    python benchmarks/steady_bench.py --soak 2000        # memory soak: RSS and open fds every 100 cycles

One cycle = 500 symbols x 100 one-minute bars from a loopback Alpha Vantage server (its own
process) through the real pipeline (HTTP -> parse -> validate -> load, etl_runs) into a
scratch PostgreSQL database, in one long-lived pipeline, as a running service has. Phases:

1. first load into an empty table;
2. the identical re-load;
3. a re-load where each symbol brings 1 new bar and 1 revised bar;
4. 2 and 3 again after ``bars`` holds 1M and then 10M other bars (generated in SQL), each time
   with no ``ANALYZE`` since the table was created, then again after one.

Also timed: a re-load by a *fresh* pipeline (a restarted process: nothing remembered).
Prints seconds and the ratio to the first load. Targets (issue #12): every steady-state
re-load <= 0.8x the first load; at 10M within 1.2x of the same re-load at 50k.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _scratch import scratch_database  # noqa: E402

DB = "marketpoll_steady_bench"
SYMBOLS = [f"S{i:04d}" for i in range(500)]
T0 = datetime(2024, 3, 11, 9, 30)


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


def serve(port_q, version) -> None:
    from etl.loopback import LoopbackServer

    cache: dict[tuple[str, int], bytes] = {}

    def reply(_p, q):
        key = (q["symbol"], version.value)
        if key not in cache:
            cache[key] = body_for(*key)
        return 200, {"Content-Type": "application/json"}, cache[key]

    server = LoopbackServer(reply)
    port_q.put(server.url)
    while True:
        time.sleep(3600)


def fill_other_bars(engine, total: int) -> float:
    """Add bars of other series until ``bars`` holds ``total`` of them; returns seconds."""
    t = time.perf_counter()
    with engine.begin() as c:
        have = c.exec_driver_sql("SELECT count(*) FROM bars WHERE provider = 'other'").scalar()
        if total > have:
            c.exec_driver_sql(
                "INSERT INTO bars (provider, symbol, interval, ts, open, high, low, close, volume) "
                "SELECT 'other', 'O' || (g / 10000), '1min', timestamptz '2015-01-01' + (g % 10000) * interval '1 minute', "
                "100, 101, 99, 100.5, g FROM generate_series(%s, %s) g",
                (have, total - 1),
            )
    return time.perf_counter() - t


def steady(sizes: list[int], workers: int) -> None:
    from db import RunLedger, make_engine, upgrade
    from etl.load import make_loader
    from etl.pipeline import EtlPipeline
    from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider

    version = multiprocessing.Value("i", 0)
    q = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(q, version), daemon=True)
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
        t = time.perf_counter()
        c = p.run_cycle(SYMBOLS, "1min", job_name="steady", batch_size=workers * 2)
        wall = time.perf_counter() - t
        assert c.status.value == "succeeded", c.error_summary()
        return wall, c.rows_loaded

    results: list[tuple[str, float, int]] = []
    first, loaded = cycle()
    results.append(("first load (empty table)", first, loaded))
    for size in sizes:
        if size:
            took = fill_other_bars(engine, size)
            print(f"  (filled bars with {size:,} other bars in {took:.0f} s)", flush=True)
        for analyzed in (False, True):
            if analyzed:
                with engine.begin() as c:
                    c.exec_driver_sql("ANALYZE bars")
            label = f"{size:,} other bars, {'analyzed' if analyzed else 'no ANALYZE'}"
            wall, n = cycle()
            results.append((f"identical re-load, {label}", wall, n))
            version.value += 1
            wall, n = cycle()
            results.append((f"1 new + 1 revised per symbol, {label}", wall, n))
            wall, n = cycle(make_pipeline())
            results.append((f"identical re-load by a fresh process, {label}", wall, n))
    server.terminate()
    engine.dispose()
    print(f"500 symbols x 100 bars, {workers} workers, loopback server, PostgreSQL (autovacuum={autovacuum})")
    print(f"{'phase':<72} {'seconds':>8} {'x first':>8} {'rows loaded':>12}")
    for label, wall, n in results:
        print(f"{label:<72} {wall:>8.2f} {wall / first:>8.2f} {n:>12,}")
    print("targets: every steady-state re-load <= 0.8x the first load; at 10M within 1.2x of the same re-load at 50k")


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
    ap.add_argument("--soak", type=int, metavar="CYCLES", help="run the memory soak instead")
    ap.add_argument("--soak-symbols", type=int, default=50)
    args = ap.parse_args()
    if args.soak:
        soak(args.soak, args.soak_symbols)
    else:
        steady(args.sizes, args.workers)


if __name__ == "__main__":
    main()
