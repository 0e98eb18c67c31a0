"""The ``etl_runs`` ledger: one row per cycle, honest at every instant.

- :meth:`RunLedger.start` inserts the row as ``running`` with the ``host`` and ``pid`` of
  the process that runs it. A named job's fire passes its slot (``scheduled_for``): the insert
  is then the slot's claim, fenced by the unique index on ``(job_name, scheduled_for)``; whoever
  inserts second gets no row (``None``) and must not run the cycle (see :func:`claim_statement`).
- While the cycle loads, each load transaction adds its own counts to the row *inside the
  same transaction* (:data:`CREDIT_SQL`, run by :mod:`etl.load`): a cycle killed with
  ``kill -9`` leaves a row whose counts are exactly what had committed.
- :meth:`RunLedger.finish` writes the final status and totals.
- :meth:`RunLedger.mark_abandoned` (at start-up) turns the ``running`` rows that dead
  processes of this host left behind into ``abandoned``; rows of other hosts are never
  judged from here.
- A cycle that cannot be recorded because the database is down is kept in a bounded
  backlog (:data:`BACKLOG_MAX` cycles) and written as soon as a later write succeeds.

Error text is redacted before it is stored.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from db.engine import translate_db_errors
from db.tables import cluster_chunks, etl_runs
from models.run import CycleResult

__all__ = ["RunLedger", "CREDIT_SQL", "credit_statement", "HOST", "NODE", "BACKLOG_MAX", "slot_of", "claim_statement"]

log = logging.getLogger(__name__)

#: This machine's name, stored next to the pid (a pid means nothing on another host).
HOST = socket.gethostname()
#: This process as a node of a cluster, ``host:pid`` (``etl_runs.node``, ``cluster_nodes.node``).
NODE = f"{HOST}:{os.getpid()}"
#: Cycles kept in memory while the database is down, to be recorded when it returns.
BACKLOG_MAX = 1000

#: Adds one load transaction's counts to its cycle's row (psycopg2 parameters); run in that transaction.
CREDIT_SQL = (
    "UPDATE etl_runs SET symbols_succeeded = symbols_succeeded + %(symbols)s, rows_fetched = rows_fetched + %(fetched)s, "
    "rows_loaded = rows_loaded + %(loaded)s, rows_rejected = rows_rejected + %(rejected)s WHERE id = %(run_id)s"
)


def credit_statement(run_id: int, *, symbols: int, fetched: int, loaded: int, rejected: int) -> sa.Update:
    """:data:`CREDIT_SQL` as a SQLAlchemy statement (the portable path)."""
    c = etl_runs.c
    return (
        etl_runs.update()
        .where(c.id == run_id)
        .values(symbols_succeeded=c.symbols_succeeded + symbols, rows_fetched=c.rows_fetched + fetched,
                rows_loaded=c.rows_loaded + loaded, rows_rejected=c.rows_rejected + rejected)
    )  # fmt: skip


def slot_of(fire_time: datetime) -> datetime:
    """A job's fire slot: APScheduler's scheduled fire time in UTC, cut to the whole second.

    Every node computes the same fire times from the calendar (not from its own ``now``), so
    nodes whose clocks are a little out of step still name a slot alike. Job intervals are at
    least 1 s, so two fires never share a slot.
    """
    return fire_time.astimezone(UTC).replace(microsecond=0)


def claim_statement(dialect: str, values: dict) -> sa.Insert:
    """``INSERT INTO etl_runs ... ON CONFLICT DO NOTHING RETURNING id``: yields no row when the slot
    (``values["job_name"]``, ``values["scheduled_for"]``) is already taken by another run.

    ``dialect`` is ``"postgresql"`` or ``"sqlite"`` (both have the conflict clause and the partial index).
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(etl_runs).values(**values).on_conflict_do_nothing().returning(etl_runs.c.id)


