"""``GET /events``: the bar events as Server-Sent Events, filtered, resumable.

Query: ``symbols=IBM,MSFT`` (any of them), ``provider=demo``, ``interval=5min``; resume with the
``Last-Event-ID`` header (browsers send it on reconnect) or ``since=`` (an event id, or an ISO 8601
instant with a zone). Each event is ``event: bar``, ``id: <µs since the epoch, UTC>``, ``data: <the
payload JSON>`` (:func:`etl.events.bar_payload`); a comment ping every :data:`PING_SECONDS` keeps
proxies from closing an idle stream.

Resume: from the hub's replay buffer when it still covers the id (exact), else from the ``bars``
table (:func:`api.queries.bars_since`, one event per series written since, the margin of
:data:`api.listen.CATCHUP_MARGIN_SECONDS` included: a bar may come twice, none is missed). Those
catch-up events carry the id the client resumed from, and the last one the hub's current id, so a
client cut off in the middle of a catch-up starts it again.

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
from api.queries import bars_since
from errors import ConfigError, MarketpollError

__all__ = ["events", "parse_resume", "SSE_QUEUE_MAX", "PING_SECONDS", "SEND_TIMEOUT_SECONDS"]

log = logging.getLogger(__name__)

#: Events one stream may have waiting; a client further behind is disconnected (and resumes).
SSE_QUEUE_MAX = 5_000
#: Seconds between keep-alive comments on a stream.
PING_SECONDS = 15.0
#: A send to a client blocked this many seconds ends its stream.
SEND_TIMEOUT_SECONDS = 30.0
#: Events written to a stream in one send at most.
_CHUNK_EVENTS = 1_000


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


def parse_resume(last_event_id: str | None, since: str | None) -> int | None:
    """The event id to resume after: ``Last-Event-ID`` wins over ``since``; an ISO instant (with a zone) becomes
    its µs since the epoch; None = live only. Raises ConfigError."""
    text = (last_event_id or since or "").strip()
    if not text:
        return None
    if text.isdigit() and len(text) <= 20:
        return int(text)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"since: neither an event id nor an ISO 8601 instant: {text[:40]!r}", name="since") from None
    if at.tzinfo is None:
        raise ConfigError(f"since: give the instant a zone (Z or +00:00): {text[:40]!r}", name="since")
    return int(at.timestamp() * 1_000_000)


async def events(request: Request):
    hub: EventHub = request.app.state.hub
    q = request.query_params
    try:
        event_filter = EventFilter.parse(q.get("symbols"), q.get("provider"), q.get("interval"))
        after = parse_resume(request.headers.get("last-event-id"), q.get("since"))
    except ConfigError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    try:
        sub = hub.subscribe(event_filter, maxsize=SSE_QUEUE_MAX)
    except ConfigError as exc:
        return JSONResponse({"error": str(exc)}, status_code=503)
    cursor = hub.last_id  # events up to here were published before the subscription began (or just as it did)
    engine = request.app.state.engine

    async def stream():
        try:
            sent = cursor if after is None else after
            if after is not None and hub.covers(after):
                replayed = hub.replay(after, event_filter)
                for i in range(0, len(replayed), _CHUNK_EVENTS):
                    yield b"".join(sse_frame(e) for e in replayed[i : i + _CHUNK_EVENTS])
                sent = max([sent, *(e.id for e in replayed[-1:])])
            elif after is not None:
                since = datetime.fromtimestamp(after / 1_000_000, UTC) - timedelta(seconds=CATCHUP_MARGIN_SECONDS)
                try:
                    found = await asyncio.to_thread(bars_since, engine, since, event_filter)
                except MarketpollError as exc:
                    log.warning("live: a stream could not catch up from the table: %s", exc)
                    found = []
                for i, payload in enumerate(found):
                    ev = HubEvent(after, payload, json.dumps(payload, separators=(",", ":")))
                    yield sse_frame(ev, cursor if i == len(found) - 1 else after)
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
