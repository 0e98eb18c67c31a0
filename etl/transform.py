"""Pure transforms: provider-local timestamps to UTC bar starts, and bar validation.

Nothing here does I/O or reads the clock: :func:`validate_bars` takes ``now`` as an argument.

Local times are converted strictly: a wall time skipped by a DST switch (02:30 New York on
2024-03-10) raises :class:`NonexistentLocalTime`, one that occurs twice (01:30 New York on
2024-11-03) raises :class:`AmbiguousLocalTime`. Neither is ever moved onto a neighbouring
real instant, where it would overwrite the bar that really starts there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from errors import TransformError
from models.bar import INTERVALS, Bar

__all__ = [
    "Rejection",
    "NonexistentLocalTime",
    "AmbiguousLocalTime",
    "zone",
    "local_to_utc",
    "LocalToUtc",
    "date_to_utc",
    "validate_bars",
    "dedupe_bars",
    "excerpt",
    "FUTURE_SKEW_SECONDS",
    "EXCERPT_MAX_CHARS",
    "NONEXISTENT_LOCAL_TIME",
    "AMBIGUOUS_LOCAL_TIME",
    "CONFLICT",
]

log = logging.getLogger(__name__)
UTC = UTC

#: Clock-skew allowance, in seconds, for the future check of :func:`validate_bars`: a bar may
#: start at most one interval plus this much after ``now``.
FUTURE_SKEW_SECONDS = 300.0
#: Longest :attr:`Rejection.excerpt`, in characters.
EXCERPT_MAX_CHARS = 200

#: Rejection reasons (prefixes for the ones that carry details).
NONEXISTENT_LOCAL_TIME = "nonexistent local time (DST gap)"
AMBIGUOUS_LOCAL_TIME = "ambiguous local time (DST fall-back)"
CONFLICT = "conflict: different values for one timestamp"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that did not become a bar (or a bar that may not be loaded).

    - ``key``: the record's timestamp as the provider wrote it (``"2024-03-10 02:30:00"``); for
      rejections made by :func:`validate_bars`, which only sees converted bars, the UTC bar start
      in ISO form (``"2024-03-10T07:30:00+00:00"``).
    - ``reason``: why, starting with a fixed phrase (see the reasons in :func:`validate_bars`
      and the provider modules); conflicts start with ``"conflict"``.
    - ``excerpt``: the record as received (compact JSON, a CSV line, or the bar's fields joined
      with commas), at most :data:`EXCERPT_MAX_CHARS` characters.
    """

    symbol: str
    key: str
    reason: str
    excerpt: str = ""


def excerpt(text: str) -> str:
    """``text`` cut to :data:`EXCERPT_MAX_CHARS` characters (for :attr:`Rejection.excerpt`)."""
    return text if len(text) <= EXCERPT_MAX_CHARS else text[:EXCERPT_MAX_CHARS]


class NonexistentLocalTime(TransformError, ValueError):
    """A local wall time that a DST switch skips (the spring-forward gap): no instant has it."""


class AmbiguousLocalTime(TransformError, ValueError):
    """A local wall time that occurs twice (the autumn fall-back hour): it names two instants."""


