"""The dashboard: ``GET /`` (a static page), its assets and ``GET /dashboard.json`` (its snapshot).

The page is plain HTML, CSS and JavaScript from ``api/static/``, served by marketpoll itself:
no CDN, no web font, nothing fetched from the internet (a Content-Security-Policy of
``'self'`` says so to the browser). At load it reads ``/dashboard.json``, then follows
``/events`` (Server-Sent Events, event ``bar``) to update prices and sparklines live, and
re-reads the snapshot every 15 s for jobs, sessions and freshness.

Routes (see :func:`routes`):

- ``GET /``: the page. Query ``symbols`` (comma list), ``provider``, ``interval`` are passed
  on by the page to ``/dashboard.json`` and ``/events``; ``exchanges`` (comma list) to
  ``/dashboard.json`` only, to show more exchanges than those the jobs or the run follow.
- ``GET /static/...``: its assets.
- ``GET /dashboard.json``: :func:`snapshot` as JSON; 503 ``{"error": ...}`` when the
  database cannot be read; 400 on a malformed filter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from db.engine import translate_db_errors
from db.tables import bars, latest_bars
from errors import MarketpollError
from models.bar import INTERVALS
from scheduler.calendar import Calendars, canonical_code

__all__ = ["routes", "snapshot", "read_series", "market_states", "STATIC_DIR", "SERIES_LIMIT", "SPARK_POINTS"]

log = logging.getLogger(__name__)

#: Where the page and its assets live.
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: At most this many series (the most recently updated first) in one snapshot.
SERIES_LIMIT = 100
#: Closes per series in a sparkline (the newest bars of the series).
SPARK_POINTS = 60
#: At most this many entries of ``recent_errors`` passed on to the page.
ERRORS_LIMIT = 5
#: At most this many exchanges asked for with ``?exchanges=`` (each calendar takes a moment to build).
EXCHANGES_LIMIT = 10
#: The page may only talk to the server it came from.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_FILTER_TOKEN = re.compile(r"^[A-Za-z0-9.\-/_^=:]{1,32}$")


def _iso_z(dt: datetime) -> str:
    """``dt`` in UTC as ISO 8601 with a ``Z`` (a naive value, as SQLite returns, is taken as UTC)."""
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.isoformat().replace("+00:00", "Z")


def _text(col: sa.ColumnElement) -> sa.ColumnElement:
    # decimal text as stored ('123.4500' on PostgreSQL), never a float round trip
    return sa.cast(col, sa.Text)


def read_series(
    engine: sa.Engine,
    *,
    symbols: Iterable[str] | None = None,
    provider: str | None = None,
    interval: str | None = None,
    limit: int = SERIES_LIMIT,
    points: int = SPARK_POINTS,
) -> list[dict]:
    """The newest bar of each series (from the ``latest_bars`` view) and its last closes.

    Returns at most ``limit`` series, the most recent newest bar first, each
    ``{"provider", "symbol", "interval", "ts", "open", "high", "low", "close", "volume",
    "closes"}``: ``ts`` the bar's start as ISO 8601 UTC with ``Z``, prices and volume decimal
    text (volume may be None), ``closes`` up to ``points`` pairs ``[ts, close]``, oldest first.
    Each sparkline read is one index range on the bars' primary key (``LIMIT points``).
    Raises :class:`~errors.LoadError` when the database cannot be read.
    """
    lb = latest_bars
    query = sa.select(lb.c.provider, lb.c.symbol, lb.c.interval, lb.c.ts,
                      *(_text(lb.c[name]).label(name) for name in ("open", "high", "low", "close", "volume")))  # fmt: skip
    wanted = [s for s in (symbols or ()) if s]
    if wanted:
        query = query.where(lb.c.symbol.in_(wanted))
    if provider:
        query = query.where(lb.c.provider == provider)
    if interval:
        query = query.where(lb.c.interval == interval)
    query = query.order_by(lb.c.ts.desc(), lb.c.symbol, lb.c.provider, lb.c.interval).limit(limit)
    spark = (
        sa.select(bars.c.ts, _text(bars.c.close).label("close"))
        .where(bars.c.provider == sa.bindparam("p"), bars.c.symbol == sa.bindparam("s"), bars.c.interval == sa.bindparam("i"))
        .order_by(bars.c.ts.desc())
        .limit(points)
    )
    out = []
    with translate_db_errors("reading the dashboard's series"), engine.connect() as conn:
        for row in conn.execute(query).mappings().all():
            closes = conn.execute(spark, {"p": row["provider"], "s": row["symbol"], "i": row["interval"]}).all()
            out.append({
                "provider": row["provider"], "symbol": row["symbol"], "interval": row["interval"], "ts": _iso_z(row["ts"]),
                "open": row["open"], "high": row["high"], "low": row["low"], "close": row["close"], "volume": row["volume"],
                "closes": [[_iso_z(ts), close] for ts, close in reversed(closes)],
            })  # fmt: skip
    return out


def market_states(calendars: Calendars, now: datetime, codes: Iterable[str], known: Mapping[str, dict]) -> list[dict]:
    """The session state of each exchange at ``now`` (UTC-aware), sorted by code.

    ``known``: states already computed (``GET /status``'s ``markets``), used as they are;
    ``codes``: further exchanges to compute (aliases such as ``CRYPTO`` count as their
    canonical code, once). Each entry is :meth:`MarketStatus.as_dict` (``session`` one of
    ``pre``, ``regular``, ``post``, ``closed``); an exchange whose calendar fails (an unknown
    code) is listed as ``{"exchange", "error"}``.
    """
    states = {canonical_code(code): dict(state, exchange=canonical_code(code)) for code, state in known.items()}
    for code in map(canonical_code, codes):
        if code in states:
            continue
        try:
            states[code] = calendars.get(code).status(now).as_dict()
        except MarketpollError as exc:
            states[code] = {"exchange": code, "error": str(exc)}
    return [states[code] for code in sorted(states)]


def snapshot(
    engine: sa.Engine,
    now: datetime,
    status: Mapping,
    calendars: Calendars,
    *,
    symbols: Iterable[str] | None = None,
    provider: str | None = None,
    interval: str | None = None,
    exchanges: Iterable[str] = (),
) -> dict:
    """Everything the page shows at load, JSON-ready.

    ``now``: UTC-aware; ``status``: the ``GET /status`` dict (``jobs``, ``polling``,
    ``markets``, ``recent_errors``; any may be missing). Returns ``{"now", "jobs", "polling",
    "markets", "series", "recent_errors", "intervals", "spark_points"}``: ``now`` ISO 8601 UTC
    with ``Z``; ``jobs`` as ``/status`` lists them (next fire in UTC and exchange time);
    ``polling`` the polling run's state (mode, job, next poll) or None; ``markets`` from
    :func:`market_states` for the exchanges ``/status`` reports, the jobs' and ``exchanges``;
    ``series`` from :func:`read_series`, each with ``age_seconds`` (now minus the newest bar's
    start); ``intervals`` the bar length in seconds per interval name. Raises
    :class:`~errors.LoadError` when the database cannot be read.
    """
    series = read_series(engine, symbols=symbols, provider=provider, interval=interval)
    for s in series:
        s["age_seconds"] = round((now - datetime.fromisoformat(s["ts"])).total_seconds(), 1)
    jobs = [j for j in status.get("jobs") or () if isinstance(j, Mapping)]
    job_exchanges = {j["exchange"] for j in jobs if j.get("exchange")}
    markets = market_states(calendars, now, [*sorted(job_exchanges), *exchanges], status.get("markets") or {})
    polling = status.get("polling")
    return {
        "now": _iso_z(now),
        "jobs": jobs,
        "polling": dict(polling) if isinstance(polling, Mapping) else None,
        "markets": markets,
        "series": series,
        "recent_errors": list(status.get("recent_errors") or ())[:ERRORS_LIMIT],
        "intervals": dict(INTERVALS),
        "spark_points": SPARK_POINTS,
    }


def _filters(request: Request) -> dict:
    """``symbols``/``provider``/``interval``/``exchanges`` from the query string; ValueError on a malformed one."""
    q = request.query_params

    def listed(name: str) -> list[str]:
        return [s.strip().upper() for s in q.get(name, "").split(",") if s.strip()]

    symbols, exchanges = listed("symbols"), listed("exchanges")
    for token in [*symbols, *exchanges, q.get("provider", ""), q.get("interval", "")]:
        if token and not _FILTER_TOKEN.match(token):
            raise ValueError(f"bad filter value {token[:40]!r}")
    if len(symbols) > 200 or len(exchanges) > EXCHANGES_LIMIT:
        raise ValueError(f"at most 200 symbols and {EXCHANGES_LIMIT} exchanges")
    return {"symbols": symbols, "provider": q.get("provider") or None, "interval": q.get("interval") or None,
            "exchanges": exchanges}  # fmt: skip


def _status_dict(ctx) -> dict:
    """``ctx.status()`` as a dict (it may answer ``(http code, dict)``, as scheduler/api.py's does)."""
    got = ctx.status()
    if isinstance(got, tuple):
        got = got[-1]
    return got if isinstance(got, Mapping) else {}


def routes(ctx) -> list:
    """The dashboard's routes, bound to ``ctx``.

    ``ctx`` gives ``.engine`` (SQLAlchemy), ``.clock`` (``now()`` UTC-aware), ``.status()``
    (the ``GET /status`` dict) and optionally ``.calendars`` (a :class:`Calendars` holding the
    user's overrides; without it a private one is built, without overrides, for exchanges
    that ``/status`` does not report). Returns ``[Route("/"), Route("/dashboard.json"),
    Mount("/static")]``.
    """
    calendars = getattr(ctx, "calendars", None) or Calendars()
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}

    async def index(_request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=headers)

    def _build(filters: dict) -> dict:
        return snapshot(ctx.engine, ctx.clock.now(), _status_dict(ctx), calendars, **filters)

    async def dashboard_json(request: Request) -> Response:
        try:
            filters = _filters(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            body = await run_in_threadpool(_build, filters)
        except MarketpollError as exc:
            log.warning("dashboard: %s", exc)
            return JSONResponse({"error": f"database: {exc}"}, status_code=503, headers={"Cache-Control": "no-store"})
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return [
        Route("/", index, methods=["GET"], name="dashboard"),
        Route("/dashboard.json", dashboard_json, methods=["GET"], name="dashboard_json"),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
