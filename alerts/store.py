"""The alert tables (``alert_rules``, ``alert_events``) and the reads evaluation needs (bars, jobs, etl_runs).

Every method translates database errors into :class:`~errors.LoadError` (``db.engine.translate_db_errors``).
Timestamps are stored and returned UTC-aware (SQLite keeps them naive UTC: they are read back as UTC).
Nothing here stores a secret beyond the rule's own ``webhook`` column; error texts arrive redacted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from alerts.base import DeliveryStatus, Firing, Rule, RuleKind
from alerts.evaluate import COUNTED_STATUSES, ERROR_RATE_WINDOW_CYCLES
from db.engine import translate_db_errors
from db.jobs import JobDefinition, JobStore
from db.tables import alert_events, alert_rules, bars, etl_runs
from errors import ConfigError
from models.bar import INTERVALS, Bar, interval_seconds

__all__ = ["AlertStore", "InvalidRule", "OpenFiring"]

log = logging.getLogger(__name__)

#: Longest error text kept in ``alert_events.error``, in characters.
MAX_ERROR_CHARS = 500


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)  # SQLite keeps UTC naive


@dataclass(frozen=True, slots=True)
class InvalidRule:
    """An ``alert_rules`` row that is not a valid rule (edited by hand): skipped, and reported."""

    name: str
    error: str


@dataclass(frozen=True, slots=True)
class OpenFiring:
    """The newest firing of a (rule, subject) that has not cleared: the rule is disarmed there."""

    event_id: int
    rule_id: int
    subject: str


class AlertStore:
    """Reads and writes the alert tables of ``engine`` (PostgreSQL or SQLite)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # -- rules ---------------------------------------------------------------------------

    def put(self, rule: Rule, now: datetime) -> tuple[Rule, bool]:
        """Store ``rule`` (``created_at`` = ``now``), replacing one of the same name. Returns the stored
        rule (with its id) and whether one was replaced; a replaced rule starts armed (a new id)."""
        row = {
            "name": rule.name, "kind": rule.kind.value, "condition": rule.condition, "subject": rule.subject,
            "threshold": rule.threshold, "exchange": rule.exchange, "sessions": " ".join(rule.sessions) or None,
            "webhook": rule.webhook, "email": ",".join(rule.emails) or None, "created_at": now,
        }  # fmt: skip
        with translate_db_errors("storing an alert rule"), self.engine.begin() as conn:
            replaced = conn.execute(sa.delete(alert_rules).where(alert_rules.c.name == rule.name)).rowcount > 0
            new_id = conn.execute(sa.insert(alert_rules).values(**row).returning(alert_rules.c.id)).scalar_one()
        return self._rule(row | {"id": new_id}), replaced

    def remove(self, name: str) -> bool:
        """Delete the rule ``name``; its events stay (history). False if there was none."""
        with translate_db_errors("removing an alert rule"), self.engine.begin() as conn:
            return conn.execute(sa.delete(alert_rules).where(alert_rules.c.name == name)).rowcount > 0

    def load(self) -> tuple[list[Rule], list[InvalidRule]]:
        """Every rule by name; rows that do not validate come back as :class:`InvalidRule`."""
        with translate_db_errors("reading alert rules"), self.engine.connect() as conn:
            rows = conn.execute(sa.select(alert_rules).order_by(alert_rules.c.name)).mappings().all()
        good, bad = [], []
        for row in rows:
            try:
                good.append(self._rule(row))
            except (ConfigError, ValueError) as exc:
                bad.append(InvalidRule(row["name"], str(exc)))
        return good, bad

    def count(self) -> int:
        with translate_db_errors("counting alert rules"), self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(alert_rules)).scalar_one()

    @staticmethod
    def _rule(row) -> Rule:
        return Rule(
            name=row["name"], kind=RuleKind(row["kind"]), webhook=row["webhook"],
            emails=tuple(e for e in (row["email"] or "").split(",") if e), condition=row["condition"],
            subject=row["subject"], threshold=row["threshold"], exchange=row["exchange"],
            sessions=tuple((row["sessions"] or "").split()), id=row["id"], created_at=_utc(row["created_at"]),
        )  # fmt: skip

    # -- events --------------------------------------------------------------------------

    def record_firing(self, firing: Firing) -> int | None:
        """Insert a firing as ``pending``; returns its ``alert_events.id``, or None when (rule, subject)
        already has an open firing (another process fired it first: the ``alert_events_one_open``
        index fences the firing, so it is recorded and delivered once)."""
        value = None if firing.value is None else Decimal(str(firing.value))
        insert = (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(alert_events)
        stmt = insert.values(
            rule_id=firing.rule.id, rule_name=firing.rule.name, subject=firing.subject, value=value,
            message=firing.text, fired_at=firing.fired_at, delivery_status=DeliveryStatus.PENDING.value, attempts=0,
        ).on_conflict_do_nothing(
            index_elements=["rule_id", "subject"], index_where=alert_events.c.cleared_at.is_(None)
        ).returning(alert_events.c.id)  # fmt: skip
        with translate_db_errors("recording an alert"), self.engine.begin() as conn:
            return conn.execute(stmt).scalar_one_or_none()

    def clear(self, rule_id: int, subject: str, at: datetime) -> bool:
        """Mark the open firing of (rule, subject) cleared at ``at`` (its condition stopped holding: the
        rule is armed again). False when none was open (another process cleared it first)."""
        with translate_db_errors("clearing an alert"), self.engine.begin() as conn:
            return bool(conn.execute(
                sa.update(alert_events).where(alert_events.c.rule_id == rule_id, alert_events.c.subject == subject,
                                              alert_events.c.cleared_at.is_(None)).values(cleared_at=at)
            ).rowcount)  # fmt: skip

    def record_delivery(
        self, event_id: int, status: DeliveryStatus, attempts: int, error: str | None, at: datetime | None
    ) -> None:
        """Write a firing's delivery outcome (``error`` already redacted; cut to 500 characters)."""
        if error is not None and len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
        with translate_db_errors("recording an alert delivery"), self.engine.begin() as conn:
            conn.execute(
                sa.update(alert_events).where(alert_events.c.id == event_id)
                .values(delivery_status=status.value, attempts=attempts, error=error, delivered_at=at)
            )  # fmt: skip

    def open_firings(self) -> list[OpenFiring]:
        """For each (rule, subject), its newest firing if it has not cleared (the disarmed ones)."""
        newest = (
            sa.select(sa.func.max(alert_events.c.id).label("id"))
            .group_by(alert_events.c.rule_id, alert_events.c.subject).scalar_subquery()
        )  # fmt: skip
        q = sa.select(alert_events.c.id, alert_events.c.rule_id, alert_events.c.subject).where(
            alert_events.c.id.in_(newest), alert_events.c.cleared_at.is_(None)
        )
        with translate_db_errors("reading alert state"), self.engine.connect() as conn:
            return [OpenFiring(r.id, r.rule_id, r.subject) for r in conn.execute(q)]

    def events(self, rule_name: str | None = None, limit: int = 100) -> list[dict]:
        """The newest ``limit`` firings (of ``rule_name``), newest first, as dicts (UTC instants)."""
        q = sa.select(alert_events).order_by(alert_events.c.id.desc()).limit(limit)
        if rule_name is not None:
            q = q.where(alert_events.c.rule_name == rule_name)
        with translate_db_errors("reading alert events"), self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [{**r, **{k: _utc(r[k]) for k in ("fired_at", "cleared_at", "delivered_at")}} for r in rows]

    # -- what evaluation reads -----------------------------------------------------------

    def newest_bars(self, symbols: Sequence[str]) -> list[Bar]:
        """The newest bar of every series (provider, interval) of ``symbols``."""
        if not symbols:
            return []
        newest = (
            sa.select(bars.c.provider, bars.c.symbol, bars.c.interval, sa.func.max(bars.c.ts).label("ts"))
            .where(bars.c.symbol.in_(list(symbols))).group_by(bars.c.provider, bars.c.symbol, bars.c.interval).subquery()
        )  # fmt: skip
        q = sa.select(bars).join(newest, sa.and_(*(bars.c[k] == newest.c[k] for k in ("provider", "symbol", "interval", "ts"))))
        with translate_db_errors("reading the newest bars"), self.engine.connect() as conn:
            return [self._bar(r) for r in conn.execute(q).mappings()]

    def bar_at_or_before(self, provider: str, symbol: str, interval: str, at: datetime) -> Bar | None:
        """The newest bar of the series with ``ts <= at`` (UTC), or None."""
        q = (
            sa.select(bars).where(bars.c.provider == provider, bars.c.symbol == symbol, bars.c.interval == interval,
                                  bars.c.ts <= at).order_by(bars.c.ts.desc()).limit(1)
        )  # fmt: skip
        with translate_db_errors("reading a reference bar"), self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else self._bar(row)

    def newest_bar_end(
        self, symbols: Sequence[str], *, provider: str | None = None, interval: str | None = None
    ) -> datetime | None:
        """When the newest bar of ``symbols`` (of ``provider``/``interval`` if given) ended: its ``ts`` plus
        its interval, UTC; None if there is none."""
        q = sa.select(bars.c.interval, sa.func.max(bars.c.ts)).where(bars.c.symbol.in_(list(symbols)))
        if provider is not None:
            q = q.where(bars.c.provider == provider)
        if interval is not None:
            q = q.where(bars.c.interval == interval)
        with translate_db_errors("reading the newest bar"), self.engine.connect() as conn:
            rows = conn.execute(q.group_by(bars.c.interval)).all()
        ends = [_utc(ts) + _length(iv) for iv, ts in rows if ts is not None]
        return max(ends, default=None)

    def job(self, name: str) -> JobDefinition | None:
        """The valid scheduled job ``name``, or None."""
        jobs, _invalid = JobStore(self.engine).load()
        return next((j for j in jobs if j.name == name), None)

    def recent_statuses(self, job_name: str, since: datetime) -> list[str]:
        """``etl_runs.status`` of the job's last finished cycles started at or after ``since``, newest first
        (at most :data:`~alerts.evaluate.ERROR_RATE_WINDOW_CYCLES`)."""
        q = (
            sa.select(etl_runs.c.status)
            .where(etl_runs.c.job_name == job_name, etl_runs.c.started_at >= since, etl_runs.c.status.in_(COUNTED_STATUSES))
            .order_by(etl_runs.c.started_at.desc(), etl_runs.c.id.desc()).limit(ERROR_RATE_WINDOW_CYCLES)
        )  # fmt: skip
        with translate_db_errors("reading a job's recent cycles"), self.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    @staticmethod
    def _bar(row) -> Bar:
        def text(v) -> str | None:
            return None if v is None else str(v)

        return Bar(row["provider"], row["symbol"], row["interval"], _utc(row["ts"]), text(row["open"]), text(row["high"]),
                   text(row["low"]), text(row["close"]), text(row["volume"]))  # fmt: skip


def _length(interval: str) -> timedelta:
    return timedelta(seconds=interval_seconds(interval) if interval in INTERVALS else 0)
