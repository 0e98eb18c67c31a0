"""The ``scheduled_jobs`` table: named jobs written by the CLI and read by the running scheduler.

A :class:`JobDefinition` validates itself, so a row edited by hand into something invalid
(a sub-second interval, an unknown bar interval, a name with control characters) is
reported by :meth:`JobStore.load` as an :class:`InvalidJob` instead of reaching the scheduler.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from db.engine import translate_db_errors
from db.tables import etl_runs, scheduled_jobs
from errors import ConfigError
from models.bar import INTERVALS, normalize_symbol

__all__ = [
    "JobDefinition",
    "InvalidJob",
    "JobStore",
    "LastRun",
    "last_successes",
    "recent_errors",
    "check_job_name",
    "SESSION_VALUES",
    "MAX_JOB_NAME_LENGTH",
    "MIN_JOB_INTERVAL_MINUTES",
    "MAX_JOB_INTERVAL_MINUTES",
]

#: Values of ``scheduled_jobs.session``.
SESSION_VALUES = ("pre", "regular", "post")
MAX_JOB_NAME_LENGTH = 100
#: Shortest job interval, in minutes: one second (fast 24/7 jobs are legitimate; less would
#: make APScheduler fire continuously).
MIN_JOB_INTERVAL_MINUTES = 1 / 60
#: Longest job interval, in minutes: one day. A job also fires at every session open, so a
#: longer interval would change nothing.
MAX_JOB_INTERVAL_MINUTES = 1440.0


def check_job_name(raw: str) -> str:
    """``raw`` without surrounding blanks, if it is a usable job name; else :class:`~errors.ConfigError`.

    1 to 100 characters; no whitespace and no control, format (bidi overrides, zero-width)
    or unassigned characters, which would hide or reorder text in a terminal or a log line.
    """
    name = raw.strip()
    if not name:
        raise ConfigError("job name is empty", name="name", value=raw)
    if len(name) > MAX_JOB_NAME_LENGTH:
        raise ConfigError(f"job name is longer than {MAX_JOB_NAME_LENGTH} characters: {name[:20]!r}...", name="name", value=raw)
    for ch in name:
        if ch.isspace():
            raise ConfigError(f"bad job name {name!r}: no spaces", name="name", value=raw)
        if unicodedata.category(ch).startswith("C"):
            raise ConfigError(f"bad job name {name!r}: control or invisible character U+{ord(ch):04X}", name="name", value=raw)
    return name


@dataclass(frozen=True, slots=True)
class JobDefinition:
    """A named job: poll ``symbols`` every ``interval_minutes`` inside ``session`` of ``exchange``.

    Validates itself (raises :class:`~errors.ConfigError` whose ``name`` is the bad field:
    ``name``, ``session``, ``symbols``, ``interval`` or ``bar_interval``); the exchange
    code is checked by the calendar that reads it.
    """

    name: str
    session: str  # pre | regular | post
    exchange: str
    provider: str
    symbols: tuple[str, ...]
    interval_minutes: float
    bar_interval: str = "5min"
    paused: bool = False
    updated_at: datetime | None = None  # set by the store; changes whenever the row is replaced
    fallback_provider: str | None = None  # serves a symbol ``provider`` fails terminally or cannot serve

    def __post_init__(self) -> None:
        if check_job_name(self.name) != self.name:
            raise ConfigError(f"bad job name {self.name!r}: surrounding blanks", name="name", value=self.name)
        if self.session not in SESSION_VALUES:
            raise ConfigError(f"unknown session {self.session!r} (one of {', '.join(SESSION_VALUES)})", name="session")
        iv = self.interval_minutes
        if not (isinstance(iv, int | float) and math.isfinite(iv) and MIN_JOB_INTERVAL_MINUTES <= iv <= MAX_JOB_INTERVAL_MINUTES):
            raise ConfigError(
                f"job interval must be from 1 second ({MIN_JOB_INTERVAL_MINUTES:.4f} min) to "
                f"{MAX_JOB_INTERVAL_MINUTES:g} minutes, got {iv!r}", name="interval", value=iv,
            )  # fmt: skip
        if not self.symbols:
            raise ConfigError("a job needs at least one symbol", name="symbols")
        try:
            bad = [s for s in self.symbols if normalize_symbol(s) != s]
        except ValueError as exc:
            raise ConfigError(str(exc), name="symbols") from None
        if bad:
            raise ConfigError(f"symbols must be upper case: {bad}", name="symbols")
        if self.bar_interval not in INTERVALS:
            raise ConfigError(f"unknown bar interval {self.bar_interval!r}", name="bar_interval", value=self.bar_interval)
        if not self.exchange or not self.provider:
            raise ConfigError("a job needs an exchange and a provider", name="exchange")


@dataclass(frozen=True, slots=True)
class InvalidJob:
    """A ``scheduled_jobs`` row that is not a valid job (edited by hand): skipped, and reported."""

    name: str
    error: str


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
            "fallback_provider": job.fallback_provider,
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

    def load(self) -> tuple[list[JobDefinition], list[InvalidJob]]:
        """Every row, by name: the valid jobs, and the rows that are not valid jobs (with the reason)."""
        with translate_db_errors("reading scheduled_jobs"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(scheduled_jobs).order_by(scheduled_jobs.c.name)).mappings().all()
        jobs, invalid = [], []
        for r in rows:
            try:
                jobs.append(JobDefinition(
                    r["name"], r["session"], r["exchange"], r["provider"], tuple((r["symbols"] or "").split()),
                    float(r["interval_minutes"]), r["bar_interval"], bool(r["paused"]), _utc(r["updated_at"]),
                    r["fallback_provider"],
                ))  # fmt: skip
            except (ConfigError, TypeError, ValueError) as exc:
                invalid.append(InvalidJob(str(r["name"]), str(exc)))
        return jobs, invalid

    def all(self) -> list[JobDefinition]:
        """The valid jobs, by name (see :meth:`load` for the invalid rows)."""
        return self.load()[0]

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
