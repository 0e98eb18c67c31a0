"""Results of ETL cycles and polling runs (plain values, no I/O)."""

from __future__ import annotations

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
    INTERRUPTED = "interrupted"  # stopped by a shutdown signal


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
        """Set ``finished_at`` and derive ``status`` from the outcomes."""
        self.finished_at = finished_at
        ok = sum(1 for o in self.outcomes if o.ok)
        if interrupted:
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


@dataclass(slots=True)
class PollingResults:
    """Totals of a polling run (the seed's results dict, see :meth:`as_dict`)."""

    strategy: str
    start_time: datetime
    end_time: datetime | None = None
    cycles: list[CycleResult] = field(default_factory=list)
    intervals_seconds: list[float] = field(default_factory=list)  # waits chosen between cycles
    interrupted: bool = False

    @property
    def successful_cycles(self) -> int:
        return sum(1 for c in self.cycles if c.status is RunStatus.SUCCEEDED)

    def failures(self) -> list[dict]:
        """Every failed symbol (and cycle-wide error) with its cycle number and that cycle's status."""
        out = []
        for i, c in enumerate(self.cycles, start=1):
            out += [{"cycle": i, "cycle_status": c.status.value, "symbol": o.symbol, "error": o.error} for o in c.failed]
            if c.error:
                out.append({"cycle": i, "cycle_status": c.status.value, "symbol": None, "error": c.error})
        return out

    def as_dict(self) -> dict:
        """The seed-compatible results dict; times ISO 8601 UTC, duration as H:MM:SS.ffffff."""
        total = len(self.cycles)
        end = self.end_time or self.start_time
        return {
            "strategy": self.strategy,
            "total_iterations": total,
            "successful_cycles": self.successful_cycles,
            "failed_cycles": total - self.successful_cycles,
            "total_records_processed": sum(c.rows_fetched for c in self.cycles),
            "total_records_loaded": sum(c.rows_loaded for c in self.cycles),
            "total_records_rejected": sum(c.rows_rejected for c in self.cycles),
            "start_time": self.start_time.isoformat(),
            "end_time": end.isoformat(),
            "total_duration": str(end - self.start_time),
            "success_rate": round(100.0 * self.successful_cycles / total, 2) if total else 0.0,
            "intervals_seconds": [round(s, 3) for s in self.intervals_seconds],
            "interrupted": self.interrupted,
            "failures": self.failures(),
        }
