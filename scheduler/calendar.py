"""Market sessions: pre-market, regular and after-hours windows of each trading day.

Trading days, holidays, early closes and the regular open/close come from
pandas_market_calendars (rules and lists maintained upstream); this module adds only
how far pre-market and after-hours extend around the library's regular session, the
user's own overrides (holidays and early closes announced after the library's
release, from a TOML file), and the clock-free queries a scheduler needs. All
instants in and out are UTC-aware datetimes; the exchange's zone is used only to read
local times.

Known upstream gaps handled here:

- after-hours on early-close days is computed as the regular close plus the
  exchange's after-hours length (17:00 New York after a 13:00 close), not taken from
  the library's ``post`` column, which is wrong on some early closes
  (pandas_market_calendars issue #387);
- calendars kept as hand-written lists (XNSE) run out of years: past the last year
  with holiday data a warning is logged once per year and weekday rules are used, and
  if the library raises for a range the days are built from weekday rules too. A
  running service never stops on a calendar gap.
"""

from __future__ import annotations

import logging
import threading
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo

from errors import ConfigError, SchedulingError

__all__ = [
    "Session",
    "ExchangeSpec",
    "EXCHANGES",
    "TradingDay",
    "MarketCalendar",
    "MarketStatus",
    "CalendarOverrides",
    "Calendars",
]

log = logging.getLogger(__name__)
UTC = UTC
_SEARCH_DAYS = 400  # how far ahead to look for the next session before giving up


class Session(StrEnum):
    PRE = "pre"
    REGULAR = "regular"
    POST = "post"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """How marketpoll reads an exchange: which library calendar, and the extended sessions.

    ``pre_start``: local time pre-market begins (None: no pre-market session);
    ``post_minutes``: length of after-hours after the regular close, also after an early
    close (None: no after-hours session); ``always_open``: a 24/7 market.
    """

    code: str
    library_name: str
    pre_start: time | None = None
    post_minutes: int | None = None
    always_open: bool = False


#: Exchanges with extended sessions; any other code is looked up in the library as is
#: (regular session only). 04:00-09:30 / 09:30-16:00 / 16:00-20:00 New York; XNSE pre-open 09:00-09:15 IST.
EXCHANGES: dict[str, ExchangeSpec] = {
    "XNYS": ExchangeSpec("XNYS", "NYSE", time(4, 0), 240),
    "XNAS": ExchangeSpec("XNAS", "NASDAQ", time(4, 0), 240),
    "XWAR": ExchangeSpec("XWAR", "XWAR"),
    "XNSE": ExchangeSpec("XNSE", "XNSE", time(9, 0)),
    "24/7": ExchangeSpec("24/7", "24/7", always_open=True),
}
_ALIASES = {"NYSE": "XNYS", "NASDAQ": "XNAS", "CRYPTO": "24/7", "NSE": "XNSE", "GPW": "XWAR"}
_SESSION_NAMES = {"pre": "pre-market", "regular": "regular", "post": "after-hours"}


def _unknown_exchange(code: str) -> str:
    """One line: the bad code, marketpoll's codes and aliases, and where the library's other names are."""
    aliases = ", ".join(f"{a}={c}" for a, c in _ALIASES.items())
    return (
        f"unknown exchange {code!r}: use {', '.join(EXCHANGES)} (aliases {aliases}) or another "
        'pandas_market_calendars name, e.g. XLON, XTKS, XHKG (all: python -c "import pandas_market_calendars as m; '
        'print(m.get_calendar_names())")'
    )


@dataclass(frozen=True, slots=True)
class TradingDay:
    """One trading day's session windows (UTC instants). ``early_close``: regular ended before its usual time."""

    day: date
    open: datetime
    close: datetime
    pre_start: datetime | None = None
    post_end: datetime | None = None
    early_close: bool = False

    def windows(self) -> list[tuple[Session, datetime, datetime]]:
        """``(session, start, end)`` in time order; ``end`` is exclusive."""
        out = []
        if self.pre_start is not None and self.pre_start < self.open:
            out.append((Session.PRE, self.pre_start, self.open))
        out.append((Session.REGULAR, self.open, self.close))
        if self.post_end is not None and self.post_end > self.close:
            out.append((Session.POST, self.close, self.post_end))
        return out


