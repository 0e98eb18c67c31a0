"""Read queries shared by the pipeline, the service and the tools."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from db.engine import translate_db_errors
from db.tables import bars

__all__ = ["watermarks"]


def watermarks(engine: sa.Engine, provider: str, interval: str, symbols: Sequence[str]) -> dict[str, datetime]:
    """Newest stored bar start (UTC) of each symbol that has bars, through the primary key."""
    q = (
        sa.select(bars.c.symbol, sa.func.max(bars.c.ts))
        .where(bars.c.provider == provider, bars.c.interval == interval, bars.c.symbol.in_(list(symbols)))
        .group_by(bars.c.symbol)
    )
    with translate_db_errors("reading watermarks"), engine.connect() as conn:
        rows = conn.execute(q).all()
    out = {}
    for symbol, ts in rows:
        if isinstance(ts, str):  # SQLite through an aggregate returns text
            ts = datetime.fromisoformat(ts)
        out[symbol] = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return out
