"""Cycle time of one named job over 600 symbols with 1, 2 and 3 cluster nodes (processes), and the slot claim cost.

The API is a loopback Alpha Vantage (etl.providers.demo's market) that answers every request in
200 ms, like a real API: the work is latency-bound. Each node runs ``--workers 4`` (four chunks of
10 symbols at once, each fetched one symbol at a time). Node 1 is ``--run-scheduled-jobs --cluster``;
the others are ``--worker``. The job is 24/7 every minute: the bench waits for one fire per
configuration and reads its ``etl_runs`` row (finished_at - started_at). Between configurations the
tables are emptied, so every cycle loads the same 60,000 bars.

The claim cost is measured twice: as logged by the node ("claimed slot ... in X ms": the claim
transaction with its chunk rows), and in this process, as 300 uncontested and 300 contested
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` claims (RunLedger.start with a slot).

    python benchmarks/cluster_bench.py [--nodes 1 2 3] [--symbols 600] [--latency-ms 200]

Needs PostgreSQL (BENCH_ADMIN_URL, default postgres@127.0.0.1:5432/test). Takes 3-5 minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sqlalchemy as sa  # noqa: E402
from _scratch import scratch_database  # noqa: E402

from db.engine import make_engine  # noqa: E402
from db.jobs import JobStore  # noqa: E402
from db.ledger import RunLedger  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from etl.loopback import LoopbackServer  # noqa: E402
from etl.providers.demo import DemoMarket  # noqa: E402
from models.run import CycleResult  # noqa: E402
from scheduler.calendar import Calendars, Session  # noqa: E402
from scheduler.jobs import define_job  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_config(engine, url: str, api_url: str, nodes: int, workdir: Path) -> dict:
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE bars, etl_runs, cluster_chunks, cluster_nodes, rejected_bars")
        if conn.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar() is not None:
            conn.exec_driver_sql("TRUNCATE procrastinate_jobs, procrastinate_workers CASCADE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE_", "NOTIFY_SOCKET"))}
    env.update(DATABASE_URL=url, ALPHA_VANTAGE_BASE_URL=api_url, ALPHA_VANTAGE_API_KEY="demo",
               ALPHA_VANTAGE_RATE_LIMIT="10000/second", LOG_LEVEL="INFO")  # fmt: skip
    common = ["--workers", "4", "--shutdown-timeout", "10"]
    logs = [workdir / f"n{nodes}_{i}.log" for i in range(nodes)]
    modes = [["--run-scheduled-jobs", "--cluster"]] + [["--worker"]] * (nodes - 1)
    procs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), *m, *common], env=env, stdout=subprocess.DEVNULL,
                              stderr=log.open("w")) for m, log in zip(modes, logs, strict=True)]  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        row = None
        cpu0 = ready_at = None
        while time.monotonic() < deadline and row is None:
            time.sleep(0.5)
            with engine.connect() as conn:
                alive = conn.execute(sa.text("SELECT count(*) FROM cluster_nodes")).scalar()
                if alive == nodes and cpu0 is None:
                    cpu0 = [cpu_seconds(p.pid) for p in procs]
                    ready_at = datetime.now(UTC)
                if ready_at is None:
                    continue
                # the first fire after every node is up (a fire during start-up would favour fewer nodes)
                first = conn.execute(sa.text("SELECT id, started_at, finished_at, status, symbols_succeeded, rows_loaded "
                                             "FROM etl_runs WHERE job_name = 'bench' AND started_at > :t ORDER BY id LIMIT 1"),
                                     {"t": ready_at}).first()  # fmt: skip
                if first is not None and first.finished_at is not None:
                    row = first
        cpu1 = [cpu_seconds(p.pid) for p in procs]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    if row is None:
        raise SystemExit(f"no cycle finished with {nodes} node(s); see {logs[0]}")
    claims = [float(m) for log in logs for m in re.findall(r"claimed slot .* in ([0-9.]+) ms", log.read_text())]
    with engine.connect() as conn:
        per_node = dict(conn.execute(sa.text("SELECT node, count(*) FROM cluster_chunks WHERE run_id = :r GROUP BY node"),
                                     {"r": row.id}).all())  # fmt: skip
    return {"nodes": nodes, "cycle_seconds": (row.finished_at - row.started_at).total_seconds(), "status": row.status,
            "symbols_ok": row.symbols_succeeded, "rows_loaded": row.rows_loaded, "claim_ms": claims,
            "chunks_per_node": sorted(per_node.values(), reverse=True),
            "cpu_seconds": [round(b - a, 1) for a, b in zip(cpu0 or cpu1, cpu1, strict=True)]}  # fmt: skip


def claim_cost(engine, n: int = 300) -> tuple[float, float]:
    """Median ms of an uncontested and of a contested slot claim (RunLedger.start with a slot)."""
    ledger = RunLedger(engine)
    base = datetime(2030, 1, 1, tzinfo=UTC)

    def one(slot: datetime) -> float:
        cycle = CycleResult(job_name="claim-bench", provider="demo", started_at=datetime.now(UTC))
        t0 = time.perf_counter()
        ledger.start(cycle, interval="1min", symbols_requested=600, scheduled_for=slot)
        return (time.perf_counter() - t0) * 1000

    fresh = [one(base + timedelta(seconds=i)) for i in range(n)]
    taken = [one(base + timedelta(seconds=i)) for i in range(n)]  # every slot already claimed: the losers' path
    return statistics.median(fresh), statistics.median(taken)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--symbols", type=int, default=600)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    args = ap.parse_args()
    url = scratch_database("marketpoll_cluster_bench")
    engine = make_engine(url)
    upgrade(engine)
    market = DemoMarket()

    def slow(path, query):
        time.sleep(args.latency_ms / 1000)
        return market.reply(path, query)

    api = LoopbackServer(slow)
    now = datetime.now(UTC)
    symbols = [f"B{i:03d}-USD" for i in range(args.symbols)]
    JobStore(engine).put(define_job(Calendars(), now, "bench", Session.REGULAR, symbols, 1, exchange="24/7",
                                    provider="alphavantage", bar_interval="1min"), now)  # fmt: skip
    print(f"{args.symbols} symbols, loopback API answering in {args.latency_ms:g} ms, 4 workers per node, "
          f"{os.cpu_count()} CPU(s)", flush=True)  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nodes:
            r = run_config(engine, url, f"{api.url}/query", n, Path(tmp))
            results.append(r)
            claims = f"{statistics.median(r['claim_ms']):.1f}" if r["claim_ms"] else "-"
            print(f"{n} node(s): cycle {r['cycle_seconds']:.2f} s ({r['status']}, {r['symbols_ok']} symbols, "
                  f"{r['rows_loaded']} rows), claim {claims} ms as logged, chunks per node {r['chunks_per_node']}, "
                  f"node CPU during the run {r['cpu_seconds']} s", flush=True)  # fmt: skip
    api.close()
    base = results[0]["cycle_seconds"]
    for r in results[1:]:
        print(f"speed-up with {r['nodes']} nodes: {base / r['cycle_seconds']:.2f}x")
    fresh, taken = claim_cost(engine)
    print(f"slot claim in this process: {fresh:.2f} ms median (won), {taken:.2f} ms (lost: slot already held)")
    engine.dispose()


if __name__ == "__main__":
    main()
