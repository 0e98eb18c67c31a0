"""Several nodes on one PostgreSQL (scheduler/cluster.py), as real processes with real signals.

- Three nodes (two ``--run-scheduled-jobs --cluster``, one ``--worker``) run one 24/7 job every
  2 s over 30 symbols against a loopback Alpha Vantage that answers in 100 ms, for
  ``MARKETPOLL_CLUSTER_TEST_SECONDS`` (default 10; the issue's minute: set it to 60). One node is
  killed with ``kill -9`` while it runs a chunk; the others are stopped with SIGTERM. One scenario,
  several assertions: every slot once, chunks on several nodes, the dead node's chunk done
  elsewhere, the data complete with nothing counted twice, the survivors keep firing, SIGTERM exits 0.
- Two plain ``--run-scheduled-jobs`` processes (no ``--cluster``) on one database: each slot runs once.
- ``--cluster`` / ``--worker`` on SQLite: exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from clock import SystemClock
from db.jobs import JobStore
from etl.loopback import LoopbackServer
from etl.providers.demo import DemoMarket
from scheduler.calendar import Calendars, Session
from scheduler.cluster import cluster_status
from scheduler.jobs import define_job
from support import ROOT, wait_for

SECONDS = float(os.environ.get("MARKETPOLL_CLUSTER_TEST_SECONDS", "10"))
SYMBOLS = [f"C{i:02d}-USD" for i in range(30)]
JOB_EVERY_MINUTES = 2 / 60
STALLED_AFTER = 3.0


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], env=env, cwd=log.parent,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))  # fmt: skip


def _env(url: str, api_url: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE_", "DATABASE_URL", "NOTIFY_SOCKET"))}
    env.update(DATABASE_URL=url, LOG_LEVEL="INFO")
    if api_url:
        env.update(ALPHA_VANTAGE_BASE_URL=api_url, ALPHA_VANTAGE_API_KEY="demo", ALPHA_VANTAGE_RATE_LIMIT="10000/second")
    return env


def _schedule(engine: sa.Engine, name: str, symbols: list[str], provider: str, every_minutes: float) -> None:
    now = SystemClock().now()
    job = define_job(Calendars(), now, name, Session.REGULAR, symbols, every_minutes, exchange="24/7", provider=provider,
                     bar_interval="1min")  # fmt: skip
    JobStore(engine).put(job, now)


def _stop(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(None)
    return codes


def _slots(conn, job: str) -> list[datetime]:
    rows = conn.execute(sa.text("SELECT scheduled_for FROM etl_runs WHERE job_name = :j ORDER BY scheduled_for"), {"j": job})
    return [r[0] for r in rows]


def _assert_consecutive(slots: list[datetime], step: timedelta) -> None:
    assert len(slots) == len(set(slots)), "a slot was recorded twice"
    gaps = [(a, b) for a, b in zip(slots, slots[1:], strict=False) if b - a > step + timedelta(seconds=1)]
    assert not gaps, f"slots missing between {gaps}"


@pytest.fixture
def cluster_db(pg_engine):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE cluster_chunks, cluster_nodes")
        if conn.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar() is not None:
            conn.exec_driver_sql("TRUNCATE procrastinate_jobs, procrastinate_workers CASCADE")
    return pg_engine


def test_three_nodes_each_slot_once_and_a_killed_node_s_chunks_complete_elsewhere(cluster_db, pg_url, tmp_path):
    engine = cluster_db
    market = DemoMarket()
    requests = {"n": 0}

    def slow(path, query):  # a latency-bound API: 100 ms per reply
        requests["n"] += 1
        time.sleep(0.1)
        return market.reply(path, query)

    api = LoopbackServer(slow)
    _schedule(engine, "cluster", SYMBOLS, "alphavantage", JOB_EVERY_MINUTES)
    env = _env(pg_url, f"{api.url}/query")
    common = ["--workers", "2", "--stalled-after", str(STALLED_AFTER), "--shutdown-timeout", "6"]
    a = _start(["--run-scheduled-jobs", "--cluster", *common], env, tmp_path / "a.log")
    b = _start(["--run-scheduled-jobs", "--cluster", *common], env, tmp_path / "b.log")
    c = _start(["--worker", *common], env, tmp_path / "c.log")
    procs = [a, b, c]
    try:
        node_of = {p: f"{os.uname().nodename}:{p.pid}" for p in procs}
        with engine.connect() as conn:
            live = lambda: conn.execute(sa.text("SELECT count(*) FROM cluster_nodes WHERE stopped_at IS NULL")).scalar() == 3  # noqa: E731
            wait_for(live, "three nodes to start", 60, step=0.1)
        status = cluster_status(engine, stalled_after_seconds=STALLED_AFTER)
        assert {n["node"] for n in status["nodes"] if n["alive"]} == set(node_of.values())
        assert {n["role"] for n in status["nodes"]} == {"scheduler", "worker"}
        t_started = time.monotonic()
        # kill -9 node b while it runs a chunk (mid-cycle), a third of the way in
        time.sleep(SECONDS / 3)

        def victim_chunk():
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT run_id, chunk_no FROM cluster_chunks WHERE status = 'doing' AND node = :n"),
                                    {"n": node_of[b]}).first()  # fmt: skip

        held = wait_for(victim_chunk, "node b to run a chunk", 20, step=0.02)
        b.send_signal(signal.SIGKILL)
        b.wait(5)
        killed_at = datetime.now(UTC)
        time.sleep(max(STALLED_AFTER + 5, SECONDS - (time.monotonic() - t_started)))
        # the dead node's chunk ran again elsewhere (stalled-job sweep) before the others stop
        with engine.connect() as conn:
            done_elsewhere = lambda: conn.execute(  # noqa: E731
                sa.text("SELECT node, attempts FROM cluster_chunks WHERE run_id = :r AND chunk_no = :c AND status = 'done'"),
                {"r": held.run_id, "c": held.chunk_no}).first()  # fmt: skip
            redone = wait_for(done_elsewhere, "the killed node's chunk to be done by another node", 20, step=0.1)
            # the slots queued behind it catch up (bounded): every cycle claimed before now completes
            settled = datetime.now(UTC) - timedelta(seconds=1)
            open_runs = lambda: conn.execute(  # noqa: E731
                sa.text("SELECT count(*) FROM etl_runs WHERE status = 'running' AND scheduled_for < :t"), {"t": settled}
            ).scalar()  # fmt: skip
            wait_for(lambda: open_runs() == 0, "the cycles claimed before the kill was healed to complete", 30, step=0.1)
        t_stop = time.monotonic()
        codes = _stop([a, c], timeout=20)
        stop_seconds = time.monotonic() - t_stop
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        api.close()
    logs = {p: (tmp_path / f"{n}.log").read_text() for p, n in ((a, "a"), (b, "b"), (c, "c"))}
    assert codes == [0, 0], f"SIGTERM exit codes {codes}\n{logs[a][-3000:]}\n{logs[c][-3000:]}"
    assert stop_seconds < 6 + 5, stop_seconds  # within --shutdown-timeout (plus start-up of the exit path)
    assert redone.node != node_of[b] and redone.attempts >= 2, redone
    assert "stalled on a dead node" in logs[a] + logs[c]
    with engine.connect() as conn:
        slots = _slots(conn, "cluster")
        runs = conn.execute(sa.text("SELECT id, scheduled_for, node, status, symbols_succeeded, symbols_failed FROM etl_runs "
                                    "WHERE job_name = 'cluster' ORDER BY scheduled_for")).all()  # fmt: skip
        chunk_nodes = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT node FROM cluster_chunks WHERE status = 'done'"))}
        loaded = conn.execute(sa.text("SELECT sum(rows_loaded) FROM etl_runs")).scalar()
        bars = conn.execute(sa.text("SELECT count(*), count(DISTINCT symbol) FROM bars")).one()
        last_bar = conn.execute(sa.text("SELECT min(m) FROM (SELECT max(ts) AS m FROM bars GROUP BY symbol) s")).scalar()
    # every slot exactly once, with no gap, across the kill
    assert len(slots) >= SECONDS / 2 * 0.6, slots
    _assert_consecutive(slots, timedelta(minutes=JOB_EVERY_MINUTES))
    # each slot a survivor claimed was queued once by it (the losers queued nothing); the killed node may have
    # died between committing a claim and logging it (its chunks are then queued by the others' sweep)
    assert logs[a].count("job cluster: claimed slot") == sum(r.node == node_of[a] for r in runs)
    assert logs[b].count("job cluster: claimed slot") <= sum(r.node == node_of[b] for r in runs)
    # the survivors kept firing after the kill
    assert any(r.scheduled_for > killed_at + timedelta(seconds=STALLED_AFTER) for r in runs)
    assert any(r.node == node_of[a] for r in runs if r.scheduled_for > killed_at)
    # chunks ran on at least two nodes
    assert len(chunk_nodes & set(node_of.values())) >= 2, chunk_nodes
    # complete: every cycle that had time to finish succeeded with all 30 symbols, the killed one's too
    finished = [r for r in runs if r.scheduled_for < settled]
    assert finished and all(r.status == "succeeded" and r.symbols_succeeded == 30 for r in finished), finished
    assert held.run_id in {r.id for r in finished}
    assert bars[1] == 30 and last_bar > killed_at - timedelta(minutes=2)
    # nothing counted twice: every stored bar was credited exactly once, though the killed chunk ran twice
    assert loaded == bars[0], (loaded, bars)
    status = cluster_status(engine, stalled_after_seconds=STALLED_AFTER)
    by_node = {n["node"]: n for n in status["nodes"]}
    assert not by_node[node_of[b]]["alive"] and by_node[node_of[b]]["stopped_at"] is None  # killed: silent
    assert by_node[node_of[a]]["stopped_at"] is not None and by_node[node_of[c]]["stopped_at"] is not None
    json.dumps(status)  # JSON-ready, as --show-cluster prints it


def test_two_plain_processes_run_each_slot_once(pg_engine, pg_url, tmp_path):
    _schedule(pg_engine, "plain", ["P1-USD", "P2-USD"], "demo", 1 / 60)
    env = _env(pg_url)
    procs = [_start(["--run-scheduled-jobs"], env, tmp_path / f"p{i}.log") for i in range(2)]
    try:
        with pg_engine.connect() as conn:
            wait_for(lambda: len(_slots(conn, "plain")) >= 4, "four slots", 60, step=0.1)
    finally:
        codes = _stop(procs, timeout=20)
    assert codes == [0, 0]
    with pg_engine.connect() as conn:
        slots = _slots(conn, "plain")
    _assert_consecutive(slots, timedelta(seconds=1))
    cycles = sum((tmp_path / f"p{i}.log").read_text().count("cycle job=plain ") for i in range(2))
    assert cycles == len(slots), (cycles, len(slots))  # each slot ran one cycle, not one per process


def test_cluster_on_sqlite_is_one_line_and_exit_2(tmp_path):
    env = _env(f"sqlite:///{tmp_path / 'x.db'}")
    modes = [["--run-scheduled-jobs", "--cluster"], ["--worker"]]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), *m], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for m in modes]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "PostgreSQL" in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "x.db").exists()  # refused before any database work
