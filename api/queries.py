"""What the live API reads from ``bars``: catch-up after a gap, and prices over the last 24 hours.

Every read is bounded (:data:`CATCHUP_WINDOW`, :data:`CATCHUP_SERIES_MAX`, :data:`PRICE_SERIES_MAX`) and
reads ``bars`` through its primary key ``(provider, symbol, interval, ts)`` where it can (a catch-up finds the
series written since in ``series_last_write``, then probes ``bars`` once per series). Values are the stored decimal
text (exact on PostgreSQL; SQLite keeps a number, so its text may drop trailing zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import sqlalchemy as sa

from api.events import EventFilter
from db.engine import is_postgres, translate_db_errors
from db.tables import BAR_VALUES, bars, series_last_write

__all__ = ["bars_since", "CatchUp", "explain_bars_since", "prices", "all_series", "CATCHUP_SERIES_MAX", "CATCHUP_WINDOW",
           "PRICE_SERIES_MAX", "PRICE_WINDOW"]  # fmt: skip

#: Series one catch-up sends at most (the most recently written ones); the result says when it dropped older ones.
CATCHUP_SERIES_MAX = 10_000
#: How far back a catch-up reads at most (from now): an older ``since`` is clamped, and the result says so.
CATCHUP_WINDOW = timedelta(hours=2)
#: Series one price read covers at most (a ``prices`` room snapshot, a burst of live updates).
PRICE_SERIES_MAX = 10_000
#: What ``change_24h`` and ``volume_24h`` compare with: the newest bar vs the last bar at least this much older.
PRICE_WINDOW = timedelta(hours=24)

Series = tuple[str, str, str]


def _utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _text(value) -> str | None:
    if value is None:
        return None
    return str(value) if not isinstance(value, float) else repr(value)


def _iso_z(ts: datetime) -> str:
    return _utc(ts).replace(tzinfo=None).isoformat() + "Z"


class CatchUp(NamedTuple):
    """What :func:`bars_since` found: ``payloads`` (oldest write first); ``since``, the instant it read from
    (UTC, after the clamp); ``clamped``: the instant asked for was older than the window, so series changed
    only before ``since`` are not there; ``truncated``: more than :data:`CATCHUP_SERIES_MAX` series changed,
    so the ones changed longest ago are not there."""

    payloads: list[dict]
    since: datetime
    clamped: bool = False
    truncated: bool = False


def _catch_up_query(engine: sa.Engine, since: datetime, f: EventFilter, limit: int) -> sa.Select:
    w = series_last_write
    conds = [w.c.written_at >= (since if is_postgres(engine) else since.astimezone(UTC).replace(tzinfo=None))]
    if f.symbols is not None:
        conds.append(w.c.symbol.in_(sorted(f.symbols)))
    if f.provider is not None:
        conds.append(w.c.provider == f.provider)
    if f.interval is not None:
        conds.append(w.c.interval == f.interval)
    key = (w.c.provider, w.c.symbol, w.c.interval)
    recent = (  # the series written since, the most recently written first: one row each, bounded
        sa.select(*key, w.c.newest_ts, w.c.written_at.label("at"), w.c.rows_written.label("rows"))
        .where(*conds)
        .order_by(w.c.written_at.desc(), *key)
        .limit(limit)
        .subquery("recent")
    )
    b = bars.alias("b")
    same = (b.c.provider == recent.c.provider, b.c.symbol == recent.c.symbol, b.c.interval == recent.c.interval,
            b.c.ts <= recent.c.newest_ts)  # fmt: skip
    values = [sa.cast(b.c[v], sa.Text).label(v) for v in BAR_VALUES]
    cols = [recent.c.provider, recent.c.symbol, recent.c.interval]
    order = (recent.c.at, recent.c.provider, recent.c.symbol, recent.c.interval)
    if is_postgres(engine):
        # each series' newest bar (at or before newest_ts: a bar deleted since does not hide the series), one
        # backward primary-key probe per series; LIMIT 1 keeps the lateral a subquery (never a join over bars)
        newest = sa.select(b.c.ts, *values).where(*same).order_by(b.c.ts.desc()).limit(1).lateral("n")
        q = sa.select(*cols, newest.c.ts, *(newest.c[v] for v in BAR_VALUES), recent.c.rows)
        return q.join_from(recent, newest, sa.true()).order_by(*order)
    b2 = bars.alias("b2")
    at = (
        sa.select(sa.func.max(b2.c.ts))
        .where(*(b2.c[c] == recent.c[c] for c in ("provider", "symbol", "interval")), b2.c.ts <= recent.c.newest_ts)
        .scalar_subquery()
    )
    on = sa.and_(*same[:3], b.c.ts == at)
    return sa.select(*cols, b.c.ts, *values, recent.c.rows).join_from(recent, b, on).order_by(*order)


def explain_bars_since(engine: sa.Engine, since: datetime, event_filter: EventFilter | None = None) -> str:
    """PostgreSQL's plan of :func:`bars_since`'s statement for ``since`` (not clamped), as it would run it."""
    q = _catch_up_query(engine, _utc(since), event_filter or EventFilter(), CATCHUP_SERIES_MAX + 1).compile(engine)
    with translate_db_errors("explaining the catch-up"), engine.connect() as conn:
        return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(q), q.params))


def bars_since(
    engine: sa.Engine, since: datetime, event_filter: EventFilter | None = None, *,
    window: timedelta | None = CATCHUP_WINDOW, now: datetime | None = None,
) -> CatchUp:  # fmt: skip
    """The series written at or after ``since`` (UTC), as payloads (:func:`etl.events.bar_payload`'s shape).

    One per series: its newest bar and ``rows`` = the rows inserted or changed by the series' *last* write
    (earlier writes since ``since`` are not added in: a series written by three loads during the gap says
    what the third wrote); oldest write first. Not every bar: a consumer that needs each one reads ``bars`` by
    ``ts``. The series come from ``series_last_write`` (one row per series, which the loader keeps in the
    transaction that writes the bars): its ``written_at`` is the writing transaction's start, so callers pass
    ``since`` early enough to cover a transaction that began before it and committed after.

    Bounded: ``since`` is clamped to ``now - window`` (default :data:`CATCHUP_WINDOW`; None: not clamped,
    for a caller whose ``since`` is its own recent past, such as the LISTEN connection); at most
    :data:`CATCHUP_SERIES_MAX` series sent, the most recently written ones. Either bound is told in the result
    (:class:`CatchUp`). ``bars`` itself is read only by one primary-key probe per series sent, whatever its
    size, statistics or ``since``. Raises LoadError.
    """
    since = _utc(since)
    clamped = False
    if window is not None:
        floor = _utc(now or datetime.now(UTC)) - window
        if since < floor:
            since, clamped = floor, True
    q = _catch_up_query(engine, since, event_filter or EventFilter(), CATCHUP_SERIES_MAX + 1)
    with translate_db_errors("reading bars to catch up"), engine.connect() as conn:
        rows = conn.execute(q).all()
    truncated = len(rows) > CATCHUP_SERIES_MAX
    rows = rows[-CATCHUP_SERIES_MAX:]  # the series written longest ago go first
    found = [{"provider": p, "symbol": s, "interval": i, "ts": _iso_z(ts), "open": _text(o), "high": _text(h), "low": _text(lo),
              "close": _text(c), "volume": _text(v), "rows": int(n)} for p, s, i, ts, o, h, lo, c, v, n in rows]  # fmt: skip
    return CatchUp(found, since, clamped, truncated)


_SKIP_SCAN = """
WITH RECURSIVE s AS (
    (SELECT provider, symbol, interval FROM bars ORDER BY provider, symbol, interval LIMIT 1)
    UNION ALL
    SELECT n.provider, n.symbol, n.interval FROM s CROSS JOIN LATERAL (
        SELECT provider, symbol, interval FROM bars b
        WHERE (b.provider, b.symbol, b.interval) > (s.provider, s.symbol, s.interval)
        ORDER BY provider, symbol, interval LIMIT 1) n
)
SELECT provider, symbol, interval FROM s LIMIT %s
"""

_PRICES_PG = """
SELECT k.provider, k.symbol, k.interval, n.ts, n.close::text, r.close::text, v.vol::text
FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(provider, symbol, interval)
CROSS JOIN LATERAL (SELECT ts, close FROM bars b WHERE b.provider = k.provider AND b.symbol = k.symbol
                    AND b.interval = k.interval ORDER BY ts DESC LIMIT 1) n
LEFT JOIN LATERAL (SELECT close FROM bars b WHERE b.provider = k.provider AND b.symbol = k.symbol
                   AND b.interval = k.interval AND b.ts <= n.ts - interval '24 hours' ORDER BY ts DESC LIMIT 1) r ON true
LEFT JOIN LATERAL (SELECT sum(volume) AS vol FROM bars b WHERE b.provider = k.provider AND b.symbol = k.symbol
                   AND b.interval = k.interval AND b.ts > n.ts - interval '24 hours' AND b.ts <= n.ts) v ON true
"""


def all_series(engine: sa.Engine, limit: int = PRICE_SERIES_MAX) -> list[Series]:
    """Every stored series (provider, symbol, interval), at most ``limit``; raises LoadError.

    PostgreSQL walks the primary key (one probe per series, however long the histories)."""
    with translate_db_errors("listing series"), engine.connect() as conn:
        if is_postgres(engine):
            return [tuple(r) for r in conn.exec_driver_sql(_SKIP_SCAN, (limit,)).all()]
        q = sa.select(bars.c.provider, bars.c.symbol, bars.c.interval).distinct().limit(limit)
        return [tuple(r) for r in conn.execute(q).all()]


def price_update(symbol: str, ts: datetime, close, ref_close, volume_24h) -> dict:
    """The ``price_update`` data of a series, pure: ``price`` (the newest close), ``change_24h`` and
    ``change_percent_24h`` against the last close at least 24 hours older (None without one),
    ``volume_24h`` (sum over the 24 hours ending at the newest bar; None without volume),
    ``timestamp`` (the newest bar's start, ISO 8601 UTC ``Z``). Numbers as JSON floats."""

    def num(value) -> Decimal | None:
        try:
            return Decimal(str(value)) if value is not None else None
        except InvalidOperation:
            return None

    price, ref, vol = num(close), num(ref_close), num(volume_24h)
    change = price - ref if price is not None and ref is not None else None
    pct = change / ref * 100 if change is not None and ref else None
    return {"symbol": symbol, "price": float(price) if price is not None else None,
            "change_24h": float(change) if change is not None else None,
            "change_percent_24h": round(float(pct), 4) if pct is not None else None,
            "volume_24h": float(vol) if vol is not None else None, "timestamp": _iso_z(ts)}  # fmt: skip


def prices(engine: sa.Engine, series: Sequence[Series]) -> dict[Series, tuple[datetime, dict]]:
    """For each of ``series`` (at most :data:`PRICE_SERIES_MAX`) with bars: (newest ts, :func:`price_update` data).

    One statement on PostgreSQL (three primary-key probes per series); raises LoadError."""
    series = list(dict.fromkeys(series))[:PRICE_SERIES_MAX]
    if not series:
        return {}
    out = {}
    with translate_db_errors("reading prices"), engine.connect() as conn:
        if is_postgres(engine):
            cols = ([s[0] for s in series], [s[1] for s in series], [s[2] for s in series])
            for p, s, i, ts, close, ref, vol in conn.exec_driver_sql(_PRICES_PG, cols).all():
                out[(p, s, i)] = (_utc(ts), price_update(s, ts, close, ref, vol))
            return out
        for p, s, i in series:
            key = (bars.c.provider == p, bars.c.symbol == s, bars.c.interval == i)
            newest = conn.execute(sa.select(bars.c.ts, bars.c.close).where(*key).order_by(bars.c.ts.desc()).limit(1)).first()
            if newest is None:
                continue
            ts = _utc(newest.ts)
            edge = (ts - PRICE_WINDOW).replace(tzinfo=None)
            ref = conn.execute(
                sa.select(bars.c.close).where(*key, bars.c.ts <= edge).order_by(bars.c.ts.desc()).limit(1)
            ).scalar()
            vol = conn.execute(
                sa.select(sa.func.sum(bars.c.volume)).where(*key, bars.c.ts > edge, bars.c.ts <= newest.ts)
            ).scalar()
            out[(p, s, i)] = (ts, price_update(s, ts, newest.close, ref, vol))
    return out
