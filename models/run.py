"""Results of ETL cycles and polling runs (plain values, no I/O)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

__all__ = ["RunStatus", "SymbolOutcome", "CycleResult", "PollingResults"]


class RunStatus(StrEnum):
    """Status of one cycle in ``etl_runs``."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some symbols failed, the others loaded
    FAILED = "failed"  # no symbol loaded
    INTERRUPTED = "interrupted"  # stopped by a shutdown signal before every symbol was done
    ABANDONED = "abandoned"  # its process died mid-cycle (set at the next start on the same host)


@dataclass(slots=True)
class SymbolOutcome:
    """What one symbol did in one cycle. ``error`` is a redacted, one-line reason."""

    symbol: str
    rows_fetched: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    newest_ts: datetime | None = None  # UTC, newest bar fetched
    error: str | None = None
    transient: bool = False  # the error may go away on a later cycle (throttle, timeout)
    retry_in_cycle: bool = False  # ... and soon enough to try again within this cycle
    interrupted: bool = False  # a shutdown stopped it before it was fetched or loaded
    served_by: str | None = None  # the fallback provider that served it (None: the cycle's own provider)
    no_data: list = field(default_factory=list)  # UTC (start, end) windows the provider said hold no data

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class CycleResult:
    """One Extract-Transform-Load cycle. Times are UTC-aware."""

    job_name: str
    provider: str
    started_at: datetime
    finished_at: datetime | None = None
    status: RunStatus = RunStatus.RUNNING
    outcomes: list[SymbolOutcome] = field(default_factory=list)
    run_id: int | None = None  # etl_runs.id, when the ledger row was written
    error: str | None = None  # a cycle-wide failure (database down), redacted
    interval: str | None = None  # bar interval of the cycle
    symbols_requested: int = 0

    @property
    def failed(self) -> list[SymbolOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def rows_fetched(self) -> int:
        return sum(o.rows_fetched for o in self.outcomes)

    @property
    def rows_loaded(self) -> int:
        return sum(o.rows_loaded for o in self.outcomes)

    @property
    def rows_rejected(self) -> int:
        return sum(o.rows_rejected for o in self.outcomes)

    def settle(self, finished_at: datetime, *, interrupted: bool = False) -> None:
        """Set ``finished_at`` and derive ``status`` from the outcomes.

        ``interrupted`` (a shutdown signal arrived) makes the cycle ``interrupted`` only if some
        requested symbol was left undone: a cycle whose every symbol loaded is ``succeeded``.
        """
        self.finished_at = finished_at
        ok = sum(1 for o in self.outcomes if o.ok)
        undone = len(self.outcomes) < self.symbols_requested or any(o.interrupted for o in self.outcomes)
        if interrupted and undone:
            self.status = RunStatus.INTERRUPTED
        elif self.error is not None or (self.outcomes and ok == 0):
            self.status = RunStatus.FAILED
        elif ok < len(self.outcomes):
            self.status = RunStatus.PARTIAL
        else:
            self.status = RunStatus.SUCCEEDED

    def error_summary(self) -> str | None:
        """One line per failed symbol ("IBMX: invalid symbol ..."), or None."""
        lines = [f"{o.symbol}: {o.error}" for o in self.failed]
        if self.error:
            lines.insert(0, self.error)
        return "\n".join(lines) or None


#: Cycles (and intervals, and failures) a polling run keeps for its summary; totals cover every cycle.
RECENT_CYCLES = 100


@dataclass(slots=True)
class PollingResults:
    """Totals of a polling run (the seed's results dict, see :meth:`as_dict`).

    Memory stays flat however long the run: running totals cover every cycle, and only the
    last :data:`RECENT_CYCLES` cycles' intervals and failures are kept (the full history is in
    ``etl_runs``).
    """

    strategy: str
    start_time: datetime
    end_time: datetime | None = None
    total_iterations: int = 0
    successful_cycles: int = 0
    #: cycles that were partial or failed for a reason other than a shutdown (they set exit status 1)
    failed_cycles_not_interrupted: int = 0
    records_processed: int = 0
    records_loaded: int = 0
    records_rejected: int = 0
    intervals_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_CYCLES))  # waits between cycles
    recent_failures: deque[dict] = field(default_factory=lambda: deque(maxlen=RECENT_CYCLES))
    failures_total: int = 0
    interrupted: bool = False

    def add(self, cycle: CycleResult, interval_seconds: float | None = None) -> None:
        """Count a finished cycle; ``interval_seconds`` since the previous cycle's start, if any."""
        self.total_iterations += 1
        n = self.total_iterations
        if cycle.status is RunStatus.SUCCEEDED:
            self.successful_cycles += 1
        elif cycle.status is not RunStatus.INTERRUPTED:
            self.failed_cycles_not_interrupted += 1
        self.records_processed += cycle.rows_fetched
        self.records_loaded += cycle.rows_loaded
        self.records_rejected += cycle.rows_rejected
        if interval_seconds is not None:
            self.intervals_seconds.append(interval_seconds)
        found = [{"cycle": n, "cycle_status": cycle.status.value, "symbol": o.symbol, "error": o.error} for o in cycle.failed]
        if cycle.error:
            found.append({"cycle": n, "cycle_status": cycle.status.value, "symbol": None, "error": cycle.error})
        self.failures_total += len(found)
        self.recent_failures.extend(found)

    def as_dict(self) -> dict:
        """The seed-compatible results dict; times ISO 8601 UTC, duration as H:MM:SS.ffffff.

        ``intervals_seconds`` and ``failures`` hold the last :data:`RECENT_CYCLES` cycles'
        entries; ``failures_total`` counts them all.
        """
        total = self.total_iterations
        end = self.end_time or self.start_time
        return {
            "strategy": self.strategy,
            "total_iterations": total,
            "successful_cycles": self.successful_cycles,
            "failed_cycles": total - self.successful_cycles,
            "total_records_processed": self.records_processed,
            "total_records_loaded": self.records_loaded,
            "total_records_rejected": self.records_rejected,
            "start_time": self.start_time.isoformat(),
            "end_time": end.isoformat(),
            "total_duration": str(end - self.start_time),
            "success_rate": round(100.0 * self.successful_cycles / total, 2) if total else 0.0,
            "partial_or_failed_cycles": self.failed_cycles_not_interrupted,
            "intervals_seconds": [round(s, 3) for s in self.intervals_seconds],
            "interrupted": self.interrupted,
            "failures_total": self.failures_total,
            "failures": list(self.recent_failures),
        }
