"""``WS /ws``: rooms of live prices, the protocol of the crypto streaming server its users know.

Client → server (JSON text frames):

- ``{"type": "join_room", "room": "prices"}``: every symbol; ``{"type": "join_room", "room": "TSLA"}``: one symbol;
- ``{"type": "leave_room", "room": ...}``; ``{"type": "ping"}`` (answered ``{"type": "pong"}``).

Server → client:

- ``{"type": "price_update", "data": {"symbol", "price", "change_24h", "change_percent_24h", "volume_24h",
  "timestamp", "provider", "interval"}, "timestamp"}``: the price of one *series* (provider, symbol, interval),
  computed from its stored bars (:func:`api.queries.price_update`; ``data.timestamp`` is the newest bar's start,
  the outer one when it was sent, both UTC ``Z``);
- ``{"type": "bar", "data": {...}}``: the event payload (:func:`etl.events.bar_payload`), sent before its price_update;
- on joining: first a snapshot, then ``{"type": "joined", "room", "symbols": N}`` (N symbols), then the live messages;
- ``{"type": "error", "message", "error"}`` (the same text twice) for a message it does not understand, a binary
  frame or a message over :data:`_MESSAGE_MAX` characters; the connection stays open.

**Series.** A symbol may have several series (a 5min poll and a 1day job; two providers): each series
has its own price and 24-hour change, and a room gets a ``price_update`` for each series whose bars
changed, tagged with ``data.provider`` and ``data.interval``. The snapshot follows the same rule: the
current ``price_update`` of *every* series of each symbol of the room, symbols in order, and within a
symbol its preferred series last (the newest bar, then the shortest interval), so a client that keys
prices by symbol alone ends the snapshot on the value earlier versions sent. Key by (symbol, provider,
interval), or keep one interval, to show one consistent price per series. A room never sends a
``price_update`` older than the one it last sent or snapshotted for that series.

**Bounds.** At most :data:`WS_CLIENTS_MAX` connections (one more is accepted, then closed with code 1013
"try again later" and a reason); each in at most :data:`ROOMS_PER_CLIENT_MAX` rooms, getting each
message once whatever rooms it shares; a room with no client is forgotten. :data:`WS_QUEUE_MAX`
messages wait per client; a client further behind is closed with code 1013: it never slows the others
or the loading. The prices of live events are read once per batch of events for all clients
(:class:`Rooms`), and kept in a book (series → newest price, at most
:data:`api.queries.PRICE_SERIES_MAX` series) that serves the snapshots. The rooms' one hub
subscription, dropped when it falls :data:`_FEED_QUEUE_MAX` events behind, subscribes again, retrying
(0.05 s doubling to :data:`_RESUBSCRIBE_MAX_SECONDS`) while the hub is full.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from api.events import EventHub, HubEvent, Subscription
from api.queries import PRICE_SERIES_MAX, all_series, prices
from clock import Clock
from errors import ConfigError, MarketpollError
from models.bar import INTERVALS, normalize_symbol

__all__ = ["Rooms", "ws_endpoint", "FramesProtocol", "WS_QUEUE_MAX", "WS_CLIENTS_MAX", "ROOMS_PER_CLIENT_MAX", "ALL_ROOM",
           "FRAMES_EXTENSION"]  # fmt: skip

log = logging.getLogger(__name__)

#: Messages (not bytes) one client may have waiting; a client further behind is closed (code 1013). Room for
#: a ``prices`` snapshot of a full book (:data:`api.queries.PRICE_SERIES_MAX` series) plus what goes live
#: meanwhile. The queue holds references: a live message (~0.3 KB of JSON, its frame built once) is shared
#: by every client it goes to; a snapshot's messages are the client's own (~0.3 KB each, one per series).
WS_QUEUE_MAX = 20_000
#: WebSocket connections at once (like ``api.events.SUBSCRIBERS_MAX`` for the event streams; all share
#: one hub subscription); one more is accepted and closed at once with code 1013 ("try again later").
WS_CLIENTS_MAX = 1_000
#: Rooms one client may be in at once.
ROOMS_PER_CLIENT_MAX = 100
#: The room of every symbol.
ALL_ROOM = "prices"
#: Events the rooms' feed may have waiting (one feed for all clients).
_FEED_QUEUE_MAX = 100_000
#: A client message longer than this is refused (characters).
_MESSAGE_MAX = 4_096
#: The longest wait between two attempts of the rooms' feed to subscribe to a full hub (seconds).
_RESUBSCRIBE_MAX_SECONDS = 5.0
#: At most one log line per this many seconds about refused connections (over :data:`WS_CLIENTS_MAX`).
_REFUSED_LOG_SECONDS = 60.0
#: Messages written to a client's socket in one write at most (the socket's flow control applies between writes).
_WRITE_MESSAGES_MAX = 1_000
#: The ASGI scope extension of :class:`FramesProtocol`: ``{"send": async callable(frames: bytes)}``.
FRAMES_EXTENSION = "marketpoll.websocket.frames"

Series = tuple[str, str, str]


def _dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _now_z(clock: Clock) -> str:
    return clock.now().astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def text_frame(text: str) -> bytes:
    """``text`` as one unfragmented, unmasked WebSocket text frame (RFC 6455 5.2: what a server sends)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