@lru_cache(maxsize=64)
def zone(name: str) -> tzinfo:
    """The IANA zone ``name`` (``"US/Eastern"``, ``"America/New_York"``); raises TransformError if unknown."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TransformError(f"unknown time zone {name!r}") from exc


_EXACT = object()  # LocalToUtc cache marker: this local hour holds a UTC-offset change
_HOUR_END = timedelta(hours=1, microseconds=-1)


class LocalToUtc:
    """:func:`local_to_utc` for many timestamps of one zone, with the UTC offset cached per local hour.

    An hour whose offset is the same at its first and last microsecond, with either ``fold``, is
    converted with the cached offset (about 5x faster than converting each timestamp). An hour
    that holds a DST switch (or any other offset change) is converted timestamp by timestamp
    with :func:`local_to_utc`, so its nonexistent and ambiguous wall times raise
    :class:`NonexistentLocalTime` / :class:`AmbiguousLocalTime` exactly as there. Other
    unparseable text raises ``ValueError``.
    """

    def __init__(self, tz: tzinfo, shift: timedelta = timedelta(0)) -> None:
        self.tz = tz
        self.shift = shift
        self._offsets: dict[str, object] = {}
        self._seen: dict[str, datetime] = {}  # text -> its instant (conversions that succeeded)

    @classmethod
    def shared(cls, tz: tzinfo, shift: timedelta = timedelta(0)) -> LocalToUtc:
        """One converter per (zone, shift) for the whole process, remembering each text it converted.

        Polls of many symbols send the same timestamps (every symbol's newest 100 minutes), again
        every cycle: after the first reply each is a dict lookup. A result depends only on the text,
        the zone and the shift, so it can be shared by threads; a text that raises is never
        remembered. Bounded: forgets everything past :data:`_SEEN_MAX` texts.
        """
        return _shared_converter(tz, shift)

    def __call__(self, text: str) -> datetime:
        seen = self._seen.get(text)
        if seen is not None:
            return seen
        delta = self._offsets.get(text[:13])  # 'YYYY-MM-DD HH'
        if delta is None:
            delta = self._learn(text)
        if delta is _EXACT:
            out = local_to_utc(text, self.tz, self.shift)
        else:
            # parsing with "+00:00" yields an aware UTC datetime; far cheaper than .replace(tzinfo=...)
            out = datetime.fromisoformat(text + "+00:00") - delta  # type: ignore[operator]
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
            self._offsets.clear()
        self._seen[text] = out
        return out

    def _learn(self, text: str) -> object:
        naive = datetime.fromisoformat(text)
        if naive.tzinfo is not None:
            raise ValueError(f"{text!r} carries a UTC offset; a naive local time was expected")
        start = naive.replace(minute=0, second=0, microsecond=0)
        end = start + _HOUR_END
        tz = self.tz
        offsets = {
            start.replace(tzinfo=tz).utcoffset(),
            start.replace(tzinfo=tz, fold=1).utcoffset(),
            end.replace(tzinfo=tz).utcoffset(),
            end.replace(tzinfo=tz, fold=1).utcoffset(),
        }
        if len(offsets) != 1 or None in offsets:
            delta: object = _EXACT
        else:
            delta = offsets.pop() - self.shift  # type: ignore[operator]
        self._offsets[text[:13]] = delta
        return delta


#: Texts a shared :class:`LocalToUtc` remembers at most (about 150 bytes each) before it starts afresh.
_SEEN_MAX = 20_000


@lru_cache(maxsize=64)
def _shared_converter(tz: tzinfo, shift: timedelta) -> LocalToUtc:
    return LocalToUtc(tz, shift)


def local_to_utc(text: str, tz: tzinfo, shift: timedelta = timedelta(0)) -> datetime:
    """Parse a naive local ``'YYYY-MM-DD HH:MM[:SS]'`` in ``tz`` and return the UTC instant plus ``shift``.

    The conversion follows ``tz``'s DST rules (zoneinfo): ``'2024-03-11 09:30:00'`` in
    New York is 13:30Z, ``'2024-03-08 09:30:00'`` is 14:30Z. ``shift`` is applied to the
    absolute instant (an end-labelled bar passes ``-interval``).

    Raises :class:`NonexistentLocalTime` for a wall time in a spring-forward gap
    (``'2024-03-10 02:30:00'`` New York), :class:`AmbiguousLocalTime` for one in a fall-back
    hour (``'2024-11-03 01:30:00'`` New York: 05:30Z or 06:30Z), and ``ValueError`` (their
    base class too) for text that is not a naive ISO date-time.
    """
    naive = datetime.fromisoformat(text)
    if naive.tzinfo is not None:
        raise ValueError(f"{text!r} carries a UTC offset; a naive local time was expected")
    local = naive.replace(tzinfo=tz)
    first = local.astimezone(UTC)
    if local.replace(fold=1).utcoffset() != local.utcoffset():
        # fold=0 and fold=1 disagree: the wall time is skipped or repeated; the round trip tells which
        if first.astimezone(tz).replace(tzinfo=None) != naive:
            raise NonexistentLocalTime(f"{text} does not exist in {tz} (skipped by a DST switch)")
        raise AmbiguousLocalTime(f"{text} occurs twice in {tz} (DST fall-back)")
    return first + shift


def date_to_utc(day: date, tz: tzinfo) -> datetime:
    """Midnight of ``day`` in ``tz``, as a UTC instant (the start of a daily bar)."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


_INF = math.inf


def _check(bar: Bar, limit: datetime | None) -> str | None:
    o, h, l, c, v = bar[4:9]
    if v is None:  # no volume at all (an index, a market without volume data): valid, stored as NULL
        v = "0"
    try:
        joined = o + h + l + c + v
        # float() also takes "1_000" and non-ASCII digits, which PostgreSQL's numeric refuses
        # (one such value would fail a whole COPY); "nan"/"inf" are caught as non-finite below
        if not joined.isascii() or "_" in joined:
            return "non-numeric value"
        fo, fh, fl, fc, fv = float(o), float(h), float(l), float(c), float(v)
    except (TypeError, ValueError, AttributeError):  # AttributeError: numbers, lists (not decimal text)
        return "non-numeric value"
    # one chained comparison accepts a plausible bar (NaN fails every comparison); the rest says why not
    if not (0.0 < fl <= fo <= fh < _INF and fl <= fc <= fh and 0.0 <= fv < _INF):
        return _reason(o, h, l, c, v, fo, fh, fl, fc, fv)
    if bar[9] is not None:  # the adjusted close, when the provider sends one
        reason = _adj_close_reason(bar[9])
        if reason is not None:
            return reason
    ts = bar.ts
    if ts.tzinfo is not UTC and (ts.tzinfo is None or ts.utcoffset() != timedelta(0)):
        return "timestamp is not UTC"
    if limit is not None and ts > limit:
        return f"in the future (starts after {limit.isoformat()} = now + interval + skew)"
    return None


def _reason(o, h, l, c, v, fo, fh, fl, fc, fv) -> str:
    if not (math.isfinite(fo) and math.isfinite(fh) and math.isfinite(fl) and math.isfinite(fc) and math.isfinite(fv)):
        return "non-finite value"  # e.g. "1e999", "nan"
    if fv < 0:
        return f"negative volume {_short(v)}"
    ohlc = f"(o={_short(o)} h={_short(h)} l={_short(l)} c={_short(c)})"
    if not (fo > 0 and fh > 0 and fl > 0 and fc > 0):
        return f"non-positive price {ohlc}"
    if fh < fo or fh < fc or fh < fl:
        return f"inconsistent OHLC: high below max(open, close, low) {ohlc}"
    return f"inconsistent OHLC: low above min(open, close) {ohlc}"


def _adj_close_reason(adj: object) -> str | None:
    try:
        if not adj.isascii() or "_" in adj:  # type: ignore[attr-defined]
            return "non-numeric adjusted close"
        fa = float(adj)  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        return "non-numeric adjusted close"
    return None if 0.0 < fa < _INF else f"non-positive or non-finite adjusted close {_short(adj)}"  # type: ignore[arg-type]


def _short(value: str) -> str:
    return value if len(value) <= 32 else value[:32] + "..."


def _bar_excerpt(bar: Bar) -> str:
    values = bar[4:] if bar[9] is not None else bar[4:9]  # the adjusted close last, when there is one
    return excerpt(",".join([bar.ts.isoformat(), *("" if x is None else str(x) for x in values)]))


def validate_bars(
    bars: Iterable[Bar], *, now: datetime | None = None, skew_seconds: float = FUTURE_SKEW_SECONDS
) -> tuple[list[Bar], list[Rejection]]:
    """Split bars into the ones that may be loaded and rejections; nothing is dropped silently.

    Per key ``(provider, symbol, interval, ts)``: copies with identical values (compared as the
    provider's text: ``"10.0"`` and ``"10.00"`` differ) are kept once; copies that differ are a
    conflict and **every** copy is rejected (reason ``"conflict: ..."``), so no version wins.

    A bar is then valid when its five values (and ``adj_close``, when not None) are ASCII decimal
    text of finite numbers, prices (open, high, low, close, and ``adj_close``) are > 0,
    ``high >= max(open, close, low)``, ``low <= min(open, close)``, ``volume >= 0``, ``ts`` is
    UTC-aware and, when ``now`` (an aware datetime) is
    given, ``ts <= now + interval + skew_seconds`` (an unknown interval counts as 0 s). There
    is no lower bound: centuries-old daily bars are valid.

    Reasons (fixed prefixes; details follow in parentheses or after the prefix):
    ``"conflict: different values for one timestamp"``, ``"non-numeric value"``,
    ``"non-finite value"``, ``"negative volume <v>"``, ``"non-positive price (...)"``,
    ``"inconsistent OHLC: high below max(open, close, low) (...)"``,
    ``"inconsistent OHLC: low above min(open, close) (...)"``, ``"non-numeric adjusted close"``,
    ``"non-positive or non-finite adjusted close <a>"``, ``"timestamp is not UTC"``,
    ``"in the future (...)"``.

    Returns ``(valid, rejected)``, each in input order (a key's valid bar at its first
    appearance). A rejection's ``key`` is the bar's ``ts`` in ISO form; its ``excerpt`` the
    bar's ts and values joined with commas. Raises ``ValueError`` if ``now`` is naive.
    """
    if not isinstance(bars, list):
        bars = list(bars)
    limits: dict[str, datetime] | None = None
    if now is not None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("validate_bars: now must be timezone-aware")
        horizon = now.astimezone(UTC) + timedelta(seconds=skew_seconds)
        limits = {}
    good: list[Bar] = []
    rejected: list[Rejection] = []
    conflicted = _conflicts(bars)
    emitted: set[tuple] | None = set() if conflicted is not None else None
    limit = None
    for bar in bars:
        if emitted is not None:
            key = bar[:4]
            if key in conflicted:
                rejected.append(Rejection(bar.symbol, bar.ts.isoformat(), CONFLICT, _bar_excerpt(bar)))
                continue
            if key in emitted:
                continue  # an identical copy of a bar already handled
            emitted.add(key)
        if limits is not None:
            limit = limits.get(bar.interval)
            if limit is None:
                limit = limits[bar.interval] = horizon + timedelta(seconds=INTERVALS.get(bar.interval, 0))
        reason = _check(bar, limit)
        if reason is None:
            good.append(bar)
        else:
            rejected.append(Rejection(bar.symbol, bar.ts.isoformat(), reason, _bar_excerpt(bar)))
    return good, rejected


def _conflicts(bars: list[Bar]) -> set[tuple] | None:
    """None when every key is unique (the usual case); else the set of keys whose copies differ."""
    # a Bar's first four fields are its key (provider, symbol, interval, ts): slicing is C-fast
    first = {b[:4]: b for b in bars}
    if len(first) == len(bars):
        return None
    return {key for b in bars if first[(key := b[:4])] != b}


def dedupe_bars(bars: Iterable[Bar]) -> list[Bar]:
    """One bar per (provider, symbol, interval, ts), the last one seen winning; order of first appearance.

    The loader's safety net; :func:`validate_bars` has already rejected keys whose copies differ.
    """
    return list({b[:4]: b for b in bars}.values())