@dataclass(frozen=True, slots=True)
class MarketStatus:
    """Where the market stands at ``at``. ``next_*`` are None for a 24/7 market."""

    exchange: str
    at: datetime
    session: Session
    next_market_open: datetime | None
    next_market_close: datetime | None
    next_session_boundary: datetime | None
    timezone: str

    @property
    def is_market_open(self) -> bool:
        return self.session is Session.REGULAR

    @property
    def is_pre_market(self) -> bool:
        return self.session is Session.PRE

    @property
    def is_after_hours(self) -> bool:
        return self.session is Session.POST

    def as_dict(self) -> dict:
        """JSON-ready; instants in ISO 8601 with the exchange's UTC offset (``at`` in UTC)."""
        tz = ZoneInfo(self.timezone) if self.timezone != "UTC" else UTC

        def iso(dt: datetime | None) -> str | None:
            return dt.astimezone(tz).isoformat() if dt else None

        return {
            "exchange": self.exchange,
            "at": self.at.astimezone(UTC).isoformat(),
            "session": self.session.value,
            "is_market_open": self.is_market_open,
            "is_pre_market": self.is_pre_market,
            "is_after_hours": self.is_after_hours,
            "next_market_open": iso(self.next_market_open),
            "next_market_close": iso(self.next_market_close),
            "next_session_boundary": iso(self.next_session_boundary),
            "timezone": self.timezone,
        }


@dataclass(frozen=True)
class CalendarOverrides:
    """The user's own holidays and early closes, per exchange code (local dates and times)."""

    holidays: Mapping[str, frozenset[date]] = field(default_factory=dict)
    early_closes: Mapping[str, Mapping[date, time]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> CalendarOverrides:
        """Read a TOML file (see README, "Calendar overrides"); None or a missing default file = none.

        Raises :class:`~errors.ConfigError` naming the file and the bad entry.
        """
        if path is None:
            return cls()
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"calendar overrides file {p} does not exist", name="MARKET_CALENDAR_FILE", value=str(p)) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"calendar overrides file {p}: {exc}", name="MARKET_CALENDAR_FILE", value=str(p)) from None
        holidays: dict[str, frozenset[date]] = {}
        early: dict[str, dict[date, time]] = {}
        for raw_code, entry in data.items():
            code = canonical_code(raw_code)
            try:
                holidays[code] = frozenset(date.fromisoformat(str(d)) for d in entry.get("holidays", []))
                early[code] = {
                    date.fromisoformat(str(d)): time.fromisoformat(str(t)) for d, t in entry.get("early_closes", {}).items()
                }
            except (AttributeError, ValueError, TypeError) as exc:
                raise ConfigError(f"calendar overrides file {p}, [{raw_code}]: {exc}", name="MARKET_CALENDAR_FILE") from None
        return cls(holidays, early)


def canonical_code(code: str) -> str:
    code = code.strip().upper()
    return _ALIASES.get(code, code)