def _aware(ts: datetime) -> datetime:
    """``ts`` as read back: SQLite keeps naive UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class RunLedger:
    """Writes cycles to ``etl_runs``. ``redact`` cleans error text before it is stored. Thread-safe."""

    def __init__(self, engine: sa.Engine, redact: Callable[[str], str] = lambda s: s) -> None:
        self.engine = engine
        self.redact = redact
        self._backlog: deque[CycleResult] = deque()
        self._dropped = 0
        self._lock = threading.Lock()

    # -- one cycle ------------------------------------------------------------------------

    def start(self, cycle: CycleResult, *, interval: str, symbols_requested: int,
              scheduled_for: datetime | None = None) -> int | None:  # fmt: skip
        """Insert the cycle's row as ``running``; sets and returns ``cycle.run_id``. Raises :class:`~errors.LoadError`.

        With ``scheduled_for`` (a named job's fire time, UTC) the row claims that slot for this
        node: if another run already holds it, nothing is written and None is returned (the
        caller skips the cycle). A successful start first records the cycles kept while the database was down.
        """
        values = self.row_values(cycle, interval=interval, symbols_requested=symbols_requested, scheduled_for=scheduled_for)
        with translate_db_errors("writing etl_runs"), self.engine.begin() as conn:
            if scheduled_for is None:
                run_id = conn.execute(etl_runs.insert().values(**values).returning(etl_runs.c.id)).scalar_one()
            else:
                run_id = conn.execute(claim_statement(self.engine.dialect.name, values)).scalar()
                if run_id is None:
                    return None
        cycle.run_id = run_id
        cycle.interval = interval
        cycle.symbols_requested = symbols_requested
        self.flush_backlog()
        return run_id

    @staticmethod
    def row_values(cycle: CycleResult, *, interval: str, symbols_requested: int,
                   scheduled_for: datetime | None = None) -> dict:  # fmt: skip
        """The new ``running`` row of ``cycle`` (with its slot and this node when ``scheduled_for`` is given)."""
        values = dict(job_name=cycle.job_name, provider=cycle.provider, interval=interval, started_at=cycle.started_at,
                      status=cycle.status.value, symbols_requested=symbols_requested, pid=os.getpid(), host=HOST)  # fmt: skip
        if scheduled_for is not None:
            values.update(scheduled_for=slot_of(scheduled_for), node=NODE)
        return values

    def finish(self, cycle: CycleResult) -> None:
        """Write the cycle's final status and totals (its row must exist: :meth:`start` first). Raises LoadError."""
        with translate_db_errors("writing etl_runs"), self.engine.begin() as conn:
            conn.execute(etl_runs.update().where(etl_runs.c.id == cycle.run_id).values(**self._final_values(cycle)))

    def final_values(self, cycle: CycleResult, *, keep_credited_rows: bool = False) -> dict:
        """The columns :meth:`finish` writes. ``keep_credited_rows``: leave ``rows_loaded`` as the load
        transactions credited it (a clustered cycle whose chunk was retried after its node died: the
        first attempt's committed rows count once, the retry's unchanged rows not again)."""
        values = self._final_values(cycle)
        if keep_credited_rows:
            del values["rows_loaded"]
        return values

    def _final_values(self, cycle: CycleResult) -> dict:
        failed = cycle.failed
        summary = cycle.error_summary()
        return {
            "finished_at": cycle.finished_at,
            "status": cycle.status.value,
            "symbols_succeeded": len(cycle.outcomes) - len(failed),
            "symbols_failed": len(failed),
            "failed_symbols": " ".join(o.symbol for o in failed) or None,
            "rows_fetched": cycle.rows_fetched,
            "rows_loaded": cycle.rows_loaded,
            "rows_rejected": cycle.rows_rejected,
            "error_summary": self.redact(summary)[:4000] if summary else None,
            "served_by": " ".join(f"{o.symbol}={o.served_by}" for o in cycle.outcomes if o.served_by) or None,
        }

    # -- the database was down ------------------------------------------------------------

    def defer(self, cycle: CycleResult) -> None:
        """Keep a settled cycle whose row could not be written (or finished); :meth:`flush_backlog` writes it."""
        with self._lock:
            if len(self._backlog) >= BACKLOG_MAX:
                self._backlog.popleft()
                self._dropped += 1
            self._backlog.append(cycle)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def flush_backlog(self) -> int:
        """Record the deferred cycles (oldest first); returns how many were written. Raises LoadError."""
        with self._lock:
            if not self._backlog and not self._dropped:
                return 0
            cycles, dropped = list(self._backlog), self._dropped
            with translate_db_errors("writing etl_runs"), self.engine.begin() as conn:
                for c in cycles:
                    values = self._final_values(c)
                    if c.run_id is None:
                        conn.execute(etl_runs.insert().values(
                            job_name=c.job_name, provider=c.provider, interval=c.interval, started_at=c.started_at,
                            symbols_requested=c.symbols_requested, pid=os.getpid(), host=HOST, **values))  # fmt: skip
                    else:
                        conn.execute(etl_runs.update().where(etl_runs.c.id == c.run_id).values(**values))
            self._backlog.clear()
            self._dropped = 0
        log.info("recorded %d cycle(s) that ran while the database was unavailable%s", len(cycles),
                 f" ({dropped} older ones were dropped past the backlog of {BACKLOG_MAX})" if dropped else "")  # fmt: skip
        return len(cycles)

    # -- start-up -------------------------------------------------------------------------

    def mark_abandoned(self, now: datetime, *, alive: Callable[[int, datetime], bool], own_pid: int | None = None) -> int:
        """Mark ``abandoned`` the ``running`` rows of this host whose process is gone; returns how many.

        ``alive(pid, started_at)`` says whether the process that wrote a row (pid, the row's UTC start) still
        runs: a pid now held by a process started later was reused (see ``scheduler.streaming.pid_alive``).
        A row of ``own_pid`` (this process, before its first cycle: the pid was reused after a restart) is
        gone too. Rows of other hosts, and rows written before the ``host`` column existed, are left alone.
        """
        own_pid = os.getpid() if own_pid is None else own_pid
        c = etl_runs.c
        with translate_db_errors("reading etl_runs"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(c.id, c.pid, c.started_at).where(c.status == "running", c.host == HOST,
                                                             # a cluster's cycle lives on in its chunks, on other nodes
                                                             c.id.not_in(sa.select(cluster_chunks.c.run_id)))).all()  # fmt: skip
        dead = [rid for rid, pid, started in rows if pid is None or pid == own_pid or not alive(pid, _aware(started))]
        if not dead:
            return 0
        note = f"abandoned: its process on {HOST} died mid-cycle (kill -9, crash or power loss); counts are what had committed"
        with translate_db_errors("writing etl_runs"), self.engine.begin() as conn:
            conn.execute(etl_runs.update().where(c.id.in_(dead), c.status == "running")
                         .values(status="abandoned", finished_at=now, error_summary=note))  # fmt: skip
        log.warning("marked %d etl_runs row(s) left 'running' by dead processes as abandoned: %s", len(dead),
                    " ".join(map(str, dead)))  # fmt: skip
        return len(dead)
