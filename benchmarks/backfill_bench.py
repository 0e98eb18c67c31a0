"""Backfill benchmark: 1,000,000 one-minute bars through the real ``--backfill`` path, against the floor.

    python benchmarks/backfill_bench.py                        # 100 symbols x 10,000 bars, 3 rounds
    python benchmarks/backfill_bench.py --symbols 20 --bars 2000 --rounds 1

A loopback server in its own process (so it does not share our GIL) answers Alpha Vantage's
``TIME_SERIES_INTRADAY ... month=2024-03`` with ``--bars`` one-minute bars per symbol, starting
2024-03-01 00:00 New York (about 1.5 MB of JSON per 10,000 bars). Each round, into an empty scratch
database (``marketpoll_backfill_bench``, created through BENCH_ADMIN_URL and migrated before the clock starts):

- **floor**: fetch (a ``requests.Session`` per thread, ``--workers`` threads), parse (Alpha Vantage's
  own parser) and a raw ``COPY`` of the same bars into ``bars``, one transaction: no validation,
  merge, chunk store or ledger;
- **marketpoll**: ``python main.py --backfill --provider alphavantage --start 2024-03-01 --end 2024-04-01``
  (one month = one chunk per symbol), ``--workers`` threads, a rate budget far above what it can use
  (no waits). Its bars/s come from its JSON summary (the run itself: planning, fetching, loading,
  chunk marks, ``etl_runs``); the process's wall time (interpreter start, imports, calendar) is shown beside.

Prints bars/s for both, and the ratio marketpoll / floor (target: >= 0.6), medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _scratch import scratch_database  # noqa: E402

DB = "marketpoll_backfill_bench"
KEY = "BENCHBACKFILL001"
T0_NY = datetime(2024, 3, 1, 0, 0)  # 10,000 minutes from here stay in March and before the DST switch (Mar 10)


def body_template(bars: int) -> bytes:
    """An Alpha Vantage intraday JSON reply of ``bars`` one-minute bars, newest first, symbol ``{SYMBOL}``."""
    series = {}
    for i in range(bars - 1, -1, -1):
        p = 100 + (i % 37) / 10
        series[(T0_NY + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S")] = {
            "1. open": f"{p:.4f}", "2. high": f"{p + 0.5:.4f}", "3. low": f"{p - 0.5:.4f}",
            "4. close": f"{p + 0.1:.4f}", "5. volume": str(1000 + i),
        }  # fmt: skip
    meta = {"1. Information": "Intraday (1min)", "2. Symbol": "{SYMBOL}", "4. Interval": "1min", "6. Time Zone": "US/Eastern"}
    return json.dumps({"Meta Data": meta, "Time Series (1min)": series}, indent=4).encode()


def serve(bars: int, port_q) -> None:
    from cycle_bench import serve_template

    serve_template(port_q, body_template(bars))


def fresh_database() -> str:
    from db import make_engine, upgrade

    url = scratch_database(DB)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def floor(url: str, db_url: str, symbols: list[str], workers: int) -> dict:
    """Fetch + parse + raw COPY of every symbol's bars, one transaction; bars/s over the whole of it."""
    import psycopg2
    import requests
    from sqlalchemy.engine import make_url

    from etl.load import copy_text
    from etl.providers.alphavantage import parse_response

    local = threading.local()

    def fetch(symbol: str):
        session = getattr(local, "session", None) or setattr(local, "session", requests.Session()) or local.session
        params = {"function": "TIME_SERIES_INTRADAY", "symbol": symbol, "interval": "1min", "outputsize": "full",
                  "month": "2024-03", "datatype": "json", "apikey": KEY}  # fmt: skip
        reply = session.get(url, params=params, timeout=60)
        reply.raise_for_status()
        return parse_response(reply.content, symbol=symbol, interval="1min").bars

    u = make_url(db_url)
    conn = psycopg2.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database)
    cols = "provider, symbol, interval, ts, open, high, low, close, volume, adj_close"  # copy_text's columns, in order
    stored = 0
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool, conn.cursor() as cur:
        for bars in pool.map(fetch, symbols):
            text = copy_text(bars)
            cur.copy_expert(f"COPY bars ({cols}) FROM STDIN", io.StringIO(text), size=max(len(text), 8192))
            stored += len(bars)
        conn.commit()
    wall = time.perf_counter() - t
    conn.close()
    return {"bars": stored, "seconds": wall, "bars_per_s": stored / wall}


