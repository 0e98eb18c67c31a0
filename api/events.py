"""The in-process fan-out of bar events: one publisher side, many bounded subscribers.

Events come from the API's one ``LISTEN marketpoll_bars`` connection (:mod:`api.listen`,
PostgreSQL) or from the pipelines of this process (:class:`HubListener`, SQLite), and go
to the ``GET /events`` streams, the ``WS /ws`` rooms and any in-process subscriber.

- **Ids.** Each event gets an id: microseconds since the epoch (UTC) when the hub received
  it, strictly increasing. A client that saw id *X* resumes from the replay buffer (the last
  :data:`REPLAY_EVENTS` events) when it still covers *X*, exactly (every event after *X*);
  otherwise (the server restarted, or *X* is older than the buffer) from the tables
  (:func:`api.queries.bars_since`): each series changed since, once, with its newest bar and the
  rows its last write inserted or changed (``rows``), not each intermediate bar; bounded in time and series, and
  told by an ``event: reload`` when it left changes out (see :mod:`api.sse`).
- **Bounded, never blocking.** :meth:`EventHub.publish` never waits: each subscriber has a
  queue of at most ``maxsize`` events, and one that falls that far behind is *dropped* (its
  queue freed, its consumer told by :meth:`Subscription.get` returning None, ``reason``
  ``"slow"``); the others and the loading threads go on. A dropped SSE client reconnects
  with ``Last-Event-ID`` and resumes as above: every series that changed meanwhile arrives
  with its newest bar (exactly event by event when the replay buffer still covers it).
- **Threads.** ``publish`` may be called from any thread; a subscription is consumed from
  one asyncio task (:meth:`Subscription.get`) or one thread (:meth:`Subscription.get_blocking`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from clock import Clock, SystemClock
from errors import ConfigError
from etl.events import LoadEvent, bar_payload
from models.bar import INTERVALS, normalize_symbol

__all__ = ["EventHub", "EventFilter", "HubEvent", "Subscription", "HubListener", "REPLAY_EVENTS", "QUEUE_MAX",
           "SUBSCRIBERS_MAX", "FILTER_SYMBOLS_MAX", "sse_frame"]  # fmt: skip

log = logging.getLogger(__name__)

#: Events the hub keeps for ``Last-Event-ID`` resume (about 300 bytes each: 10,000 are ~3 MB).
REPLAY_EVENTS = 10_000
#: Default bound of one subscriber's queue, in events; a subscriber this far behind is dropped.
QUEUE_MAX = 2_000
#: Subscribers the hub accepts at once (SSE streams, WebSocket clients' room feed, in-process).
SUBSCRIBERS_MAX = 1_000
#: Symbols one filter may name.
FILTER_SYMBOLS_MAX = 1_000


class HubEvent(NamedTuple):
    """One published event: ``id`` (µs since the epoch, UTC, strictly increasing), the payload
    (:func:`etl.events.bar_payload`'s shape), that payload as compact JSON and its Server-Sent
    Events frame (:func:`sse_frame`), both encoded once for every subscriber."""

    id: int
    payload: dict
    json: str
    frame: bytes = b""


def _frame(event_id: int, text: str) -> bytes:
    return f"id: {event_id}\r\nevent: bar\r\ndata: {text}\r\n\r\n".encode()


def sse_frame(event: HubEvent, event_id: int | None = None) -> bytes:
    """``event`` as one Server-Sent Events frame: ``id``, ``event: bar`` and the JSON data (``\\r\\n`` lines)."""
    if event_id is None or event_id == event.id:
        return event.frame or _frame(event.id, event.json)
    return _frame(event_id, event.json)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber wants: None = any. ``symbols`` upper-case tickers."""

    symbols: frozenset[str] | None = None
    provider: str | None = None
    interval: str | None = None

    def matches(self, payload: dict) -> bool:
        return (
            (self.symbols is None or payload.get("symbol") in self.symbols)
            and (self.provider is None or payload.get("provider") == self.provider)
            and (self.interval is None or payload.get("interval") == self.interval)
        )

    @classmethod
    def parse(cls, symbols: str | None = None, provider: str | None = None, interval: str | None = None) -> EventFilter:
        """From query parameters (``symbols=IBM,MSFT``, ``provider=demo``, ``interval=5min``); raises ConfigError."""
        chosen = None
        if symbols is not None and symbols.strip():
            try:
                chosen = frozenset(normalize_symbol(s) for s in symbols.split(",") if s.strip())
            except ValueError as exc:
                raise ConfigError(f"symbols: {exc}", name="symbols") from None
            if len(chosen) > FILTER_SYMBOLS_MAX:
                raise ConfigError(f"symbols: at most {FILTER_SYMBOLS_MAX}, got {len(chosen)}", name="symbols")
        if interval is not None and interval and interval not in INTERVALS:
            raise ConfigError(f"interval: unknown {interval!r} (one of {', '.join(INTERVALS)})", name="interval")
        if provider is not None and (not provider or len(provider) > 64 or not provider.isascii()):
            raise ConfigError(f"provider: malformed {provider[:64]!r}", name="provider")
        return cls(chosen or None, provider or None, interval or None)


class Subscription:
    """A subscriber's bounded queue; made by :meth:`EventHub.subscribe`, ended by :meth:`close`."""

    def __init__(self, hub: EventHub, event_filter: EventFilter, maxsize: int) -> None:
        self.hub = hub
        self.filter = event_filter
        self.maxsize = maxsize
        self.reason: str | None = None  # why it ended: "closed", "slow" (dropped), "shutdown"
        self._items: deque[HubEvent] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._waiter: asyncio.Future | None = None

    def __len__(self) -> int:
        return len(self._items)

    def _offer(self, events: list[HubEvent], waiters: list[asyncio.Future]) -> bool:
        """Queue ``events`` (the hub's lock held); False when the queue would overflow (the caller drops it).

        A waiting asyncio consumer's future is added to ``waiters``, for the caller to resolve with one
        ``call_soon_threadsafe`` per event loop for all of them."""
        with self._cond:
            if self.reason is not None:
                return True
            if len(self._items) + len(events) > self.maxsize:
                return False
            self._items.extend(events)
            self._cond.notify()
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                waiters.append(waiter)
        return True

    def _end(self, reason: str) -> None:
        with self._cond:
            if self.reason is None:
                self.reason = reason
            if reason == "slow":
                self._items.clear()
            self._wake()

    def _wake(self) -> None:  # self._cond held
        self._cond.notify()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # its loop has closed: nobody is waiting any more
                pass

    async def get(self) -> HubEvent | None:
        """The next event, waiting for it; None once the subscription ended (see ``reason``)."""
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                if self.reason is not None:
                    return None
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter

    def drain(self, limit: int = 1_000) -> list[HubEvent]:
        """Up to ``limit`` queued events at once, without waiting."""
        with self._cond:
            n = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def get_blocking(self, timeout_seconds: float) -> HubEvent | None:
        """For a consumer thread: the next event, waiting at most ``timeout_seconds``; None on timeout or end."""
        with self._cond:
            if not self._items and self.reason is None:
                self._cond.wait(timeout_seconds)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        self.hub._remove(self)
        self._end("closed")


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _resolve_all(waiters: list[asyncio.Future]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def _wake_all(waiters: list[asyncio.Future]) -> None:
    """Resolve ``waiters`` on their loops: one ``call_soon_threadsafe`` per loop."""
    by_loop: dict = {}
    for waiter in waiters:
        by_loop.setdefault(waiter.get_loop(), []).append(waiter)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_all, group)
        except RuntimeError:  # its loop has closed: nobody is waiting any more
            pass


class EventHub:
    """Fans published payloads out to subscriptions; keeps the last ``replay_max`` for resume.

    Every count is in :meth:`stats` (``GET /status`` → ``live``).
    """

    def __init__(
        self, *, clock: Clock | None = None, replay_max: int = REPLAY_EVENTS, subscribers_max: int = SUBSCRIBERS_MAX
    ) -> None:
        self.clock = clock or SystemClock()
        self.subscribers_max = subscribers_max
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._replay: deque[HubEvent] = deque(maxlen=replay_max)
        self._last_id = self._now_us()
        self._horizon = self._last_id  # every event with an id above this is in the replay buffer
        self._closed = False
        self.published = 0
        self.dropped = 0  # subscribers dropped for being slow
        self.listen_state: dict = {}  # the LISTEN connection's state (api.listen), for /status

    def _now_us(self) -> int:
        return int(self.clock.now().timestamp() * 1_000_000)

    @property
    def last_id(self) -> int:
        """The id of the newest event (or of the hub's start, before any)."""
        return self._last_id

    def publish(self, payload: dict) -> HubEvent:
        """Publish one payload (see :meth:`publish_many`)."""
        return self.publish_many([payload])[0]

    def publish_many(self, payloads: Iterable[dict]) -> list[HubEvent]:
        """Give each payload an id and queue it for every matching subscriber; never waits.

        A subscriber whose queue is full is dropped (``reason`` ``"slow"``).
        """
        out = []
        with self._lock:
            if self._closed:
                return out
            now_us = self._now_us()
            for payload in payloads:
                self._last_id = event_id = max(now_us, self._last_id + 1)
                text = json.dumps(payload, separators=(",", ":"))
                event = HubEvent(event_id, payload, text, _frame(event_id, text))
                if len(self._replay) == self._replay.maxlen:
                    self._horizon = self._replay[0].id
                self._replay.append(event)
                out.append(event)
            slow, waiters = [], []
            for sub in self._subs:
                f = sub.filter
                matched = out if f.symbols is None and f.provider is None and f.interval is None else [
                    e for e in out if f.matches(e.payload)]  # fmt: skip
                if matched and not sub._offer(matched, waiters):
                    slow.append(sub)
            if waiters:
                _wake_all(waiters)
            for sub in slow:
                self._subs.remove(sub)
                sub._end("slow")
                self.dropped += 1
                log.warning("live: dropped a subscriber more than %d events behind (%s)", sub.maxsize, sub.filter)
            self.published += len(out)
        return out

    def subscribe(self, event_filter: EventFilter | None = None, maxsize: int = QUEUE_MAX) -> Subscription:
        """A new subscription to events published from now on; raises ConfigError past ``subscribers_max``."""
        if maxsize < 1:
            raise ConfigError(f"maxsize must be >= 1, got {maxsize}", name="maxsize", value=maxsize)
        sub = Subscription(self, event_filter or EventFilter(), maxsize)
        with self._lock:
            if self._closed:
                sub._end("shutdown")
                return sub
            if len(self._subs) >= self.subscribers_max:
                raise ConfigError(f"too many subscribers (at most {self.subscribers_max})", name="subscribers")
            self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def covers(self, after_id: int) -> bool:
        """Whether every event with an id above ``after_id`` published since is still in the replay buffer."""
        return after_id >= self._horizon

    def replay(self, after_id: int, event_filter: EventFilter | None = None) -> list[HubEvent]:
        """The buffered events with an id above ``after_id`` that match, oldest first (see :meth:`covers`)."""
        with self._lock:
            events = [e for e in self._replay if e.id > after_id] if self._replay and self._replay[-1].id > after_id else []
        return [e for e in events if event_filter is None or event_filter.matches(e.payload)]

    def stats(self) -> dict:
        with self._lock:
            subs = list(self._subs)
            return {"subscribers": len(subs), "subscribers_max": self.subscribers_max, "published": self.published,
                    "dropped_slow_subscribers": self.dropped, "replay_buffer": len(self._replay),
                    "replay_buffer_max": self._replay.maxlen, "queued_max": max((len(s) for s in subs), default=0),
                    "listen": dict(self.listen_state) or None}  # fmt: skip

    def close(self) -> None:
        """End every subscription (``reason`` ``"shutdown"``); later publishes are ignored."""
        with self._lock:
            self._closed = True
            subs, self._subs = self._subs, []
        for sub in subs:
            sub._end("shutdown")


class HubListener:
    """A :class:`etl.events.PipelineListener` that publishes each committed load to ``hub``: the
    in-process bus of SQLite, where there is no NOTIFY (on PostgreSQL the hub hears the loads of every
    process through LISTEN instead, so this listener is not installed there)."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def on_load(self, event: LoadEvent) -> None:
        self.hub.publish(bar_payload(event.newest, event.rows_written))

    def on_cycle(self, cycle) -> None:
        pass
