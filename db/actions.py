"""The ``corporate_actions`` table: splits and dividends, one row per (provider, symbol, ex_date, kind).

::

    -- IBM's splits and dividends, newest first
    SELECT ex_date, kind, ratio, amount, provider FROM corporate_actions WHERE symbol = 'IBM' ORDER BY ex_date DESC;
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from db.engine import is_postgres, translate_db_errors
from db.tables import corporate_actions
from models.action import ACTION_KINDS, CorporateAction

__all__ = ["ActionStore"]


class ActionStore:
    """Upserts :class:`~models.action.CorporateAction` records (a re-sent action rewrites its values). Thread-safe."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if is_postgres(engine) else sqlite_insert

    def record(self, actions: Sequence[CorporateAction], *, seen_at: datetime) -> int:
        """Write ``actions`` in one transaction; returns how many were given. Raises LoadError, ValueError (bad kind)."""
        if not actions:
            return 0
        rows = {}
        for a in actions:
            if a.kind not in ACTION_KINDS:
                raise ValueError(f"corporate action kind must be one of {ACTION_KINDS}, got {a.kind!r}")
            rows[(a.provider, a.symbol, a.ex_date, a.kind)] = {
                "provider": a.provider, "symbol": a.symbol, "ex_date": a.ex_date, "kind": a.kind,
                "ratio": a.ratio, "amount": a.amount, "seen_at": seen_at.astimezone(UTC),
            }  # fmt: skip
        stmt = self._insert(corporate_actions)
        stmt = stmt.on_conflict_do_update(
            index_elements=["provider", "symbol", "ex_date", "kind"],
            set_={"ratio": stmt.excluded.ratio, "amount": stmt.excluded.amount, "seen_at": stmt.excluded.seen_at},
        )
        with translate_db_errors("writing corporate_actions"), self.engine.begin() as conn:
            conn.execute(stmt, list(rows.values()))
        return len(rows)

    def for_symbol(self, symbol: str) -> list[CorporateAction]:
        c = corporate_actions.c
        q = sa.select(c.provider, c.symbol, c.ex_date, c.kind, c.ratio, c.amount).where(c.symbol == symbol).order_by(c.ex_date)
        with translate_db_errors("reading corporate_actions"), self.engine.connect() as conn:
            return [CorporateAction(p, s, d, k, None if r is None else str(r), None if a is None else str(a))
                    for p, s, d, k, r, a in conn.execute(q).all()]  # fmt: skip
