"""The ``rejected_bars`` audit trail: records that never became bars, and why.

One row per rejection: ``provider, symbol, interval``, ``raw_ts`` (the timestamp as the
provider wrote it; the UTC bar start for rejections made after conversion), ``reason``,
``excerpt`` (the record as received, at most 200 characters), ``seen_at`` (UTC) and the
``run_id`` of the ``etl_runs`` row of the cycle that saw it (NULL outside a cycle).

::

    -- what was rejected in the last day, and why
    SELECT seen_at, provider, symbol, interval, raw_ts, reason, excerpt
    FROM rejected_bars WHERE seen_at > now() - interval '1 day' ORDER BY seen_at DESC, id LIMIT 100;
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from db.engine import translate_db_errors
from db.tables import rejected_bars
from etl.transform import EXCERPT_MAX_CHARS, Rejection

__all__ = ["RejectStore", "MAX_STORED_PER_CALL"]

log = logging.getLogger(__name__)

#: Rows written by one :meth:`RejectStore.record` call at most; the full count is ``etl_runs.rows_rejected``.
MAX_STORED_PER_CALL = 1000
#: Longest ``reason`` stored, in characters (reasons quote the offending values).
REASON_MAX_CHARS = 500


def _text(value: object, limit: int) -> str:
    """``value`` as text PostgreSQL accepts: at most ``limit`` characters, no NUL, no lone surrogates."""
    text = value if isinstance(value, str) else str(value)
    text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        # a JSON "\ud800" escape decodes to a lone surrogate, which UTF-8 cannot encode
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class RejectStore:
    """Writes :class:`~etl.transform.Rejection` records to ``rejected_bars`` (PostgreSQL or SQLite). Thread-safe."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def record(
        self,
        rejections: Sequence[Rejection],
        *,
        provider: str,
        interval: str,
        seen_at: datetime,
        run_id: int | None = None,
    ) -> int:
        """Insert the first :data:`MAX_STORED_PER_CALL` of ``rejections`` in one statement and one
        transaction (all or none) and return how many rows were written. With a ``run_id``, a
        rejection that run recorded already (it fetched the symbol again) is not stored twice.

        The rest are not stored: the audit trail keeps examples, while the cycle's full count
        stays in ``etl_runs.rows_rejected``. ``seen_at`` must be timezone-aware (stored as UTC).
        Text is cut to :data:`~etl.transform.EXCERPT_MAX_CHARS` characters (``raw_ts``,
        ``excerpt``) or :data:`REASON_MAX_CHARS` (``reason``); NUL characters and lone
        surrogates, which PostgreSQL refuses, are written as backslash escapes.

        Raises ``ValueError`` for a naive ``seen_at`` and :class:`~errors.LoadError` when the
        database fails (``transient`` when the connection was lost).
        """
        if seen_at.tzinfo is None or seen_at.utcoffset() is None:
            raise ValueError("RejectStore.record: seen_at must be timezone-aware")
        if not rejections:
            return 0
        kept = rejections[:MAX_STORED_PER_CALL]
        if len(rejections) > len(kept):
            log.debug("storing %d of %d rejections of %s %s", len(kept), len(rejections), provider, interval)
        seen_utc = seen_at.astimezone(UTC)
        rows = [
            {
                "run_id": run_id,
                "provider": provider,
                "symbol": _text(r.symbol, EXCERPT_MAX_CHARS),
                "interval": interval,
                "raw_ts": _text(r.key, EXCERPT_MAX_CHARS),
                "reason": _text(r.reason, REASON_MAX_CHARS),
                "excerpt": _text(r.excerpt, EXCERPT_MAX_CHARS),
                "seen_at": seen_utc,
            }
            for r in kept
        ]
        with translate_db_errors("writing rejected_bars"), self.engine.begin() as conn:
            if run_id is not None:  # the run fetched these symbols before (a retry pass, a retried chunk)
                rows = self._new_to_run(conn, rows, run_id, provider, interval)
            if rows:
                conn.execute(rejected_bars.insert(), rows)
        return len(rows)

    @staticmethod
    def _new_to_run(conn: sa.Connection, rows: list[dict], run_id: int, provider: str, interval: str) -> list[dict]:
        """``rows`` less those ``run_id`` recorded already (same symbol, ``raw_ts``, reason and excerpt): a
        run that fetches a symbol again stores its rejections once. Copies within ``rows`` (a record the
        provider sent twice in one reply) are all kept."""
        r = rejected_bars.c
        known = {
            tuple(row) for row in conn.execute(
                sa.select(r.symbol, r.raw_ts, r.reason, r.excerpt).where(
                    r.run_id == run_id, r.provider == provider, r.interval == interval,
                    r.symbol.in_(sorted({row["symbol"] for row in rows})))
            )
        }  # fmt: skip
        if not known:
            return rows
        return [row for row in rows if (row["symbol"], row["raw_ts"], row["reason"], row["excerpt"]) not in known]
