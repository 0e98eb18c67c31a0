"""The ``etl_runs`` ledger: one row per cycle, written when it starts and updated when it ends.

A row left at ``running`` means the process died mid-cycle (``kill -9``, power loss);
a graceful shutdown marks it ``interrupted``. Error text is redacted by the caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import sqlalchemy as sa

from db.engine import translate_db_errors
from db.tables import etl_runs
from models.run import CycleResult

__all__ = ["RunLedger"]


class RunLedger:
    """Writes cycles to ``etl_runs``. ``redact`` cleans error text before it is stored."""

    def __init__(self, engine: sa.Engine, redact: Callable[[str], str] = lambda s: s) -> None:
        self.engine = engine
        self.redact = redact

    def start(self, cycle: CycleResult, *, interval: str, symbols_requested: int) -> int:
        """Insert the cycle's row as ``running``; sets and returns ``cycle.run_id``."""
        with translate_db_errors("writing etl_runs"), self.engine.begin() as conn:
            run_id = conn.execute(
                etl_runs.insert()
                .values(
                    job_name=cycle.job_name,
                    provider=cycle.provider,
                    interval=interval,
                    started_at=cycle.started_at,
                    status=cycle.status.value,
                    symbols_requested=symbols_requested,
                    pid=os.getpid(),
                )
                .returning(etl_runs.c.id)
            ).scalar_one()
        cycle.run_id = run_id
        return run_id

    def finish(self, cycle: CycleResult) -> None:
        """Write the cycle's final status and counts (the row must exist: call :meth:`start` first)."""
        failed = cycle.failed
        summary = cycle.error_summary()
        with translate_db_errors("writing etl_runs"), self.engine.begin() as conn:
            conn.execute(
                etl_runs.update()
                .where(etl_runs.c.id == cycle.run_id)
                .values(
                    finished_at=cycle.finished_at,
                    status=cycle.status.value,
                    symbols_succeeded=len(cycle.outcomes) - len(failed),
                    symbols_failed=len(failed),
                    failed_symbols=" ".join(o.symbol for o in failed) or None,
                    rows_fetched=cycle.rows_fetched,
                    rows_loaded=cycle.rows_loaded,
                    rows_rejected=cycle.rows_rejected,
                    error_summary=self.redact(summary)[:4000] if summary else None,
                )
            )