def backfill(url: str, db_url: str, symbols: list[str], workers: int) -> dict:
    """``main.py --backfill`` in its own process; bars/s from its summary and from its wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL"))}
    env.update(ALPHA_VANTAGE_API_KEY=KEY, ALPHA_VANTAGE_BASE_URL=f"{url}", DATABASE_URL=db_url, LOG_LEVEL="WARNING")
    cmd = [sys.executable, str(ROOT / "main.py"), "--backfill", "--provider", "alphavantage", "--interval", "1min",
           "--start", "2024-03-01", "--end", "2024-04-01", "--workers", str(workers), "--rate-limit", "1000000/second",
           "--symbols", *symbols]  # fmt: skip
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"backfill exited {r.returncode}:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout)
    assert out["chunks_done"] == len(symbols) and out["chunks_pending"] == 0, out
    bars, seconds = out["bars_loaded"], out["duration_seconds"]
    return {"bars": bars, "seconds": seconds, "bars_per_s": bars / seconds, "process_seconds": wall,
            "process_bars_per_s": bars / wall}  # fmt: skip


def count_bars(db_url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    with engine.connect() as c:
        n = c.exec_driver_sql("SELECT count(*) FROM bars").scalar()
    engine.dispose()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--bars", type=int, default=10_000, help="bars per symbol (at most 12,000: they must stay in March 2024)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not 1 <= args.bars <= 12_000:
        raise SystemExit("--bars must be from 1 to 12000")
    q = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.bars, q), daemon=True)
    server.start()
    url = q.get(timeout=60) + "/query"
    symbols = [f"S{i:04d}" for i in range(args.symbols)]
    total = args.symbols * args.bars
    floors, ours = [], []
    try:
        for n in range(args.rounds):
            db_url = fresh_database()
            f = floor(url, db_url, symbols, args.workers)
            assert count_bars(db_url) == total, "floor: not every bar was stored"
            db_url = fresh_database()
            b = backfill(url, db_url, symbols, args.workers)
            assert count_bars(db_url) == total and b["bars"] == total, "backfill: not every bar was stored"
            floors.append(f)
            ours.append(b)
            print(f"round {n + 1}: floor {f['bars_per_s']:,.0f} bars/s ({f['seconds']:.2f} s); backfill {b['bars_per_s']:,.0f} "
                  f"bars/s ({b['seconds']:.2f} s; whole process {b['process_seconds']:.2f} s); ratio "
                  f"{b['bars_per_s'] / f['bars_per_s']:.2f}", flush=True)  # fmt: skip
    finally:
        server.terminate()
    fm = statistics.median(x["bars_per_s"] for x in floors)
    bm = statistics.median(x["bars_per_s"] for x in ours)
    pm = statistics.median(x["process_bars_per_s"] for x in ours)
    print(f"\n{args.symbols} symbols x {args.bars:,} one-minute bars = {total:,} bars, {args.workers} workers, loopback server "
          f"in its own process, PostgreSQL, no rate limit; medians of {args.rounds} round(s)")  # fmt: skip
    print(f"{'path':<46} {'bars/s':>10} {'x floor':>8}")
    print(f"{'floor: fetch + parse + raw COPY':<46} {fm:>10,.0f} {1:>8.2f}")
    print(f"{'marketpoll --backfill (its run)':<46} {bm:>10,.0f} {bm / fm:>8.2f}")
    print(f"{'marketpoll --backfill (whole process)':<46} {pm:>10,.0f} {pm / fm:>8.2f}")
    print("target: --backfill >= 0.6x the floor")


if __name__ == "__main__":
    main()
