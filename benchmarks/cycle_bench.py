"""Cycle benchmark: one ETL cycle of N symbols x 100 bars from a loopback server into PostgreSQL.

    python benchmarks/cycle_bench.py                  # 500 and 5,000 symbols, each in a fresh process
    python benchmarks/cycle_bench.py --one 500        # one size, in this process

The server (a separate process, so it does not share our GIL) answers every symbol with
an Alpha Vantage TIME_SERIES_INTRADAY JSON body of 100 bars; the cycle runs the real
path (HTTP -> parse -> validate -> group-commit upsert, etl_runs) with no rate limit,
``--workers`` threads, into a scratch database (``marketpoll_cycle_bench``, created
through BENCH_ADMIN_URL). Prints wall time, rows/s and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _scratch import scratch_database  # noqa: E402

DB = "marketpoll_cycle_bench"


def body_for(symbol: str) -> bytes:
    """100 one-minute bars ending a few minutes ago (New York time, as Alpha Vantage sends them):
    recent, so a repeated cycle (the soak) is a steady-state poll, not a catch-up of an old hole."""
    t0 = datetime.now(ZoneInfo("America/New_York")).replace(tzinfo=None, second=0, microsecond=0) - timedelta(minutes=105)
    series = {}
    for i in range(99, -1, -1):
        p = 100 + (i % 37) / 10
        series[(t0 + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S")] = {
            "1. open": f"{p:.4f}", "2. high": f"{p + 0.5:.4f}", "3. low": f"{p - 0.5:.4f}",
            "4. close": f"{p + 0.1:.4f}", "5. volume": str(1000 + i),
        }  # fmt: skip
    meta = {"2. Symbol": symbol, "4. Interval": "1min", "6. Time Zone": "US/Eastern"}
    return json.dumps({"Meta Data": meta, "Time Series (1min)": series}, indent=4).encode()


def serve(port_q) -> None:
    serve_template(port_q, body_for("{SYMBOL}"))


def serve_template(port_q, template: bytes) -> None:
    """A loopback Alpha Vantage server answering ``template`` with ``{SYMBOL}`` filled in, forever
    (run it in a child process); its URL is put on ``port_q``."""
    from etl.loopback import LoopbackServer

    server = LoopbackServer(
        lambda _p, q: (200, {"Content-Type": "application/json"}, template.replace(b"{SYMBOL}", q["symbol"].encode()))
    )
    port_q.put(server.url)
    while True:
        time.sleep(3600)


def one(symbols: int, workers: int) -> dict:
    from db import RunLedger, make_engine, upgrade
    from etl.load import make_loader
    from etl.pipeline import EtlPipeline
    from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider

    q = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(q,), daemon=True)
    server.start()
    base = q.get(timeout=30)
    engine = make_engine(scratch_database(DB), pool_size=4)
    upgrade(engine)
    provider = AlphaVantageProvider(AlphaVantageConfig(api_key="BENCHKEY0001", base_url=f"{base}/query"))
    pipeline = EtlPipeline(provider, make_loader(engine), RunLedger(engine), workers=workers)
    names = [f"S{i:05d}" for i in range(symbols)]
    t = time.perf_counter()
    cycle = pipeline.run_cycle(names, "1min", job_name="bench", batch_size=workers * 2)
    wall = time.perf_counter() - t
    server.terminate()
    with engine.connect() as c:
        stored = c.exec_driver_sql("SELECT count(*) FROM bars").scalar()
    engine.dispose()
    assert cycle.status.value == "succeeded" and stored == symbols * 100, (cycle.status, stored)
    return {
        "symbols": symbols,
        "bars": stored,
        "wall_s": round(wall, 3),
        "rows_per_s": round(stored / wall),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", type=int, help="run one size in this process and print its JSON")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.workers)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--workers", str(args.workers)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"one cycle, 100 bars per symbol, {args.workers} workers, loopback server, PostgreSQL, no rate limit")
    print(f"{'symbols':>8} {'bars':>9} {'wall s':>8} {'rows/s':>9} {'s/1k sym':>9} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['symbols']:>8} {r['bars']:>9} {r['wall_s']:>8} {r['rows_per_s']:>9} "
              f"{r['wall_s'] / r['symbols'] * 1000:>9.2f} {r['peak_rss_mb']:>12}")  # fmt: skip
    print("targets: 500 symbols < 3 s; cost linear in symbols; peak RSS < 200 MB at 5,000")


if __name__ == "__main__":
    main()
