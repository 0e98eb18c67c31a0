"""A clustered cycle's ``etl_runs`` row always settles, and a retried chunk records its rejections once.

In-process :class:`scheduler.cluster.ClusterNode` s (real PostgreSQL, real procrastinate workers) run
chunks against a loopback Alpha Vantage that serves the demo market with one bad bar (low above
high) per reply, so every symbol has exactly one rejection per fetch.

- A chunk that fails for good (the database refuses it until its retries are spent, or this node
  cannot build the provider's route) leaves its run ``partial`` or ``failed``, never ``running``; its
  symbols fail with an error naming the chunk, and no secret.
- The sweep settles a run whose chunk's procrastinate job ended ``failed``/``cancelled``/``aborted``
  while the run was still ``running``, exactly once when two nodes sweep at once.
- A chunk retried after a failed completion does not store its rejections twice.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from test_cluster import cluster_db  # noqa: F401 - the fixture is used by name

from clock import SystemClock
from db.ledger import RunLedger, claim_statement
from db.tables import cluster_chunks
from errors import ConfigError, LoadError
from etl.load import make_loader
from etl.loopback import LoopbackServer
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.providers.demo import DemoMarket
from etl.redact import Redactor
from models.run import CycleResult, SymbolOutcome
from scheduler.calendar import Calendars, Session
from scheduler.cluster import ClusterNode, _outcome_json, ensure_schema
from scheduler.jobs import define_job
from support import wait_for

KEY = "CLUSTERLEDGERSECRET42"
STALLED_AFTER = 1.5  # the sweep runs every half second


class Route:
    """``pipeline_for`` of the nodes: one pipeline over a loopback Alpha Vantage whose every reply has one bad bar."""

    def __init__(self, engine: sa.Engine) -> None:
        market = DemoMarket()

        def one_bad_bar(path, query):
            status, headers, body = market.reply(path, query)
            data = json.loads(body)
            series = next(v for k, v in data.items() if k.startswith("Time Series"))
            series[next(iter(series))]["3. low"] = "99999"  # the newest bar: low above high
            return status, headers, json.dumps(data).encode()

        self.server = LoopbackServer(one_bad_bar)
        redactor = Redactor([KEY])
        provider = AlphaVantageProvider(AlphaVantageConfig(api_key=KEY, base_url=f"{self.server.url}/query",
                                                           rate_limit="10000/second"))  # fmt: skip
        self.pipeline = EtlPipeline(provider, make_loader(engine), RunLedger(engine, redactor), redact=redactor, workers=2)

    def __call__(self, provider: str, fallback: str | None) -> EtlPipeline:
        return self.pipeline

    def close(self) -> None:
        self.pipeline.provider.close()
        self.server.close()


@pytest.fixture
def route(cluster_db):  # noqa: F811 - the fixture imported from test_cluster
    r = Route(cluster_db)
    yield r
    r.close()


@contextmanager
def running(engine: sa.Engine, url: str, pipeline_for, node_class=ClusterNode, **kw):
    node = node_class(engine, url, pipeline_for, role="worker", workers=2, stop=threading.Event(),
                      shutdown_timeout_seconds=2, stalled_after_seconds=STALLED_AFTER, **kw)  # fmt: skip
    node.start()
    try:
        yield node
    finally:
        node.close(15)


def _job(name: str, symbols: list[str]):
    return define_job(Calendars(), SystemClock().now(), name, Session.REGULAR, symbols, 1, exchange="24/7",
                      provider="alphavantage", bar_interval="1min")  # fmt: skip


def _run(engine: sa.Engine, run_id: int) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT * FROM etl_runs WHERE id = :r"), {"r": run_id}).mappings().one())


def _settled(engine: sa.Engine, run_id: int, timeout: float = 15) -> dict:
    return wait_for(
        lambda: (row := _run(engine, run_id))["status"] != "running" and row, f"run {run_id} to settle", timeout, step=0.1
    )


# -- a chunk that fails for good -------------------------------------------------------------------


def test_a_chunk_refused_until_its_retries_are_spent_fails_its_symbols_and_the_run_settles_partial(
    cluster_db, route, pg_url  # noqa: F811
):  # fmt: skip
    engine = cluster_db
    symbols = ["A0-USD", "A1-USD", "A2-USD", "A3-USD"]  # chunk 0: A0 A1 (loads), chunk 1: A2 A3 (refused)
    with engine.begin() as conn:  # the database refuses every start of chunk 1 (and names a secret while at it)
        conn.exec_driver_sql(f"""CREATE FUNCTION refuse_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'chunk refused for key {KEY}'; END $$""")
        conn.exec_driver_sql("CREATE TRIGGER refuse_chunk BEFORE UPDATE ON cluster_chunks FOR EACH ROW "
                             "WHEN (NEW.status = 'doing' AND NEW.chunk_no = 1) EXECUTE FUNCTION refuse_chunk()")  # fmt: skip
    try:
        with running(engine, pg_url, route, chunk_symbols=2, chunk_retries=1) as node:
            run_id = node.dispatch(_job("refused", symbols), None)
            row = _settled(engine, run_id)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS refuse_chunk ON cluster_chunks")
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS refuse_chunk()")
    assert row["status"] == "partial", row
    assert (row["symbols_succeeded"], row["symbols_failed"], row["failed_symbols"]) == (2, 2, "A2-USD A3-USD"), row
    lines = row["error_summary"].splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["A2-USD", "A3-USD"], lines
    assert all(f"chunk 1 of run {run_id} failed for good" in ln and "chunk refused" in ln for ln in lines), lines
    assert "attempt 2 (no retry left)" in lines[0], lines  # chunk_retries=1: the first run and one retry
    assert KEY not in row["error_summary"] and "***" in row["error_summary"]
    with engine.connect() as conn:
        chunks = conn.execute(sa.text("SELECT c.chunk_no, c.status, j.status::text FROM cluster_chunks c "
                                      "LEFT JOIN procrastinate_jobs j ON j.id = c.job_id WHERE c.run_id = :r "
                                      "ORDER BY c.chunk_no"), {"r": run_id}).all()  # fmt: skip
    # chunk 0's job succeeded (deleted); chunk 1's job still says it failed
    assert [tuple(c) for c in chunks] == [(0, "done", None), (1, "done", "failed")], chunks


def test_a_chunk_this_node_has_no_route_for_settles_its_run_failed(cluster_db, pg_url):  # noqa: F811
    engine = cluster_db

    def no_route(provider, fallback):  # e.g. a --worker node without the provider's settings
        raise ConfigError(f"cannot build {provider}: https://example.test/query?apikey={KEY} refused")

    with running(engine, pg_url, no_route) as node:
        run_id = node.dispatch(_job("noroute", ["B0-USD", "B1-USD"]), None)
        row = _settled(engine, run_id)
    assert row["status"] == "failed", row
    assert (row["symbols_succeeded"], row["symbols_failed"], row["failed_symbols"]) == (0, 2, "B0-USD B1-USD"), row
    assert row["error_summary"].count(f"chunk 0 of run {run_id} failed") == 2, row["error_summary"]
    assert "cannot build alphavantage" in row["error_summary"] and KEY not in row["error_summary"], row["error_summary"]


# -- the sweep ---------------------------------------------------------------------------------------


def _lost_run(engine: sa.Engine, job_status: str, lost_chunks: int) -> tuple[int, list[int]]:
    """A ``running`` run whose chunk 0 is done (two symbols loaded) and whose other chunks' jobs ended
    ``job_status`` with nobody recording it (their worker was killed on the last attempt, say)."""
    now = SystemClock().now()
    cycle = CycleResult(job_name="lost", provider="alphavantage", started_at=now, interval="1min")
    values = RunLedger.row_values(cycle, interval="1min", symbols_requested=2 + 2 * lost_chunks, scheduled_for=now)
    ok = [_outcome_json(SymbolOutcome(s, rows_fetched=5, rows_loaded=5)) for s in ("L0-USD", "L1-USD")]
    with engine.begin() as conn:
        run_id = conn.execute(claim_statement("postgresql", values)).scalar_one()
        conn.execute(cluster_chunks.insert().values(run_id=run_id, chunk_no=0, job_name="lost", symbols="L0-USD L1-USD",
                                                    status="done", attempts=1, queued_at=now, finished_at=now,
                                                    outcomes={"error": None, "outcomes": ok}))  # fmt: skip
        for n in range(1, 1 + lost_chunks):
            job_id = conn.execute(sa.text(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, lock, args, status, attempts) "
                "VALUES ('alphavantage', 'marketpoll:fetch_chunk', :lock, '{}', CAST(:s AS procrastinate_job_status), 3) "
                "RETURNING id"), {"lock": f"lost#{n}", "s": job_status}).scalar_one()  # fmt: skip
            conn.execute(cluster_chunks.insert().values(run_id=run_id, chunk_no=n, job_name="lost", job_id=job_id,
                                                        symbols=f"L{2 * n}-USD L{2 * n + 1}-USD", status="doing",
                                                        attempts=3, queued_at=now, started_at=now))  # fmt: skip
    return run_id, list(range(1, 1 + lost_chunks))


@pytest.mark.parametrize("job_status", ["failed", "cancelled", "aborted"])
def test_the_sweep_settles_a_running_run_whose_chunk_job_ended_for_good(cluster_db, route, pg_url, job_status):  # noqa: F811
    engine = cluster_db
    with running(engine, pg_url, route):
        run_id, _ = _lost_run(engine, job_status, 1)
        row = _settled(engine, run_id, timeout=10)
    assert row["status"] == "partial", row
    assert (row["symbols_succeeded"], row["symbols_failed"], row["failed_symbols"]) == (2, 2, "L2-USD L3-USD"), row
    assert row["finished_at"] is not None
    lines = row["error_summary"].splitlines()
    assert len(lines) == 2 and all(f"chunk 1 of run {run_id} failed for good" in ln and f"ended {job_status}" in ln
                                   for ln in lines), lines  # fmt: skip


def test_two_nodes_sweeping_at_once_settle_each_lost_chunk_once(cluster_db, route, pg_url):  # noqa: F811
    engine = cluster_db
    ensure_schema(engine)
    run_id, lost = _lost_run(engine, "failed", 4)
    # two nodes (not started: only their sweep step runs), released together
    nodes = [ClusterNode(engine, pg_url, route, role="worker", workers=1, stop=threading.Event()) for _ in range(2)]
    barrier, recorded = threading.Barrier(2), []

    def sweep(node):
        barrier.wait()
        recorded.append(node._settle_lost_chunks())

    threads = [threading.Thread(target=sweep, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(recorded) == 2 and sum(recorded) == len(lost), recorded  # each chunk recorded by one node
    row = _run(engine, run_id)
    assert row["status"] == "partial" and (row["symbols_succeeded"], row["symbols_failed"]) == (2, 8), row
    assert len(row["error_summary"].splitlines()) == 8
    settled_at = row["finished_at"]
    assert nodes[0]._settle_lost_chunks() == 0 and _run(engine, run_id)["finished_at"] == settled_at  # nothing left


# -- rejections of a retried chunk -------------------------------------------------------------------


class FlakyCompletion(ClusterNode):
    """The database drops the connection when each chunk first tries to complete: procrastinate runs it again."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.failed_once: set[tuple[int, int]] = set()

    def complete_chunk(self, run_id, chunk_no, outcomes, error):
        if (run_id, chunk_no) not in self.failed_once:
            self.failed_once.add((run_id, chunk_no))
            raise LoadError("completing a chunk: server closed the connection unexpectedly", transient=True)
        return super().complete_chunk(run_id, chunk_no, outcomes, error)


def test_a_retried_chunk_does_not_record_its_rejections_twice(cluster_db, route, pg_url):  # noqa: F811
    engine = cluster_db
    symbols = ["R0-USD", "R1-USD", "R2-USD"]
    t0 = datetime.now(UTC)
    with running(engine, pg_url, route, node_class=FlakyCompletion) as node:
        run_id = node.dispatch(_job("retried", symbols), None)
        row = _settled(engine, run_id)
    with engine.connect() as conn:
        attempts = conn.execute(sa.text("SELECT attempts FROM cluster_chunks WHERE run_id = :r"), {"r": run_id}).scalar()
        rejects = conn.execute(sa.text("SELECT symbol, raw_ts, reason, seen_at FROM rejected_bars WHERE run_id = :r "
                                       "ORDER BY symbol"), {"r": run_id}).all()  # fmt: skip
    assert attempts == 2, attempts  # the chunk ran twice, and both runs fetched and rejected the bad bars
    assert row["status"] == "succeeded" and row["rows_rejected"] == 3, row
    assert [r.symbol for r in rejects] == symbols, rejects  # one rejection per symbol, not one per attempt
    assert all("inconsistent OHLC" in r.reason and r.seen_at >= t0 for r in rejects), rejects
