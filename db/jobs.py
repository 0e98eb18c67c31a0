"""The ``scheduled_jobs`` table: named jobs written by the CLI and read by the running scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from db.engine import translate_db_errors
from db.tables import etl_runs, scheduled_jobs

__all__ = ["JobDefinition", "JobStore", "LastRun", "last_successes", "recent_errors"]


@dataclass(frozen=True, slots=True)
class JobDefinition:
    """A named job: poll ``symbols`` every ``interval_minutes`` inside ``session`` of ``exchange``."""

    name: str
    session: str  # pre | regular | post
    exchange: str
    provider: str
    symbols: tuple[str, ...]
    interval_minutes: float
    bar_interval: str = "5min"
    paused: bool = False
    updated_at: datetime | None = None  # set by the store; changes whenever the row is replaced


@dataclass(frozen=True, slots=True)
class LastRun:
    status: str
    started_at: datetime
    finished_at: datetime | None
    error_summary: str | None


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)  # SQLite keeps UTC naive


class JobStore:
    """CRUD on ``scheduled_jobs``; errors are :class:`~errors.LoadError`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def put(self, job: JobDefinition, now: datetime) -> bool:
        """Insert or replace ``job`` (by name); returns True when a job of that name was replaced."""
        row = {
            "session": job.session, "exchange": job.exchange, "provider": job.provider,
            "symbols": " ".join(job.symbols), "interval_minutes": job.interval_minutes,
            "bar_interval": job.bar_interval, "paused": job.paused, "updated_at": now,
        }  # fmt: skip
        with translate_db_errors("writing scheduled_jobs"), self.engine.begin() as conn:
            replaced = conn.execute(sa.update(scheduled_jobs).where(scheduled_jobs.c.name == job.name).values(**row)).rowcount > 0
            if not replaced:
                conn.execute(sa.insert(scheduled_jobs).values(name=job.name, created_at=now, **row))
        return replaced

    def remove(self, name: str) -> bool:
        with translate_db_errors("writing scheduled_jobs"), self.engine.begin() as conn:
            return conn.execute(sa.delete(scheduled_jobs).where(scheduled_jobs.c.name == name)).rowcount > 0

    def set_paused(self, name: str, paused: bool, now: datetime) -> bool:
        with translate_db_errors("writing scheduled_jobs"), self.engine.begin() as conn:
            q = sa.update(scheduled_jobs).where(scheduled_jobs.c.name == name).values(paused=paused, updated_at=now)
            return conn.execute(q).rowcount > 0

    def all(self) -> list[JobDefinition]:
        with translate_db_errors("reading scheduled_jobs"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(scheduled_jobs).order_by(scheduled_jobs.c.name)).mappings().all()
        return [
            JobDefinition(
                r["name"], r["session"], r["exchange"], r["provider"], tuple(r["symbols"].split()),
                float(r["interval_minutes"]), r["bar_interval"], bool(r["paused"]), _utc(r["updated_at"]),
            )
            for r in rows
        ]  # fmt: skip

    def last_runs(self) -> dict[str, LastRun]:
        """The newest ``etl_runs`` row of each job name."""
        newest = sa.select(etl_runs.c.job_name, sa.func.max(etl_runs.c.id).label("id")).group_by(etl_runs.c.job_name).subquery()
        q = sa.select(etl_runs).join(newest, etl_runs.c.id == newest.c.id)
        with translate_db_errors("reading etl_runs"), self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return {
            r["job_name"]: LastRun(r["status"], _utc(r["started_at"]), _utc(r["finished_at"]), r["error_summary"]) for r in rows
        }


def last_successes(engine: sa.Engine) -> dict[str, datetime]:
    """Start of each job's newest succeeded cycle (UTC)."""
    q = (
        sa.select(etl_runs.c.job_name, sa.func.max(etl_runs.c.started_at))
        .where(etl_runs.c.status == "succeeded")
        .group_by(etl_runs.c.job_name)
    )
    with translate_db_errors("reading etl_runs"), engine.connect() as conn:
        rows = conn.execute(q).all()
    return {name: _utc(ts if not isinstance(ts, str) else datetime.fromisoformat(ts)) for name, ts in rows}


def recent_errors(engine: sa.Engine, limit: int = 10) -> list[dict]:
    """The newest cycles that did not succeed, with their (redacted) error summaries."""
    q = (
        sa.select(etl_runs.c.id, etl_runs.c.job_name, etl_runs.c.status, etl_runs.c.started_at, etl_runs.c.error_summary)
        .where(etl_runs.c.status.in_(["partial", "failed", "interrupted"]))
        .order_by(etl_runs.c.id.desc())
        .limit(limit)
    )
    with translate_db_errors("reading etl_runs"), engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    return [{**r, "started_at": _utc(r["started_at"]).isoformat()} for r in rows]
