"""Several marketpoll nodes on one PostgreSQL: slots claimed once, chunks spread by procrastinate.

A *node* is ``--run-scheduled-jobs --cluster`` (APScheduler fires the named jobs, and workers
run chunks) or ``--worker`` (workers only). Every node has the same ``DATABASE_URL``; nothing
else is shared, and nothing else is needed.

- **Claim.** A fire claims its slot (job name, fire time) by inserting the cycle's ``etl_runs``
  row under the unique index on ``(job_name, scheduled_for)`` (:func:`db.ledger.claim_statement`),
  in the same transaction as the cycle's ``cluster_chunks`` rows. The node that inserts second
  gets no row and skips the fire.
- **Spread.** The claiming node cuts the job's symbols into chunks of :data:`CHUNK_SYMBOLS` and
  defers each chunk as a procrastinate job (task :data:`TASK`) on the queue named after the
  provider, with lock ``<job>#<chunk_no>`` so that a chunk never overlaps the same chunk of
  the job's previous slot. Task arguments are JSON (run id, chunk number, job, provider,
  interval, symbols).
- **Run.** Workers on every node (``--workers`` chunks at once; a chunk fetches its symbols one
  at a time) run a chunk through :meth:`etl.pipeline.EtlPipeline.run_symbols`, the same route as
  a single-process cycle; each load transaction credits the cycle's row as it commits.
- **Complete.** A finished chunk writes its outcomes to its ``cluster_chunks`` row under a lock
  on the cycle's ``etl_runs`` row; the chunk that finds no other chunk left writes the cycle's
  final status and totals (``rows_loaded`` as credited by the loads), in that transaction:
  exactly one chunk completes each cycle.
- **A chunk fails for good** (its retries are spent, its error is not one procrastinate retries, or
  its job is cancelled or aborted): its symbols count as failed, each with an error naming the chunk
  and the reason (redacted), and the cycle settles as the other chunks allow (``partial`` or
  ``failed``, :meth:`models.run.CycleResult.settle`). The task records it on its last attempt
  (:meth:`ClusterNode.fail_chunk`); the sweep settles the chunks whose job ended ``failed``,
  ``cancelled`` or ``aborted`` with nobody recording it (a worker killed on the last attempt, the
  database away at that moment), under the same row lock: no cycle stays ``running`` for ever.
- **A retried chunk** fetches its symbols again: the rejections an earlier attempt recorded in
  ``rejected_bars`` for the same run and symbol are not stored twice (:class:`db.rejects.RejectStore`).
- **A node dies** (``kill -9``, power loss): procrastinate's worker heartbeat stops; every node
  looks for stalled jobs (:meth:`procrastinate.manager.JobManager.get_stalled_jobs`, no heartbeat
  for ``stalled_after_seconds``) and puts them back in the queue; another node runs them again.
  Loading is idempotent, and a chunk already ``done`` is never run or counted again.
- **SIGTERM.** The node starts no new chunk; running chunks finish within the shutdown timeout,
  or give back what they left undone (:class:`ChunkReturned`: the job goes back to the queue).
- **Operations.** ``cluster_nodes`` holds each node's heartbeat; :func:`cluster_status` (for
  ``--show-cluster`` and the API's ``GET /status``) lists nodes, last seen, chunks in flight and
  queue depths; :mod:`etl.metrics` exports queue depth and stalled-chunk retries.

Procrastinate's schema is applied at start, under a PostgreSQL advisory lock, when its table is
missing (:func:`ensure_schema`): nodes that start together apply it once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import procrastinate
import sqlalchemy as sa
from procrastinate.psycopg_connector import PsycopgConnector
from procrastinate.schema import SchemaManager
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from clock import Clock, SystemClock
from db.engine import describe_url, translate_db_errors
from db.jobs import JobDefinition
from db.ledger import HOST, NODE, RunLedger, claim_statement
from db.tables import cluster_chunks, cluster_nodes, etl_runs
from errors import ConfigError, LoadError
from etl import metrics
from etl.pipeline import EtlPipeline
from etl.redact import Redactor
from models.run import CycleResult, SymbolOutcome

__all__ = ["ClusterNode", "ChunkReturned", "cluster_status", "ensure_schema", "check_cluster_database", "conninfo",
           "CHUNK_SYMBOLS", "CHUNK_RETRIES", "STALLED_AFTER_SECONDS", "TASK"]  # fmt: skip

log = logging.getLogger(__name__)

#: Symbols per chunk: the unit of work a worker takes (and retries) at once.
CHUNK_SYMBOLS = 10
#: A chunk given back (:class:`ChunkReturned`) or stopped by the database (LoadError) runs again at most this
#: many times (procrastinate's ``max_attempts``; stalled-node retries count too); then it fails for good.
CHUNK_RETRIES = 20
#: Procrastinate job statuses after which a chunk's job never runs again.
FINAL_JOB_STATUSES = ("failed", "cancelled", "aborted")
#: Longest reason a chunk that failed for good gives each of its symbols, in characters.
CHUNK_ERROR_MAX_CHARS = 500
#: A node whose workers have sent no heartbeat for this many seconds is dead: its chunks are retried elsewhere.
STALLED_AFTER_SECONDS = 30.0
#: The procrastinate task that runs a chunk (namespace ``marketpoll``).
TASK = "marketpoll:fetch_chunk"
#: Key of the advisory lock under which procrastinate's schema is applied (any constant; "mpoll" in ASCII).
SCHEMA_LOCK_KEY = 0x6D706F6C6C
#: Longest wait, in seconds, for the node's event loop to start or to queue a slot's chunks.
LOOP_TIMEOUT_SECONDS = 30.0
#: At most this many chunks are listed by :func:`cluster_status` (the total is always given).
STATUS_CHUNKS_MAX = 100
#: Done chunks (which node ran what) are kept this long, then deleted by the nodes' sweep.
CHUNKS_KEPT = timedelta(days=1)


class ChunkReturned(Exception):  # noqa: N818 - a control-flow signal, not an error (kept out of errors.py's tree)
    """A shutdown left a chunk undone: procrastinate puts it back in the queue for another node.

    ``outcomes``: what the chunk did before it was given back (kept if this was its last attempt).
    """

    def __init__(self, message: str, outcomes: Sequence[SymbolOutcome] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


def conninfo(database_url: str) -> str:
    """The libpq connection string of a PostgreSQL SQLAlchemy URL (psycopg 3, for procrastinate).

    Raises ConfigError for a database that is not PostgreSQL.
    """
    check_cluster_database(database_url)
    u = make_url(database_url)
    params = {"host": u.host, "port": u.port, "user": u.username, "password": u.password, "dbname": u.database}
    params.update({k: v if isinstance(v, str) else v[-1] for k, v in u.query.items()})
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def check_cluster_database(database_url: str) -> None:
    """Raise ConfigError unless ``database_url`` is PostgreSQL (every node must share one server)."""
    try:
        backend = make_url(database_url).get_backend_name()
    except Exception:  # noqa: BLE001 - make_engine reports an unparsable URL in its own words
        backend = None
    if backend != "postgresql":
        raise ConfigError(f"a cluster needs PostgreSQL shared by every node, not {describe_url(database_url)}",
                          name="DATABASE_URL")  # fmt: skip


def ensure_schema(engine: sa.Engine) -> bool:
    """Apply procrastinate's schema unless its table exists; True if it was applied now.

    Runs under a transaction-scoped advisory lock, so nodes starting at once apply it once.
    Raises LoadError if the database cannot be reached.
    """
    with translate_db_errors("applying procrastinate's schema"), engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        if conn.execute(sa.text("SELECT to_regclass('procrastinate_jobs')")).scalar() is not None:
            return False
        with conn.connection.dbapi_connection.cursor() as cur:  # no parameters: '%' in the SQL stays as it is
            cur.execute(SchemaManager.get_schema())
    log.info("applied procrastinate's schema")
    return True


def _chunks(symbols: Sequence[str], size: int) -> list[list[str]]:
    return [list(symbols[i : i + size]) for i in range(0, len(symbols), size)]


def _outcome_json(o: SymbolOutcome) -> dict:
    return {"symbol": o.symbol, "rows_fetched": o.rows_fetched, "rows_loaded": o.rows_loaded,
            "rows_rejected": o.rows_rejected, "newest_ts": o.newest_ts.isoformat() if o.newest_ts else None,
            "error": o.error, "transient": o.transient, "interrupted": o.interrupted, "served_by": o.served_by}  # fmt: skip


def _outcome(d: dict) -> SymbolOutcome:
    ts = datetime.fromisoformat(d["newest_ts"]) if d.get("newest_ts") else None
    return SymbolOutcome(d["symbol"], rows_fetched=d["rows_fetched"], rows_loaded=d["rows_loaded"],
                         rows_rejected=d["rows_rejected"], newest_ts=ts, error=d["error"], transient=d["transient"],
                         interrupted=d["interrupted"], served_by=d["served_by"])  # fmt: skip


def _blueprint(retries: int = CHUNK_RETRIES) -> procrastinate.Blueprint:
    """The chunk task, a thin shell around :meth:`ClusterNode.run_chunk` (the node comes from the worker's context).

    On the attempt procrastinate will not retry (the same :class:`procrastinate.RetryStrategy` decides),
    the chunk is recorded as failed (:meth:`ClusterNode.fail_chunk`) before the error goes on to
    procrastinate, which marks the job ``failed``.
    """
    bp = procrastinate.Blueprint()
    strategy = procrastinate.RetryStrategy(max_attempts=retries, wait=1, retry_exceptions={ChunkReturned, LoadError})

    @bp.task(name="fetch_chunk", pass_context=True, retry=strategy)
    def fetch_chunk(context, *, run_id: int, chunk_no: int, job: str, provider: str, fallback: str | None, interval: str,
                    symbols: list[str]) -> dict:  # fmt: skip
        node: ClusterNode = context.additional_context["node"]
        try:
            return node.run_chunk(run_id, chunk_no, job=job, provider=provider, fallback=fallback, interval=interval,
                                  symbols=symbols)  # fmt: skip
        except Exception as exc:
            if strategy.get_retry_decision(exception=exc, job=context.job) is not None:
                raise  # procrastinate runs it again
            reason = f"{type(exc).__name__} on its attempt {context.job.attempts + 1} (no retry left): {exc}"
            node.fail_chunk(run_id, chunk_no, symbols, provider=provider, reason=reason,
                            outcomes=exc.outcomes if isinstance(exc, ChunkReturned) else ())  # fmt: skip
            raise

    return bp


class ClusterNode:
    """This process as a node: procrastinate workers, the stalled-chunk sweep and the heartbeat on one
    event loop in a background thread; :meth:`dispatch` for the scheduler's fires.

    - ``pipeline_for(provider, fallback)``: the process's cycle route (:meth:`app.App.pipeline`).
    - ``role``: ``"scheduler"`` (``--cluster``) or ``"worker"`` (``--worker``), shown by :func:`cluster_status`.
    - ``workers``: chunks run at once.
    - ``stop``: set by a signal; ``shutdown_timeout_seconds``: how long running chunks may take then.
    - ``stalled_after_seconds``: a node silent this long is dead (heartbeats every fifth of it).
    - ``chunk_retries``: runs of a chunk after its first, at most (:data:`CHUNK_RETRIES`).
    - ``redact``: cleans error text when the provider's pipeline (whose ``redact`` is used first)
      cannot be built on this node; by default it masks credential URL parameters.
    """

    def __init__(self, engine: sa.Engine, database_url: str, pipeline_for: Callable[[str, str | None], EtlPipeline], *,
                 role: str, workers: int, stop: threading.Event, shutdown_timeout_seconds: float = 30.0,
                 stalled_after_seconds: float = STALLED_AFTER_SECONDS, chunk_symbols: int = CHUNK_SYMBOLS,
                 chunk_retries: int = CHUNK_RETRIES, redact: Callable[[str], str] | None = None,
                 clock: Clock | None = None) -> None:  # fmt: skip
        if workers < 1 or chunk_symbols < 1 or stalled_after_seconds <= 0 or chunk_retries < 1:
            raise ConfigError("cluster workers, chunk size, chunk retries and stalled-after must be positive", name="workers")
        self.engine = engine
        self.pipeline_for = pipeline_for
        self.role = role
        self.workers = workers
        self.stop = stop
        self.shutdown_timeout_seconds = shutdown_timeout_seconds
        self.stalled_after_seconds = stalled_after_seconds
        self.heartbeat_seconds = max(0.5, stalled_after_seconds / 5)
        self.chunk_symbols = chunk_symbols
        self.redact = redact or Redactor()
        self.clock = clock or SystemClock()
        self.node = NODE
        self.app = procrastinate.App(
            connector=PsycopgConnector(conninfo=conninfo(database_url), min_size=1, max_size=workers + 3)
        )
        self.app.add_tasks_from(_blueprint(chunk_retries), namespace="marketpoll")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # -- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Apply the queue's schema if needed, register the node and start its workers. Raises LoadError."""
        ensure_schema(self.engine)
        now = self.clock.now()
        with translate_db_errors("registering the node"), self.engine.begin() as conn:
            conn.execute(cluster_nodes.delete().where(cluster_nodes.c.node == self.node))  # a pid reused after a restart
            conn.execute(cluster_nodes.insert().values(node=self.node, host=HOST, pid=int(self.node.rsplit(":", 1)[1]),
                                                       role=self.role, workers=self.workers, started_at=now,
                                                       last_seen=now))  # fmt: skip
        self._thread = threading.Thread(target=self._run_loop, name="cluster-node", daemon=True)
        self._thread.start()
        if not self._ready.wait(LOOP_TIMEOUT_SECONDS) or self._failure is not None:
            raise LoadError(f"the cluster node could not start its workers: {self._failure}", transient=True)
        log.info("cluster node %s (%s): %d worker(s) on every queue; a node silent for %gs is taken as dead",
                 self.node, self.role, self.workers, self.stalled_after_seconds)  # fmt: skip

    def close(self, timeout_seconds: float | None = None) -> None:
        """Wait (after ``stop`` was set) for the workers to finish or return their chunks; mark the node stopped."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout_seconds if timeout_seconds is not None else self.shutdown_timeout_seconds + 5)
            if self._thread.is_alive():
                log.warning("cluster node %s: workers still busy after the shutdown timeout", self.node)
        try:
            with translate_db_errors("marking the node stopped"), self.engine.begin() as conn:
                conn.execute(cluster_nodes.update().where(cluster_nodes.c.node == self.node)
                             .values(stopped_at=self.clock.now(), last_seen=self.clock.now()))  # fmt: skip
        except LoadError as exc:
            log.warning("could not mark node %s stopped: %s", self.node, exc)

    def _run_loop(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged; the process goes on stopping
            self._failure = exc
            self._ready.set()
            if not self.stop.is_set():
                log.exception("cluster node %s: its event loop failed", self.node)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        # sync chunk tasks run on the loop's default executor: room for every worker, the sweep and the heartbeat
        loop.set_default_executor(ThreadPoolExecutor(self.workers + 4, thread_name_prefix="chunk"))
        async with self.app.open_async():
            self._loop = loop
            worker = asyncio.create_task(self.app.run_worker_async(
                name=self.node, concurrency=self.workers, install_signal_handlers=False, wait=True,
                update_heartbeat_interval=self.heartbeat_seconds, stalled_worker_timeout=self.stalled_after_seconds,
                shutdown_graceful_timeout=self.shutdown_timeout_seconds + 2, fetch_job_polling_interval=1.0,
                additional_context={"node": self}, delete_jobs="successful",
            ))  # fmt: skip
            side = [asyncio.create_task(self._beat_forever()), asyncio.create_task(self._sweep_forever())]
            self._ready.set()
            while not self.stop.is_set() and not worker.done():
                await asyncio.sleep(0.2)
            for task in side:
                task.cancel()
            worker.cancel()  # procrastinate's graceful stop: running chunks finish within the timeout
            try:
                await worker
            except asyncio.CancelledError:
                pass
            self._loop = None

    async def _beat_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._beat)
            except LoadError as exc:
                log.warning("cluster heartbeat failed: %s", exc)
            await asyncio.sleep(self.heartbeat_seconds)

    def _beat(self) -> None:
        """Refresh ``last_seen`` and the queue-depth gauges."""
        with translate_db_errors("cluster heartbeat"), self.engine.begin() as conn:
            conn.execute(cluster_nodes.update().where(cluster_nodes.c.node == self.node).values(last_seen=self.clock.now()))
            depths = _queue_depths(conn)
        for queue, counts in depths.items():
            for status, n in counts.items():
                metrics.QUEUE_DEPTH.labels(queue, status).set(n)

    async def _sweep_forever(self) -> None:
        """Every third of the timeout: put back in the queue the chunks of nodes whose workers stopped beating,
        queue the chunks a dying node claimed but never queued, and settle the chunks whose job ended for good."""
        while True:
            await asyncio.sleep(max(0.5, self.stalled_after_seconds / 3))
            try:
                stalled = await self.app.job_manager.get_stalled_jobs(seconds_since_heartbeat=self.stalled_after_seconds)
            except Exception as exc:  # noqa: BLE001 - the database may be away for a moment: try again later
                log.warning("could not look for stalled chunks: %s", exc)
                continue
            try:
                await asyncio.to_thread(self._prune)
                for args in await asyncio.to_thread(self._orphans):
                    ids = await self._defer(args)
                    await asyncio.to_thread(self._record_job_ids, args[0]["run_id"], ids, [a["chunk_no"] for a in args])
                    log.warning("run %d (job %s): %d chunk(s) its node never queued (it died claiming the slot) queued now",
                                args[0]["run_id"], args[0]["job"], len(args))  # fmt: skip
            except LoadError as exc:
                log.warning("could not sweep old or orphaned chunks: %s", exc)
            try:
                await asyncio.to_thread(self._settle_lost_chunks)
            except LoadError as exc:
                log.warning("could not look for chunks whose job ended for good: %s", exc)
            for job in stalled:
                try:
                    await self.app.job_manager.retry_job(job)
                except Exception:  # noqa: BLE001,S112 - another node put it back first
                    continue
                metrics.STALLED_RETRIES.labels(job.queue).inc()
                log.warning("chunk %s of run %s (job %s) stalled on a dead node: back in the queue %s",
                            job.task_kwargs.get("chunk_no"), job.task_kwargs.get("run_id"), job.task_kwargs.get("job"),
                            job.queue)  # fmt: skip

    def _settle_lost_chunks(self) -> int:
        """Record as failed the chunks of ``running`` cycles whose procrastinate job ended ``failed``,
        ``cancelled`` or ``aborted`` without completing them; returns how many this node recorded.

        Safe when several nodes sweep at once: each chunk is recorded under the row lock on its
        cycle's ``etl_runs`` row, and only while it is not ``done`` (:meth:`fail_chunk`).
        """
        with translate_db_errors("looking for chunks whose job ended for good"), self.engine.connect() as conn:
            lost = conn.execute(sa.text(
                "SELECT c.run_id, c.chunk_no, c.symbols, c.attempts, c.job_id, j.status::text AS job_status, r.provider "
                "FROM cluster_chunks c JOIN etl_runs r ON r.id = c.run_id JOIN procrastinate_jobs j ON j.id = c.job_id "
                "WHERE c.status <> 'done' AND r.status = 'running' AND j.status::text IN :final "
                "ORDER BY c.run_id, c.chunk_no"
            ).bindparams(sa.bindparam("final", expanding=True)), {"final": list(FINAL_JOB_STATUSES)}).all()  # fmt: skip
        n = 0
        for x in lost:
            reason = f"its queue job {x.job_id} ended {x.job_status} after {x.attempts} run(s) and will not run again"
            n += self.fail_chunk(x.run_id, x.chunk_no, x.symbols.split(), provider=x.provider, reason=reason)
        return n

    def _orphans(self) -> list[list[dict]]:
        """Chunks claimed but never queued (their node died between the claim and the defer), taken by this node."""
        c, r = cluster_chunks.c, etl_runs.c
        old = self.clock.now() - timedelta(seconds=self.stalled_after_seconds)
        with translate_db_errors("looking for orphaned chunks"), self.engine.begin() as conn:
            rows = conn.execute(
                cluster_chunks.update().where(c.job_id.is_(None), c.status == "queued", c.queued_at < old)
                .values(job_id=0).returning(c.run_id, c.chunk_no, c.job_name, c.symbols)
            ).all()  # fmt: skip
            runs = {row.id: row for row in conn.execute(sa.select(r.id, r.provider, r.interval).where(
                r.id.in_({x.run_id for x in rows})))} if rows else {}  # fmt: skip
        by_run: dict[int, list[dict]] = {}
        for x in rows:
            run = runs[x.run_id]
            by_run.setdefault(x.run_id, []).append({"run_id": x.run_id, "chunk_no": x.chunk_no, "job": x.job_name,
                                                    "provider": run.provider, "fallback": None, "interval": run.interval,
                                                    "symbols": x.symbols.split()})  # fmt: skip
        return list(by_run.values())

    def _record_job_ids(self, run_id: int, ids: list[int], chunk_nos: list[int]) -> None:
        c = cluster_chunks.c
        with translate_db_errors("recording chunk jobs"), self.engine.begin() as conn:
            conn.execute(cluster_chunks.update().where(c.run_id == sa.bindparam("r"), c.chunk_no == sa.bindparam("n"))
                         .values(job_id=sa.bindparam("j")),
                         [{"r": run_id, "n": n, "j": j} for n, j in zip(chunk_nos, ids, strict=True)])  # fmt: skip

    def _prune(self) -> None:
        c = cluster_chunks.c
        with translate_db_errors("pruning done chunks"), self.engine.begin() as conn:
            conn.execute(cluster_chunks.delete().where(c.status == "done", c.finished_at < self.clock.now() - CHUNKS_KEPT))

    # -- the scheduler's side: claim a slot, queue its chunks -----------------------------------------

    def dispatch(self, job: JobDefinition, fire_time: datetime | None) -> int | None:
        """Claim ``job``'s slot at ``fire_time`` (None: a run-now, no slot) and queue its chunks.

        Returns the cycle's ``etl_runs.id``, or None when another node holds the slot. Raises
        LoadError if the database cannot be reached.
        """
        t0 = time.monotonic()
        symbols = list(job.symbols)
        cycle = CycleResult(job_name=job.name, provider=job.provider, started_at=self.clock.now(),
                            interval=job.bar_interval, symbols_requested=len(symbols))  # fmt: skip
        values = RunLedger.row_values(cycle, interval=job.bar_interval, symbols_requested=len(symbols),
                                      scheduled_for=fire_time)  # fmt: skip
        values["node"] = self.node
        chunks = _chunks(symbols, self.chunk_symbols)
        with translate_db_errors("claiming a slot"), self.engine.begin() as conn:
            run_id = conn.execute(claim_statement(self.engine.dialect.name, values)).scalar()
            if run_id is None:
                log.debug("job %s: slot %s already claimed by another node: skipped", job.name, values.get("scheduled_for"))
                return None
            conn.execute(cluster_chunks.insert(), [
                {"run_id": run_id, "chunk_no": i, "job_name": job.name, "symbols": " ".join(c), "status": "queued",
                 "queued_at": cycle.started_at} for i, c in enumerate(chunks)])  # fmt: skip
        claim_ms = (time.monotonic() - t0) * 1000
        metrics.SLOT_CLAIM_SECONDS.observe(claim_ms / 1000)
        if self._loop is None:
            raise LoadError("the cluster node is not running: cannot queue chunks", transient=True)
        args = [{"run_id": run_id, "chunk_no": i, "job": job.name, "provider": job.provider,
                 "fallback": job.fallback_provider, "interval": job.bar_interval, "symbols": c}
                for i, c in enumerate(chunks)]  # fmt: skip
        try:
            ids = asyncio.run_coroutine_threadsafe(self._defer(args), self._loop).result(LOOP_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - the queue is unreachable: the claimed cycle says so, and fails
            self._fail_run(run_id, cycle, f"could not queue its chunks: {exc}")
            raise LoadError(f"job {job.name}: could not queue chunks: {exc}", transient=True) from exc
        self._record_job_ids(run_id, ids, list(range(len(ids))))
        log.info("job %s: claimed slot %s (run %d) in %.1f ms; %d chunk(s) of %d symbol(s) queued on %s", job.name,
                 values.get("scheduled_for"), run_id, claim_ms, len(chunks), len(symbols), job.provider)  # fmt: skip
        return run_id

    async def _defer(self, args: list[dict]) -> list[int]:
        """Queue chunks (task arguments) on their provider's queue; their procrastinate job ids."""
        ids = []
        for a in args:  # one lock per chunk position: a chunk never overlaps the same chunk of the previous slot
            deferrer = self.app.configure_task(TASK, queue=a["provider"], lock=f"{a['job']}#{a['chunk_no']}")
            ids.append(await deferrer.defer_async(**a))
        return ids

    def _fail_run(self, run_id: int, cycle: CycleResult, error: str) -> None:
        cycle.run_id, cycle.error = run_id, error
        cycle.settle(self.clock.now())
        try:
            with translate_db_errors("writing etl_runs"), self.engine.begin() as conn:
                conn.execute(cluster_chunks.delete().where(cluster_chunks.c.run_id == run_id))
                conn.execute(etl_runs.update().where(etl_runs.c.id == run_id).values(
                    finished_at=cycle.finished_at, status=cycle.status.value, error_summary=error[:4000]))  # fmt: skip
        except LoadError as exc:
            log.error("run %d: could not record its failure: %s", run_id, exc)

    # -- the worker's side: run a chunk, complete the cycle ------------------------------------------

    def run_chunk(self, run_id: int, chunk_no: int, *, job: str, provider: str, fallback: str | None, interval: str,
                  symbols: list[str]) -> dict:  # fmt: skip
        """Run one chunk (on a worker thread) and complete its cycle if it is the last; returns a summary.

        Raises ChunkReturned when a shutdown leaves it undone, LoadError when the database is away
        (procrastinate retries both).
        """
        if self.stop.is_set():
            raise ChunkReturned(f"run {run_id} chunk {chunk_no}: node {self.node} is stopping")
        c = cluster_chunks.c
        with translate_db_errors("starting a chunk"), self.engine.begin() as conn:
            started = conn.execute(
                cluster_chunks.update().where(c.run_id == run_id, c.chunk_no == chunk_no, c.status != "done")
                .values(status="doing", node=self.node, attempts=c.attempts + 1, started_at=self.clock.now())
                .returning(c.attempts)
            ).scalar()  # fmt: skip
        if started is None:
            return {"run_id": run_id, "chunk_no": chunk_no, "skipped": "already done"}
        error = None
        try:
            outcomes, error = self.pipeline_for(provider, fallback).run_symbols(symbols, interval, run_id=run_id, job_name=job)
        except Exception as exc:  # noqa: BLE001 - a bug or a bad setting: every symbol of the chunk fails, the cycle completes
            log.exception("run %d chunk %d failed", run_id, chunk_no)
            why = self._redactor(provider)(f"chunk {chunk_no} of run {run_id} failed on {self.node}: {exc}")
            outcomes = [SymbolOutcome(s, error=why[:CHUNK_ERROR_MAX_CHARS]) for s in symbols]
        undone = len(outcomes) < len(symbols) or any(o.interrupted for o in outcomes)
        if undone and self.stop.is_set():
            with translate_db_errors("returning a chunk"), self.engine.begin() as conn:
                conn.execute(cluster_chunks.update().where(c.run_id == run_id, c.chunk_no == chunk_no, c.status == "doing")
                             .values(status="queued", node=None))  # fmt: skip
            raise ChunkReturned(f"run {run_id} chunk {chunk_no}: interrupted by shutdown on {self.node}, returned", outcomes)
        self.complete_chunk(run_id, chunk_no, outcomes, error)
        return {"run_id": run_id, "chunk_no": chunk_no, "symbols": len(symbols), "failed": sum(not o.ok for o in outcomes)}

    def fail_chunk(self, run_id: int, chunk_no: int, symbols: Sequence[str], *, provider: str, reason: str,
                   outcomes: Sequence[SymbolOutcome] = ()) -> bool:  # fmt: skip
        """Record a chunk that will not run again: each symbol without an outcome in ``outcomes`` (what
        its last attempt finished, if anything) fails with an error naming the chunk and ``reason``,
        redacted; the cycle completes as :meth:`complete_chunk` does if no other chunk is left.

        Never raises (the caller is on its way out with an error of its own); True if this call recorded
        the chunk, False if it was already done or could not be written (the sweep tries again).
        """
        error = self._redactor(provider)(f"chunk {chunk_no} of run {run_id} failed for good: {reason}")
        error = error.replace("\n", " ")[:CHUNK_ERROR_MAX_CHARS]
        finished = {o.symbol: o for o in outcomes if not o.interrupted}
        final = [finished.get(s) or SymbolOutcome(s, error=error) for s in symbols]
        try:
            recorded, _ = self._complete(run_id, chunk_no, final, None)
        except Exception as exc:  # noqa: BLE001 - the database is away: the sweep settles the chunk later
            log.error("%s; could not record it (%s): the sweep will", error, self.redact(str(exc)))
            return False
        if recorded:
            log.error("%s; %d of its %d symbol(s) recorded as failed", error, sum(not o.ok for o in final), len(final))
        return recorded

    def complete_chunk(self, run_id: int, chunk_no: int, outcomes: list[SymbolOutcome], error: str | None) -> bool:
        """Record a chunk's outcomes; the last chunk of a cycle writes the cycle's final row. True if it did.

        One transaction, under a row lock on the cycle's ``etl_runs`` row: chunks finishing at once
        complete the cycle exactly once, a chunk already done (a duplicate run) changes nothing, and a
        cycle no longer ``running`` is never written again.
        """
        return self._complete(run_id, chunk_no, outcomes, error)[1]

    def _complete(self, run_id: int, chunk_no: int, outcomes: list[SymbolOutcome], error: str | None) -> tuple[bool, bool]:
        """:meth:`complete_chunk`; (whether this call recorded the chunk, whether it settled the cycle)."""
        c = cluster_chunks.c
        now = self.clock.now()
        with translate_db_errors("completing a chunk"), self.engine.begin() as conn:
            run = conn.execute(sa.select(etl_runs).where(etl_runs.c.id == run_id).with_for_update()).mappings().first()
            done = conn.execute(
                cluster_chunks.update().where(c.run_id == run_id, c.chunk_no == chunk_no, c.status != "done")
                .values(status="done", node=self.node, finished_at=now,
                        outcomes={"error": error, "outcomes": [_outcome_json(o) for o in outcomes]})
                .returning(c.chunk_no)
            ).scalar()  # fmt: skip
            if done is None or run is None:
                return done is not None, False
            left = conn.execute(sa.select(sa.func.count()).where(c.run_id == run_id, c.status != "done")).scalar_one()
            if left:
                return True, False
            cycle = CycleResult(job_name=run["job_name"], provider=run["provider"], started_at=run["started_at"],
                                interval=run["interval"], symbols_requested=run["symbols_requested"], run_id=run_id)  # fmt: skip
            for (parts,) in conn.execute(sa.select(c.outcomes).where(c.run_id == run_id).order_by(c.chunk_no)):
                cycle.outcomes += [_outcome(d) for d in parts["outcomes"]]
                cycle.error = cycle.error or parts["error"]
            cycle.settle(now)
            ledger = RunLedger(self.engine, self._redactor(cycle.provider))
            settled = conn.execute(etl_runs.update().where(etl_runs.c.id == run_id, etl_runs.c.status == "running")
                                   .values(**ledger.final_values(cycle, keep_credited_rows=True))).rowcount  # fmt: skip
        if not settled:
            log.warning("run %d was settled already (%s): its last chunk %d left it as it was", run_id, run["status"], chunk_no)
            return True, False
        duration = (now - cycle.started_at).total_seconds()
        try:
            self.pipeline_for(cycle.provider, None).report_cycle(cycle, duration)
        except Exception as exc:  # noqa: BLE001 - the row is written; only the metrics and the cycle's log line are lost
            log.warning("run %d settled %s, but its cycle could not be reported: %s", run_id, cycle.status.value,
                        self.redact(str(exc)))  # fmt: skip
        return True, True

    def _redactor(self, provider: str) -> Callable[[str], str]:
        """The provider's pipeline's ``redact``, or this node's when that pipeline cannot be built here."""
        try:
            return self.pipeline_for(provider, None).redact
        except Exception:  # noqa: BLE001 - e.g. the provider's settings are missing on this node
            return self.redact


def _queue_depths(conn: sa.Connection) -> dict[str, dict[str, int]]:
    """``{queue: {"todo": n, "doing": m}}`` from procrastinate's jobs table ({} before its schema exists)."""
    if conn.execute(sa.text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
        return {}
    rows = conn.execute(sa.text("SELECT queue_name, status::text, count(*) FROM procrastinate_jobs "
                                "WHERE status IN ('todo', 'doing') GROUP BY 1, 2"))  # fmt: skip
    out: dict[str, dict[str, int]] = {}
    for queue, status, n in rows:
        out.setdefault(queue, {"todo": 0, "doing": 0})[status] = n
    return out


def cluster_status(engine: sa.Engine, *, now: datetime | None = None,
                   stalled_after_seconds: float = STALLED_AFTER_SECONDS) -> dict:  # fmt: skip
    """The cluster as JSON-ready data: ``nodes`` (node, role, workers, started_at, last_seen in UTC ISO 8601,
    seconds_since_seen, alive, chunks_in_flight), ``chunks_in_flight`` (at most :data:`STATUS_CHUNKS_MAX`),
    ``chunks_in_flight_total`` and ``queues`` (``{provider: {"todo": n, "doing": m}}``).

    A node is alive while it has not stopped and beat within ``stalled_after_seconds``. Nodes stopped
    or silent for more than a day are left out. Raises LoadError if the database cannot be reached.
    """
    now = now or SystemClock().now()
    n, c = cluster_nodes.c, cluster_chunks.c
    with translate_db_errors("reading the cluster's state"), engine.connect() as conn:
        recent = sa.select(cluster_nodes).where(n.last_seen > now - timedelta(days=1)).order_by(n.node)
        nodes = conn.execute(recent).mappings().all()
        per_node = dict(conn.execute(sa.select(c.node, sa.func.count()).where(c.status == "doing").group_by(c.node)).all())
        total = conn.execute(sa.select(sa.func.count()).where(c.status != "done")).scalar_one()
        listed = (sa.select(c.run_id, c.chunk_no, c.job_name, c.status, c.node, c.attempts, c.symbols, c.queued_at, c.started_at)
                  .where(c.status != "done").order_by(c.run_id, c.chunk_no).limit(STATUS_CHUNKS_MAX))  # fmt: skip
        chunks = conn.execute(listed).mappings().all()
        queues = _queue_depths(conn) if engine.dialect.name == "postgresql" else {}

    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t is not None else None

    out_nodes = []
    for row in nodes:
        since = (now - row["last_seen"]).total_seconds()
        out_nodes.append({"node": row["node"], "host": row["host"], "pid": row["pid"], "role": row["role"],
                          "workers": row["workers"], "started_at": iso(row["started_at"]), "last_seen": iso(row["last_seen"]),
                          "seconds_since_seen": round(since, 1), "stopped_at": iso(row["stopped_at"]),
                          "alive": row["stopped_at"] is None and since <= stalled_after_seconds,
                          "chunks_in_flight": per_node.get(row["node"], 0)})  # fmt: skip
    return {
        "nodes": out_nodes,
        "chunks_in_flight": [{"run_id": r["run_id"], "chunk": r["chunk_no"], "job": r["job_name"], "status": r["status"],
                              "node": r["node"], "attempts": r["attempts"], "symbols": len(r["symbols"].split()),
                              "queued_at": iso(r["queued_at"]), "started_at": iso(r["started_at"])} for r in chunks],
        "chunks_in_flight_total": total,
        "queues": queues,
    }  # fmt: skip
