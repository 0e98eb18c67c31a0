"""Injected time. Every component that asks "what time is it?" or "wait until ..." takes a Clock.

``SystemClock`` is the real one; ``ManualClock`` stands still until told to move, so
tests (and what-if runs) can stand on a DST switch, a holiday or an early close.
All instants are UTC-aware datetimes; durations are seconds.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "SystemClock", "ManualClock", "utc"]


def utc(dt: datetime) -> datetime:
    """``dt`` as UTC; raises ValueError for a naive datetime (never guess a zone)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: a time zone is required")
    return dt.astimezone(UTC)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, UTC-aware."""

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Wait ``seconds`` (or until ``stop`` is set). Returns True if ``stop`` ended the wait."""


class SystemClock:
    """Wall-clock time; sleeping waits on ``stop`` so a shutdown wakes it at once."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        if seconds <= 0:
            return bool(stop and stop.is_set())
        if stop is None:
            time.sleep(seconds)
            return False
        return stop.wait(seconds)


class ManualClock:
    """A clock for tests: ``now`` is fixed until ``advance`` or ``sleep`` moves it (instantly)."""

    def __init__(self, start: datetime) -> None:
        self._now = utc(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []  # every sleep asked for, in seconds

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = utc(when)

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        if stop is not None and stop.is_set():
            return True
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        return bool(stop and stop.is_set())
