"""Pure evaluation of alert rules: values, truth, de-duplication, staleness, error rates. No I/O.

De-duplication (every kind): a rule is *armed* until it fires; it fires when its predicate holds while
armed, then stays disarmed while the predicate keeps holding, and is armed again once the predicate is
false (it has *cleared*). :func:`step` is that state machine; the service keeps the state per (rule,
subject) and persists it as ``alert_events.cleared_at`` (a firing not yet cleared = disarmed), so a
restart neither repeats an alert nor forgets one that cleared.

``crosses_above`` holds when the previous value was at or below the threshold and the new one is above;
``crosses_below`` the mirror image. The new value is that of the newest bar of the load (the bar a
:class:`~etl.events.LoadEvent` carries); the previous value is that of the series' stored bar just before
it: the newest bar with an earlier ``ts`` (:func:`previous_bar_cutoff`), read from the database after the
load committed. It depends only on the stored bars, not on which process or cluster node ran the load or
what that process loaded before, so every node gives the same answer, and a restart needs no seeding. A
load that wrote several bars compares its newest with the one before it (which that load may have
written too); a load that rewrote the newest bar (a bar still forming) compares the new value with the
same previous bar, so a crossing reported once is not reported again while it holds (de-duplication
below). A series' first bar has no previous one and never crosses. The cost: one read by the bars'
primary key per load of a series that has a crossing rule (none for other series); a ``change_percent``
crossing also reads that previous bar's reference bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from alerts.grammar import Condition
from models.bar import Bar, interval_seconds

__all__ = ["Step", "step", "field_value", "holds", "previous_bar_cutoff", "reference_cutoff", "Staleness", "staleness",
           "error_rate", "FAILED_STATUSES", "COUNTED_STATUSES", "ERROR_RATE_WINDOW_CYCLES", "ERROR_RATE_WINDOW",
           "ERROR_RATE_MIN_CYCLES"]  # fmt: skip

#: The error-rate window: a job's last 20 finished cycles that started within the last 24 hours,
#: and at least 3 of them before any share is computed (one failed cycle of one is no rate).
ERROR_RATE_WINDOW_CYCLES = 20
ERROR_RATE_WINDOW = timedelta(hours=24)
ERROR_RATE_MIN_CYCLES = 3
#: ``etl_runs.status`` values counted in the window, and those counted as failed: a partial cycle (some
#: symbol failed) is a failure of the job; an interrupted (shutdown) or abandoned cycle is not counted.
COUNTED_STATUSES = ("succeeded", "partial", "failed")
FAILED_STATUSES = ("partial", "failed")


@dataclass(frozen=True, slots=True)
class Step:
    """What one evaluation does: ``fire`` an alert, ``clear`` a fired one; ``armed`` is the state after."""

    fire: bool
    clear: bool
    armed: bool


def step(armed: bool, holding: bool) -> Step:
    """The de-duplication state machine (module docstring): fire once while it holds, re-arm when it clears."""
    return Step(fire=armed and holding, clear=not armed and not holding, armed=not holding)


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        return None
    return value if value.is_finite() else None


def field_value(field: str, bar: Bar, reference_close: str | Decimal | None = None) -> Decimal | None:
    """The value of ``field`` for ``bar`` (exact decimals from the bar's text); None when it has none
    (no volume; ``change_percent`` without a nonzero ``reference_close``, see :mod:`alerts.grammar`)."""
    if field == "change_percent":
        close, ref = _decimal(bar.close), _decimal(None if reference_close is None else str(reference_close))
        if close is None or ref is None or ref == 0:
            return None
        return (close - ref) / ref * 100
    return _decimal(getattr(bar, field))


def holds(condition: Condition, value: Decimal | None, previous: Decimal | None) -> bool | None:
    """Whether ``condition`` holds for ``value`` (``previous``: the series' last value, for crossings).
    None when it cannot be told (no value): the state is then left as it is."""
    if value is None:
        return None
    t, op = condition.threshold, condition.op
    if op == ">":
        return value > t
    if op == ">=":
        return value >= t
    if op == "<":
        return value < t
    if op == "<=":
        return value <= t
    if previous is None:
        return False
    if op == "crosses_above":
        return previous <= t < value
    return previous >= t > value  # crosses_below


def previous_bar_cutoff(bar: Bar) -> datetime:
    """A crossing's previous value is the newest bar of the series with ``ts`` at or before this instant
    (UTC): just before ``bar`` (module docstring)."""
    return bar.ts - timedelta(microseconds=1)


def reference_cutoff(bar: Bar) -> datetime:
    """``change_percent``'s reference is the newest bar of the series with ``ts`` at or before this
    instant (UTC): 24 hours before an intraday bar; just before a daily bar (the previous session)."""
    if interval_seconds(bar.interval) >= 86400:
        return bar.ts - timedelta(microseconds=1)
    return bar.ts - timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Staleness:
    """A stale check's result: ``holding`` (stale now), ``age_minutes`` (since the newest bar ended, or
    since the session opened if that is later; None while the session is closed)."""

    holding: bool
    age_minutes: float | None


def staleness(
    now: datetime, newest_bar_end: datetime | None, window: tuple[datetime, datetime] | None, after: timedelta
) -> Staleness:
    """Stale = inside an open session window ``(start, end)`` and no bar has ended for ``after``.

    ``newest_bar_end``: when the newest bar of the series (or job) ended (its ``ts`` + interval, UTC), None
    if there is none. ``window``: the session window containing ``now``, None when closed. The wait counts
    from the later of the newest bar's end and the session's start, so the night does not count.
    """
    if window is None or not window[0] <= now < window[1]:
        return Staleness(False, None)
    since = window[0] if newest_bar_end is None else max(newest_bar_end, window[0])
    age = now - since
    return Staleness(age >= after, max(age.total_seconds(), 0.0) / 60)


def error_rate(statuses: Iterable[str]) -> float | None:
    """The failed share (0..1) of cycles' ``etl_runs.status`` values (newest first, already windowed);
    statuses not in :data:`COUNTED_STATUSES` are ignored; None if fewer than :data:`ERROR_RATE_MIN_CYCLES`."""
    counted = [s for s in statuses if s in COUNTED_STATUSES][:ERROR_RATE_WINDOW_CYCLES]
    if len(counted) < ERROR_RATE_MIN_CYCLES:
        return None
    return sum(s in FAILED_STATUSES for s in counted) / len(counted)