class Message:
    """An outgoing text message; its frame is built once, however many clients it goes to."""

    __slots__ = ("text", "_frame")

    def __init__(self, text: str) -> None:
        self.text = text
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        frame = self._frame
        if frame is None:
            frame = self._frame = text_frame(self.text)
        return frame


class FramesProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, plus the scope extension :data:`FRAMES_EXTENSION`: an
    ``async send(frames)`` that writes ready-made frames (many messages) to the socket in one write,
    waiting for the socket's flow control like an ASGI ``websocket.send``. Offered only on a connection
    with no WebSocket extension negotiated (no compression), where a text frame is fixed bytes."""

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and not self.close_sent and not self.conn.extensions:
            scope["extensions"][FRAMES_EXTENSION] = {"send": self.send_frames}

    async def send_frames(self, frames: bytes) -> None:
        await self.writable.wait()
        if self.disconnected or self.close_sent or not self.handshake_complete or self.conn.state is not State.OPEN:
            raise ClientDisconnected()
        self.transport.write(frames)


class Client:
    """One WebSocket connection: its rooms and its bounded queue of outgoing text frames."""

    def __init__(self, ws: WebSocket, maxsize: int) -> None:
        self.ws = ws
        self.maxsize = maxsize
        self.rooms: set[str] = set()
        self.holding: dict[str, list[Message]] = {}  # room → live messages kept until its snapshot is sent
        self.closed: int | None = None  # the close code once it is to be closed
        self._items: deque[Message] = deque()
        self._ready = asyncio.Event()
        frames = ws.scope.get("extensions", {}).get(FRAMES_EXTENSION)
        self._send_frames: Callable[[bytes], Awaitable[None]] | None = frames["send"] if frames else None

    def push(self, message: Message | str) -> None:
        self.push_many([message if isinstance(message, Message) else Message(message)])

    def push_many(self, messages: list[Message]) -> None:
        if self.closed is not None:
            return
        if len(self._items) + len(messages) > self.maxsize:
            self.close(1013)
            return
        self._items.extend(messages)
        self._ready.set()

    def close(self, code: int) -> None:
        if self.closed is None:
            self.closed = code
            self._items.clear()
            self._ready.set()

    async def writer(self) -> None:
        """Send what is queued, in order, until closed."""
        ws, send_frames, items = self.ws, self._send_frames, self._items
        while True:
            await self._ready.wait()
            self._ready.clear()
            while items and self.closed is None:
                if send_frames is not None:  # all that waits, in one write
                    n = min(len(items), _WRITE_MESSAGES_MAX)
                    try:
                        await send_frames(b"".join([items.popleft().frame for _ in range(n)]))
                    except ClientDisconnected:
                        raise WebSocketDisconnect(1006) from None
                else:
                    await ws.send_text(items.popleft().text)
            if self.closed is not None:
                if self.closed == 1013:
                    log.info("live: closed a WebSocket client %d messages behind", self.maxsize)
                await ws.close(self.closed)
                return


class Rooms:
    """The rooms of every WebSocket client, fed by one hub subscription; runs on the server's event loop.

    Only the loop changes its state; :meth:`stats` (called from a threadpool thread by ``GET /status``)
    reads integers and ``len`` of a dict, never iterates one."""

    def __init__(self, hub: EventHub, engine, clock: Clock, *, client_queue_max: int = WS_QUEUE_MAX,
                 clients_max: int | None = None) -> None:  # fmt: skip
        self.hub, self.engine, self.clock = hub, engine, clock
        self.client_queue_max = client_queue_max
        self.clients_max = WS_CLIENTS_MAX if clients_max is None else clients_max
        self.members: dict[str, set[Client]] = {}  # room → its clients; a room with none is removed
        self.book: dict[Series, tuple[datetime, dict]] = {}  # series → (newest ts, price_update data)
        self._book_loaded = False
        self._stale: set[Series] = set()  # series whose newest bar changed while nobody watched them
        self._book_lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self.clients = 0
        self.dropped = 0
        self.refused = 0  # connections refused for being over clients_max
        self._refused_logged = -1e9  # time.monotonic() of the last line about it

    def stats(self) -> dict:
        return {"ws_clients": self.clients, "ws_clients_max": self.clients_max, "ws_rooms": len(self.members),
                "ws_dropped_slow_clients": self.dropped, "ws_refused_clients": self.refused,
                "ws_queue_max": self.client_queue_max}  # fmt: skip

    async def run(self) -> None:
        """Consume the hub until it closes."""
        while True:
            if self._sub is None or self._sub.reason == "slow":
                if self._sub is not None:
                    log.warning("live: the WebSocket rooms fell %d events behind; prices will be re-read", _FEED_QUEUE_MAX)
                    self._stale.update(self.book)
                    self._sub = None
                self._sub = await self._subscribe()
            ev = await self._sub.get()
            if ev is None:
                if self._sub.reason == "slow":
                    continue
                return
            try:
                await self._deliver([ev, *self._sub.drain(5_000)])
            except Exception:  # a bug here must not stop the rooms
                log.exception("live: delivering to the WebSocket rooms failed")

    async def _subscribe(self) -> Subscription:
        """The rooms' hub subscription; while the hub is full (ConfigError), retried after 0.05 s doubling
        to :data:`_RESUBSCRIBE_MAX_SECONDS`, with one line when it fails and one when it succeeds again."""
        delay, failed = 0.05, False
        while True:
            try:
                sub = self.hub.subscribe(maxsize=_FEED_QUEUE_MAX)
            except ConfigError as exc:
                if not failed:
                    failed = True
                    log.warning("live: the WebSocket rooms cannot subscribe to the events (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RESUBSCRIBE_MAX_SECONDS)
                continue
            if failed:
                log.info("live: the WebSocket rooms are subscribed to the events again")
            return sub

    def _targets(self, symbol: str) -> set[Client]:
        return self.members.get(ALL_ROOM, set()) | self.members.get(symbol, set())

    def _send(self, client: Client, symbol: str, message: Message, out: dict[Client, list[Message]]) -> None:
        """Queue ``message`` for ``client`` in ``out`` (pushed by :meth:`_flush`), or hold it while a snapshot is read."""
        if client.holding:
            rooms = [r for r in (ALL_ROOM, symbol) if r in client.rooms]
            if rooms and all(r in client.holding for r in rooms):
                client.holding[rooms[0]].append(message)
                return
        out.setdefault(client, []).append(message)

    @staticmethod
    def _flush(out: dict[Client, list[Message]]) -> None:
        for client, messages in out.items():
            client.push_many(messages)

    async def _deliver(self, batch: list[HubEvent]) -> None:
        watched: dict[Series, set[Client]] = {}
        out: dict[Client, list[Message]] = {}
        for ev in batch:
            p = ev.payload
            series = (p.get("provider"), p.get("symbol"), p.get("interval"))
            targets = self._targets(series[1])
            if not targets:
                if self._book_loaded:
                    self._stale.add(series)
                continue
            message = Message('{"type":"bar","data":' + ev.json + "}")
            for c in targets:
                self._send(c, series[1], message, out)
            watched[series] = targets
        self._flush(out)
        if not watched:
            return
        try:
            found = await asyncio.to_thread(prices, self.engine, list(watched))
        except MarketpollError as exc:
            log.warning("live: could not read prices for the WebSocket rooms: %s", exc)
            return
        now = _now_z(self.clock)
        out = {}
        for series, (ts, data) in found.items():
            data = self._keep(series, ts, data)
            if data is None:  # older than what the room already has (a snapshot read it meanwhile)
                continue
            message = Message(_dumps({"type": "price_update", "data": data, "timestamp": now}))
            for c in self._targets(series[1]):  # who is in the room now
                self._send(c, series[1], message, out)
        self._flush(out)

    def _keep(self, series: Series, ts: datetime, data: dict) -> dict | None:
        """Put the price of ``series`` in the book, tagged with its provider and interval, and return it;
        None (the book unchanged) when the book has a newer bar of that series."""
        held = self.book.get(series)
        if held is not None and held[0] > ts:
            return None
        data = {**data, "provider": series[0], "interval": series[2]}
        self.book[series] = (ts, data)
        self._stale.discard(series)
        while len(self.book) > PRICE_SERIES_MAX:
            self.book.pop(next(iter(self.book)))
        return data

    async def _snapshot(self, room: str) -> tuple[int, list[dict]]:
        """(symbols, the price_update data of every series of those symbols): symbols in order, each
        symbol's preferred series (newest bar, then shortest interval) last."""
        async with self._book_lock:
            if not self._book_loaded:
                series = await asyncio.to_thread(all_series, self.engine)
                for s, (ts, data) in (await asyncio.to_thread(prices, self.engine, series)).items():
                    self._keep(s, ts, data)
                self._book_loaded = True
            if self._stale:
                stale, self._stale = list(self._stale), set()
                for s, (ts, data) in (await asyncio.to_thread(prices, self.engine, stale)).items():
                    self._keep(s, ts, data)
        by_symbol: dict[str, list[tuple[tuple, dict]]] = {}
        for (provider, symbol, interval), (ts, data) in self.book.items():
            if room == ALL_ROOM or symbol == room:
                rank = (ts, -INTERVALS.get(interval, 10**9), str(provider))
                by_symbol.setdefault(symbol, []).append((rank, data))
        out = []
        for symbol in sorted(by_symbol):
            out += [data for _, data in sorted(by_symbol[symbol], key=lambda item: item[0])]
        return len(by_symbol), out

    # -- the client protocol ---------------------------------------------------------------

    def connect(self, ws: WebSocket) -> Client | None:
        """A new client, or None when :attr:`clients_max` are connected already."""
        if self.clients >= self.clients_max:
            self.refused += 1
            now = time.monotonic()
            if now - self._refused_logged >= _REFUSED_LOG_SECONDS:
                self._refused_logged = now
                log.warning("live: refused a WebSocket client: %d connected already (at most %d)", self.clients,
                            self.clients_max)  # fmt: skip
            return None
        self.clients += 1
        return Client(ws, self.client_queue_max)

    def disconnect(self, client: Client) -> None:
        self.clients -= 1
        if client.closed == 1013:
            self.dropped += 1
        for room in client.rooms:
            self._forget(client, room)
        client.rooms.clear()
        client.holding.clear()
        client.close(1000)

    def _forget(self, client: Client, room: str) -> None:
        members = self.members.get(room)
        if members is not None:
            members.discard(client)
            if not members:
                del self.members[room]

    @staticmethod
    def refuse(client: Client, reason: str) -> None:
        """Tell ``client`` its message was not understood (the connection stays open)."""
        reason = reason[:200]
        log.debug("live: a WebSocket client's message refused: %s", reason)
        client.push(_dumps({"type": "error", "message": reason, "error": reason}))

    async def join(self, client: Client, room: str) -> None:
        if room in client.rooms:
            return
        if len(client.rooms) >= ROOMS_PER_CLIENT_MAX:
            self.refuse(client, f"at most {ROOMS_PER_CLIENT_MAX} rooms per connection")
            return
        client.rooms.add(room)
        client.holding[room] = []
        self.members.setdefault(room, set()).add(client)
        try:
            symbols, snapshot = await self._snapshot(room)
        except MarketpollError as exc:
            log.warning("live: could not read the snapshot of room %s: %s", room, exc)
            symbols, snapshot = 0, []
        now = _now_z(self.clock)
        client.push_many([Message(_dumps({"type": "price_update", "data": data, "timestamp": now})) for data in snapshot])
        client.push(_dumps({"type": "joined", "room": room, "symbols": symbols}))
        client.push_many(client.holding.pop(room, []))

    def leave(self, client: Client, room: str) -> None:
        client.rooms.discard(room)
        client.holding.pop(room, None)
        self._forget(client, room)
        client.push(_dumps({"type": "left", "room": room}))

    async def handle(self, client: Client, text: str) -> None:
        """One text message from ``client``; a malformed one is answered with an error message."""
        try:
            if len(text) > _MESSAGE_MAX:
                raise ValueError(f"message longer than {_MESSAGE_MAX} characters")
            try:
                msg = json.loads(text)
            except RecursionError:
                raise ValueError("malformed JSON: nested too deeply") from None
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind == "ping":
                client.push('{"type":"pong"}')
                return
            if kind not in ("join_room", "leave_room"):
                raise ValueError(f"unknown message type {str(kind)[:50]!r} (join_room, leave_room, ping)")
            raw = msg.get("room")
            if not isinstance(raw, str):
                raise ValueError("room: give a string, 'prices' or a symbol")
            room = ALL_ROOM if raw.strip().lower() == ALL_ROOM else normalize_symbol(raw)
        except ValueError as exc:  # json.JSONDecodeError too
            self.refuse(client, str(exc))
            return
        if kind == "join_room":
            await self.join(client, room)
        else:
            self.leave(client, room)


async def ws_endpoint(websocket: WebSocket) -> None:
    rooms: Rooms = websocket.app.state.rooms
    client = rooms.connect(websocket)
    if client is None:  # full: accepted so that the client sees the code and the reason
        try:
            await websocket.accept()
            await websocket.close(1013, f"too many WebSocket clients (at most {rooms.clients_max}); try again later")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        return
    writer = None
    try:
        await websocket.accept()
        writer = asyncio.create_task(client.writer())
        while client.closed is None:
            receive = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:  # the writer ended: closed for being slow, or the connection broke
                receive.cancel()
                break
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                rooms.refuse(client, "binary frames are not understood: send JSON text frames")
                continue
            await rooms.handle(client, text)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        rooms.disconnect(client)
        if writer is not None:
            if not writer.done():
                writer.cancel()
            try:
                await writer
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the connection is gone either way
                pass
