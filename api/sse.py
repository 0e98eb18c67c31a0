"""``GET /events``: the bar events as Server-Sent Events, filtered, resumable.

Query: ``symbols=IBM,MSFT`` (any of them), ``provider=demo``, ``interval=5min``; resume with the
``Last-Event-ID`` header (browsers send it on reconnect) or ``since=`` (an event id, or an ISO 8601
instant with a zone). Each event is ``event: bar``, ``id: <µs since the epoch, UTC>``, ``data: <the
payload JSON>`` (:func:`etl.events.bar_payload`); a comment ping every :data:`PING_SECONDS` keeps
proxies from closing an idle stream.

Resume: from the hub's replay buffer when it still covers the id (exact: every event after it, each
with its own id). Else from the tables (:func:`api.queries.bars_since`, the margin of
:data:`api.listen.CATCHUP_MARGIN_SECONDS` included): one event per series written since, carrying its
newest bar and ``rows`` (how many of its rows its last write inserted or changed), not each intermediate
bar (a client that needs every bar reads ``bars`` by ``ts``); an event may come twice. Those
catch-up events carry the id the client resumed from, and the last one the hub's current id, so a
client cut off in the middle of a catch-up starts it again. A catch-up reaches back at most
:data:`api.queries.CATCHUP_WINDOW` and sends at most :data:`api.queries.CATCHUP_SERIES_MAX` series
(the most recently written); when it left changes out (the resume point is older than the window, or
more series changed) every catch-up event keeps the client's id and an ``event: reload`` follows,
``id:`` the hub's current id, ``data: {"reason": "window"|"truncated", "since": <the instant read
from>, "series": <events sent>}``: the client reloads its state its own way (from ``bars``, the
``WS /ws`` price snapshot), then goes on live.
At most :data:`CATCHUPS_MAX` catch-ups read the table at once (the others wait). A catch-up that fails
(the database unreachable) ends the stream before sending anything, so the client retries with the
same ``Last-Event-ID``.

Parameters: ``Last-Event-ID`` / ``since`` must be an event id (ASCII digits) or an ISO 8601 instant
with a zone, from 1970 on, at most :data:`RESUME_TEXT_MAX` characters, and not after the server's
newest event id or clock (a future id was never sent by this server): else 400 with
``{"error": "..."}``.

Bounded: each stream has a queue of :data:`SSE_QUEUE_MAX` events; a client that far behind is
disconnected (it reconnects with ``Last-Event-ID`` and resumes); a send that blocks for
:data:`SEND_TIMEOUT_SECONDS` ends the stream. 400 on a bad parameter, 503 past
:data:`api.events.SUBSCRIBERS_MAX` subscribers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

from sse_starlette.sse import EventSourceResponse, SendTimeoutError
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.events import EventFilter, EventHub, HubEvent, sse_frame
from api.listen import CATCHUP_MARGIN_SECONDS
from api.queries import CatchUp, bars_since
from errors import ConfigError, MarketpollError

__all__ = ["events", "parse_resume", "SSE_QUEUE_MAX", "PING_SECONDS", "SEND_TIMEOUT_SECONDS", "CATCHUPS_MAX",
           "RESUME_TEXT_MAX"]  # fmt: skip

log = logging.getLogger(__name__)

#: Events one stream may have waiting; a client further behind is disconnected (and resumes).
SSE_QUEUE_MAX = 5_000
#: Seconds between keep-alive comments on a stream.
PING_SECONDS = 15.0
#: A send to a client blocked this many seconds ends its stream.
SEND_TIMEOUT_SECONDS = 30.0
#: Table catch-ups (resumes from before the replay buffer) that read ``bars`` at once; the others wait their turn.
CATCHUPS_MAX = 4
#: Longest ``Last-Event-ID`` / ``since`` accepted, in characters.
RESUME_TEXT_MAX = 64
#: Events written to a stream in one send at most.
_CHUNK_EVENTS = 1_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID_MAX = 2**63 - 1


class _EventStream(EventSourceResponse):
    """sse-starlette's response (pings, disconnects, shutdown), with a cheaper per-send timeout: asyncio's
    ``timeout`` (one timer) instead of an anyio cancel scope per send, the larger part of a send's cost
    when a hundred streams each write every batch of events."""

    async def _send_with_timeout(self, send, message) -> None:
        if self.send_timeout is None:
            await send(message)
            return
        try:
            async with asyncio.timeout(self.send_timeout):
                await send(message)
        except TimeoutError:
            raise SendTimeoutError() from None


def parse_resume(last_event_id: str | None, since: str | None, *, newest: int | None = None) -> int | None:
    """The event id to resume after: ``Last-Event-ID`` wins over ``since``; an event id (ASCII digits) as is, an
    ISO 8601 instant (with a zone) as its µs since the epoch; None = live only.

    Raises ConfigError (the caller answers 400) for text longer than :data:`RESUME_TEXT_MAX`, neither form, an
    instant without a zone, one before 1970 or beyond what a datetime holds, and (given ``newest``, the
    server's newest id or its clock, whichever is later) an id or instant after ``newest``: nothing this server
    sent, so nothing it would ever send could follow it."""
    header = bool((last_event_id or "").strip())
    name = "Last-Event-ID" if header else "since"
    text = ((last_event_id if header else since) or "").strip()
    if not text:
        return None
    if len(text) > RESUME_TEXT_MAX:
        raise ConfigError(f"{name}: at most {RESUME_TEXT_MAX} characters, got {len(text)}", name="since")
    if text.isascii() and text.isdigit():
        after = int(text)
        if after > _ID_MAX:
            raise ConfigError(f"{name}: event id out of range: {text!r}", name="since")
    else:
        try:
            at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{name}: neither an event id nor an ISO 8601 instant: {text!r}", name="since") from None
        if at.tzinfo is None:
            raise ConfigError(f"{name}: give the instant a zone (Z or +00:00): {text!r}", name="since")
        try:
            after = (at - _EPOCH) // timedelta(microseconds=1)
        except (OverflowError, ValueError):
            after = -1
        if after < 0:
            raise ConfigError(f"{name}: an instant from 1970 on, got {text!r}", name="since")
    if newest is not None and after > newest:
        raise ConfigError(f"{name}: {text!r} is after the newest event ({newest}): resume from an id this server sent, "
                          "or leave it out for live events only", name="since")  # fmt: skip
    return after


class _Gate:
    """At most ``limit`` table catch-ups at once on this event loop; the others wait their turn (counted in ``waiting``).

    A slot is held until the read's thread is done, even when the client leaves first: a client that connects
    and drops at once cannot pile reads up behind the limit."""

    def __init__(self, limit: int) -> None:
        self._sem = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0

    async def run(self, func, *args):
        """``func(*args)`` in a worker thread, once a slot is free."""
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        task = asyncio.ensure_future(asyncio.to_thread(func, *args))
        task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Future) -> None:
        self.running -= 1
        self._sem.release()
        if not task.cancelled():
            task.exception()  # retrieved: one whose client left is not "never retrieved"


def _gate(app) -> _Gate:
    gate = getattr(app.state, "catch_up_gate", None)
    if gate is None:  # one per app, made on its event loop
        gate = app.state.catch_up_gate = _Gate(CATCHUPS_MAX)
    return gate


def _reload_frame(event_id: int, found: CatchUp) -> bytes:
    data = {"reason": "window" if found.clamped else "truncated", "since": found.since.isoformat().replace("+00:00", "Z"),
            "series": len(found.payloads)}  # fmt: skip
    return f"id: {event_id}\r\nevent: reload\r\ndata: {json.dumps(data, separators=(',', ':'))}\r\n\r\n".encode()


async def events(request: Request):
    hub: EventHub = request.app.state.hub
    q = request.query_params
    newest = max(hub.last_id, (hub.clock.now() - _EPOCH) // timedelta(microseconds=1))
    try:
        event_filter = EventFilter.parse(q.get("symbols"), q.get("provider"), q.get("interval"))
        after = parse_resume(request.headers.get("last-event-id"), q.get("since"), newest=newest)
    except ConfigError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    try:
        sub = hub.subscribe(event_filter, maxsize=SSE_QUEUE_MAX)
    except ConfigError as exc:
        return JSONResponse({"error": str(exc)}, status_code=503)
    cursor = hub.last_id  # events up to here were published before the subscription began (or just as it did)
    engine = request.app.state.engine
    gate = _gate(request.app)

    async def stream():
        try:
            sent = cursor if after is None else after
            if after is not None and hub.covers(after):
                replayed = hub.replay(after, event_filter)
                for i in range(0, len(replayed), _CHUNK_EVENTS):
                    yield b"".join(sse_frame(e) for e in replayed[i : i + _CHUNK_EVENTS])
                sent = max([sent, *(e.id for e in replayed[-1:])])
            elif after is not None:
                since = _EPOCH + timedelta(microseconds=after) - timedelta(seconds=CATCHUP_MARGIN_SECONDS)
                try:
                    found = await gate.run(bars_since, engine, since, event_filter)
                except MarketpollError as exc:  # end before sending anything: the client retries from the same id
                    log.warning("live: a stream could not catch up from the table (ended; the client retries): %s", exc)
                    return
                gap = found.clamped or found.truncated
                for i, payload in enumerate(found.payloads):
                    ev = HubEvent(after, payload, json.dumps(payload, separators=(",", ":")))
                    yield sse_frame(ev, cursor if i == len(found.payloads) - 1 and not gap else after)
                if gap:  # some changes are not in the catch-up: the client reloads its state, then goes on live
                    yield _reload_frame(cursor, found)
                sent = max(cursor, after)
            while True:
                ev = await sub.get()
                if ev is None:
                    if sub.reason == "slow":
                        log.info("live: disconnected a stream %d events behind (it resumes with Last-Event-ID)", sub.maxsize)
                    return
                batch = [ev, *sub.drain(_CHUNK_EVENTS - 1)]
                chunk = b"".join(sse_frame(e) for e in batch if e.id > sent)
                sent = max(sent, batch[-1].id)
                if chunk:
                    yield chunk
        finally:
            sub.close()

    return _EventStream(stream(), ping=PING_SECONDS, send_timeout=SEND_TIMEOUT_SECONDS,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
