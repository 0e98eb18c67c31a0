"""Soak benchmark: many fast cycles through the real pipeline; RSS and open fds must stay flat.

    python benchmarks/soak_bench.py                       # 2,000 cycles of 50 demo symbols
    python benchmarks/soak_bench.py --cycles 500 --source loopback --workers 8

Each cycle runs the real path (HTTP -> parse -> validate -> group-commit upsert, ``etl_runs``)
into a scratch PostgreSQL database (``marketpoll_soak_bench``, created through BENCH_ADMIN_URL).
``--source demo`` uses the demo provider (its server runs in this process, so both ends of
every connection count among our fds); ``--source loopback`` serves Alpha Vantage bodies from a
separate process. Prints the resident set (VmRSS, MB) and the number of open file descriptors
at the start, every ``--every`` cycles and at the end, then the growth after the warm-up
(the first ``--every`` cycles). Targets: < 1 MB of RSS growth after warm-up and 0 fds.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _scratch import scratch_database  # noqa: E402

DB = "marketpoll_soak_bench"


def rss_mb() -> float:
    """Current resident set of this process (VmRSS), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def serve(port_q) -> None:
    from cycle_bench import serve as serve_cycle_bench_replies

    serve_cycle_bench_replies(port_q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--every", type=int, default=200, help="print a line every N cycles (also the warm-up)")
    ap.add_argument("--source", choices=["demo", "loopback"], default="demo")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from db import RunLedger, make_engine, upgrade
    from etl.load import make_loader
    from etl.pipeline import EtlPipeline
    from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
    from etl.providers.demo import DemoProvider

    server = None
    if args.source == "demo":
        provider = DemoProvider()
        names = [f"S{i:03d}" for i in range(args.symbols)]
        interval = "5min"
    else:
        q = multiprocessing.Queue()
        server = multiprocessing.Process(target=serve, args=(q,), daemon=True)
        server.start()
        provider = AlphaVantageProvider(AlphaVantageConfig(api_key="BENCHKEY0001", base_url=f"{q.get(timeout=30)}/query"))
        names = [f"S{i:05d}" for i in range(args.symbols)]
        interval = "1min"
    engine = make_engine(scratch_database(DB), pool_size=4)
    upgrade(engine)
    pipeline = EtlPipeline(provider, make_loader(engine), RunLedger(engine), workers=args.workers)

    print(f"soak: {args.cycles} cycles x {args.symbols} {args.source} symbols, {args.workers} workers, PostgreSQL")
    print(f"{'cycle':>6} {'RSS MB':>8} {'fds':>5} {'s/cycle':>8} {'HTTP clients':>13}")
    t0 = time.perf_counter()
    marks: dict[int, tuple[float, int]] = {0: (rss_mb(), open_fds())}
    print(f"{0:>6} {marks[0][0]:>8.1f} {marks[0][1]:>5} {'':>8} {'':>13}")
    last = t0
    failed = 0
    for i in range(1, args.cycles + 1):
        cycle = pipeline.run_cycle(names, interval, job_name="soak")
        failed += cycle.status.value != "succeeded"
        if i % args.every == 0 or i == args.cycles:
            now = time.perf_counter()
            marks[i] = (rss_mb(), open_fds())
            n = i % args.every or args.every
            clients = provider.http_clients()
            print(f"{i:>6} {marks[i][0]:>8.1f} {marks[i][1]:>5} {(now - last) / n:>8.3f} "
                  f"{clients['open']:>6} open", flush=True)  # fmt: skip
            last = now
    provider.close()
    engine.dispose()
    if server is not None:
        server.terminate()
    warm = min(args.every, args.cycles)
    (r0, f0), (r1, f1) = marks[warm], marks[args.cycles]
    print(f"after warm-up (cycle {warm} -> {args.cycles}): RSS {r1 - r0:+.1f} MB, fds {f1 - f0:+d}; "
          f"from start: RSS {r1 - marks[0][0]:+.1f} MB, fds {f1 - marks[0][1]:+d}; "
          f"{failed} cycle(s) not succeeded; {time.perf_counter() - t0:.0f} s in all")  # fmt: skip
    print("targets: < 1 MB RSS growth after warm-up, 0 fds")


if __name__ == "__main__":
    main()