class MarketCalendar:
    """Sessions of one exchange. Thread-safe; trading days are computed a year at a time and cached."""

    def __init__(self, code: str, overrides: CalendarOverrides | None = None) -> None:
        import pandas_market_calendars as mcal  # heavy import (pandas): only when sessions are needed

        self.code = canonical_code(code)
        self.spec = EXCHANGES.get(self.code) or ExchangeSpec(self.code, self.code)
        try:
            self._cal = mcal.get_calendar(self.spec.library_name)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ConfigError(_unknown_exchange(code), name="exchange", value=code) from exc
        self.tz: tzinfo = ZoneInfo(str(self._cal.tz)) if str(self._cal.tz) != "UTC" else UTC
        self.tz_name = str(self._cal.tz)
        overrides = overrides or CalendarOverrides()
        self._extra_holidays = overrides.holidays.get(self.code, frozenset())
        self._extra_early = dict(overrides.early_closes.get(self.code, {}))
        self._years: dict[int, dict[date, TradingDay]] = {}
        self._lock = threading.Lock()
        self._warned: set[int] = set()
        self.known_through = self._known_through()

    # -- building trading days ------------------------------------------------------------

    def _known_through(self) -> int | None:
        """Last year with holiday data, for list-kept calendars; None when rules cover the future."""
        if self.spec.always_open:
            return None
        try:
            stamps = self._cal.holidays().holidays
        except Exception:  # noqa: BLE001 - a calendar without a holiday list
            return None
        if len(stamps) == 0:
            return None
        last = int(str(max(stamps))[:4])
        return None if last >= 2100 else last

    def _year(self, year: int) -> dict[date, TradingDay]:
        with self._lock:
            days = self._years.get(year)
            if days is None:
                days = self._years[year] = self._build_year(year)
            return days

    def _build_year(self, year: int) -> dict[date, TradingDay]:
        if self.known_through is not None and year > self.known_through and year not in self._warned:
            self._warned.add(year)
            log.warning(
                "calendar %s has holiday data only through %d: %d uses weekday rules (add holidays in the "
                "calendar overrides file)", self.code, self.known_through, year,
            )  # fmt: skip
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sched = self._cal.schedule(f"{year}-01-01", f"{year}-12-31")
            rows = [
                (idx.date(), o.to_pydatetime(), c.to_pydatetime())
                for idx, o, c in zip(sched.index, sched["market_open"], sched["market_close"], strict=True)
            ]
        except Exception as exc:  # noqa: BLE001 - never let a calendar gap stop the service
            log.warning("calendar %s cannot give %d (%s): using weekday rules", self.code, year, exc)
            rows = self._weekday_rows(year)
        regular_close = self._cal.close_time.replace(tzinfo=None) if hasattr(self._cal, "close_time") else None
        out: dict[date, TradingDay] = {}
        for day, open_utc, close_utc in rows:
            if day in self._extra_holidays:
                continue
            if day in self._extra_early:
                close_utc = datetime.combine(day, self._extra_early[day], tzinfo=self.tz).astimezone(UTC)
            out[day] = self._trading_day(day, open_utc.astimezone(UTC), close_utc.astimezone(UTC), regular_close)
        return out

    def _weekday_rows(self, year: int) -> list[tuple[date, datetime, datetime]]:
        open_t, close_t = self._cal.open_time.replace(tzinfo=None), self._cal.close_time.replace(tzinfo=None)
        d, rows = date(year, 1, 1), []
        while d.year == year:
            if d.weekday() < 5 or self.spec.always_open:
                o = datetime.combine(d, open_t, tzinfo=self.tz)
                c = datetime.combine(d + timedelta(days=1) if close_t <= open_t else d, close_t, tzinfo=self.tz)
                rows.append((d, o.astimezone(UTC), c.astimezone(UTC)))
            d += timedelta(days=1)
        return rows

    def _trading_day(self, day: date, open_utc: datetime, close_utc: datetime, regular_close: time | None) -> TradingDay:
        local_close = close_utc.astimezone(self.tz)
        early = regular_close is not None and local_close.date() == day and local_close.time() < regular_close
        pre = datetime.combine(day, self.spec.pre_start, tzinfo=self.tz).astimezone(UTC) if self.spec.pre_start else None
        post = close_utc + timedelta(minutes=self.spec.post_minutes) if self.spec.post_minutes else None
        return TradingDay(day, open_utc, close_utc, pre, post, early)

    # -- queries --------------------------------------------------------------------------

    def trading_day(self, day: date) -> TradingDay | None:
        """The trading day on local date ``day``, or None (weekend, holiday)."""
        return self._year(day.year).get(day)

    def days_from(self, start: date) -> Iterator[TradingDay]:
        """Trading days from local date ``start`` on, for at most ~400 calendar days."""
        d = start
        for _ in range(_SEARCH_DAYS):
            td = self.trading_day(d)
            if td is not None:
                yield td
            d += timedelta(days=1)

    def windows_from(
        self, at: datetime, sessions: frozenset[Session] | None = None
    ) -> Iterator[tuple[Session, datetime, datetime]]:
        """Session windows that end after ``at``, in time order (those of ``sessions`` only, if given)."""
        at = at.astimezone(UTC)
        for td in self.days_from(at.astimezone(self.tz).date() - timedelta(days=1)):
            for sess, start, end in td.windows():
                if end > at and (sessions is None or sess in sessions):
                    yield sess, start, end

    def session_at(self, at: datetime) -> Session:
        if self.spec.always_open:
            return Session.REGULAR
        at = at.astimezone(UTC)
        sess, start, _ = next(self.windows_from(at), (Session.CLOSED, at, at))
        return sess if start <= at else Session.CLOSED

    def next_window(self, at: datetime, sessions: frozenset[Session]) -> tuple[Session, datetime, datetime]:
        """The window of one of ``sessions`` that contains ``at``, or else the next one.

        A 24/7 market is one endless regular window. Raises SchedulingError if none is found within ~400 days.
        """
        if self.spec.always_open:
            if Session.REGULAR not in sessions:
                raise SchedulingError(f"{self.code} trades around the clock: only the regular session exists")
            return Session.REGULAR, at - timedelta(days=1), at + timedelta(days=3650)
        missing = [s for s in (Session.PRE, Session.POST) if s in sessions and not self._has(s)]
        if missing and len(missing) == len(sessions):
            raise SchedulingError(
                f"{self.code} has no {' or '.join(_SESSION_NAMES[s.value] for s in missing)} session "
                f"(it has: {', '.join(_SESSION_NAMES[s.value] for s in Session if s is not Session.CLOSED and self._has(s))})"
            )
        for window in self.windows_from(at, sessions):
            return window
        raise SchedulingError(
            f"no {'/'.join(sorted(sessions))} session of {self.code} within {_SEARCH_DAYS} days of {at.isoformat()}"
        )

    def _has(self, session: Session) -> bool:
        """Whether this exchange has ``session`` at all (from its spec, not from a date)."""
        if session is Session.PRE:
            return self.spec.pre_start is not None
        if session is Session.POST:
            return bool(self.spec.post_minutes)
        return session is Session.REGULAR

    def status(self, at: datetime) -> MarketStatus:
        at = at.astimezone(UTC)
        if self.spec.always_open:
            return MarketStatus(self.code, at, Session.REGULAR, None, None, None, self.tz_name)
        next_open = next((s for sess, s, _ in self.windows_from(at, frozenset({Session.REGULAR})) if s > at), None)
        next_close = next((e for _, _, e in self.windows_from(at, frozenset({Session.REGULAR}))), None)
        boundary = next((b for _, s, e in self.windows_from(at) for b in (s, e) if b > at), None)
        return MarketStatus(self.code, at, self.session_at(at), next_open, next_close, boundary, self.tz_name)


class Calendars:
    """One :class:`MarketCalendar` per exchange code, built on first use with the shared overrides."""

    def __init__(self, overrides: CalendarOverrides | None = None) -> None:
        self.overrides = overrides or CalendarOverrides()
        self._cals: dict[str, MarketCalendar] = {}
        self._lock = threading.Lock()

    def get(self, code: str) -> MarketCalendar:
        key = canonical_code(code)
        with self._lock:
            cal = self._cals.get(key)
            if cal is None:
                cal = self._cals[key] = MarketCalendar(key, self.overrides)
            return cal
