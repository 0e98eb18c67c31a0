"""``WS /ws``: rooms of live prices, the protocol of the crypto streaming server its users know.

Client → server (JSON text frames):

- ``{"type": "join_room", "room": "prices"}``: every symbol; ``{"type": "join_room", "room": "TSLA"}``: one symbol;
- ``{"type": "leave_room", "room": ...}``; ``{"type": "ping"}`` (answered ``{"type": "pong"}``).

Server → client:

- ``{"type": "price_update", "data": {"symbol", "price", "change_24h", "change_percent_24h", "volume_24h",
  "timestamp"}, "timestamp"}``: computed from the stored bars (:func:`api.queries.price_update`; ``data.timestamp``
  is the newest bar's start, the outer one when it was sent, both UTC ``Z``);
- ``{"type": "bar", "data": {...}}``: the event payload (:func:`etl.events.bar_payload`), sent before its price_update;
- on joining: first a snapshot, the current ``price_update`` of each symbol of the room (of its series with the
  newest bar), then ``{"type": "joined", "room", "symbols": N}``, then the live messages;
- ``{"type": "error", "message"}`` for a message it does not understand (the connection stays open).

A client is in at most :data:`ROOMS_PER_CLIENT_MAX` rooms and gets each message once, whatever rooms
it shares. Bounded: :data:`WS_QUEUE_MAX` messages wait per client; a client further behind is closed
with code 1013 ("try again later"): it never slows the others or the loading. The prices of live events
are read once per batch of events for all clients (:class:`Rooms`), and kept in a book (series → newest
price) that serves the snapshots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from api.events import EventHub, HubEvent
from api.queries import PRICE_SERIES_MAX, all_series, prices
from clock import Clock
from errors import MarketpollError
from models.bar import INTERVALS, normalize_symbol

__all__ = ["Rooms", "ws_endpoint", "FramesProtocol", "WS_QUEUE_MAX", "ROOMS_PER_CLIENT_MAX", "ALL_ROOM", "FRAMES_EXTENSION"]

log = logging.getLogger(__name__)

#: Messages one client may have waiting; a client further behind is closed (code 1013).
WS_QUEUE_MAX = 20_000
#: Rooms one client may be in at once.
ROOMS_PER_CLIENT_MAX = 100
#: The room of every symbol.
ALL_ROOM = "prices"
#: Events the rooms' feed may have waiting (one feed for all clients).
_FEED_QUEUE_MAX = 100_000
#: A client message longer than this is refused (characters).
_MESSAGE_MAX = 4_096
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
    """The rooms of every WebSocket client, fed by one hub subscription; runs on the server's event loop."""

    def __init__(self, hub: EventHub, engine, clock: Clock, *, client_queue_max: int = WS_QUEUE_MAX) -> None:
        self.hub, self.engine, self.clock = hub, engine, clock
        self.client_queue_max = client_queue_max
        self.members: dict[str, set[Client]] = {}
        self.book: dict[Series, tuple[datetime, dict]] = {}  # series → (newest ts, price_update data)
        self._book_loaded = False
        self._stale: set[Series] = set()  # series whose newest bar changed while nobody watched them
        self._book_lock = asyncio.Lock()
        self._sub = None
        self.clients = 0
        self.dropped = 0

    def stats(self) -> dict:
        return {"ws_clients": self.clients, "ws_rooms": sum(1 for m in self.members.values() if m),
                "ws_dropped_slow_clients": self.dropped, "ws_queue_max": self.client_queue_max}  # fmt: skip

    async def run(self) -> None:
        """Consume the hub until it closes."""
        while True:
            if self._sub is None or self._sub.reason == "slow":
                if self._sub is not None:
                    log.warning("live: the WebSocket rooms fell %d events behind; prices will be re-read", _FEED_QUEUE_MAX)
                    self._stale.update(self.book)
                self._sub = self.hub.subscribe(maxsize=_FEED_QUEUE_MAX)
            ev = await self._sub.get()
            if ev is None:
                if self._sub.reason == "slow":
                    continue
                return
            try:
                await self._deliver([ev, *self._sub.drain(5_000)])
            except Exception:  # a bug here must not stop the rooms
                log.exception("live: delivering to the WebSocket rooms failed")

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
            self._keep(series, ts, data)
            message = Message(_dumps({"type": "price_update", "data": data, "timestamp": now}))
            for c in self._targets(series[1]):  # who is in the room now
                self._send(c, series[1], message, out)
        self._flush(out)

    def _keep(self, series: Series, ts: datetime, data: dict) -> None:
        held = self.book.get(series)
        if held is None or held[0] <= ts:
            self.book[series] = (ts, data)
            self._stale.discard(series)
            while len(self.book) > PRICE_SERIES_MAX:
                self.book.pop(next(iter(self.book)))

    async def _snapshot(self, room: str) -> list[dict]:
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
        best: dict[str, tuple] = {}
        for (_, symbol, interval), (ts, data) in self.book.items():
            if room != ALL_ROOM and symbol != room:
                continue
            rank = (ts, -INTERVALS.get(interval, 10**9))
            if symbol not in best or rank > best[symbol][0]:
                best[symbol] = (rank, data)
        return [best[s][1] for s in sorted(best)]

    # -- the client protocol ---------------------------------------------------------------

    def connect(self, ws: WebSocket) -> Client:
        self.clients += 1
        return Client(ws, self.client_queue_max)

    def disconnect(self, client: Client) -> None:
        self.clients -= 1
        if client.closed == 1013:
            self.dropped += 1
        for room in client.rooms:
            self.members.get(room, set()).discard(client)
        client.rooms.clear()
        client.close(1000)

    async def join(self, client: Client, room: str) -> None:
        if room in client.rooms:
            return
        if len(client.rooms) >= ROOMS_PER_CLIENT_MAX:
            client.push(_dumps({"type": "error", "message": f"at most {ROOMS_PER_CLIENT_MAX} rooms per connection"}))
            return
        client.rooms.add(room)
        client.holding[room] = []
        self.members.setdefault(room, set()).add(client)
        try:
            snapshot = await self._snapshot(room)
        except MarketpollError as exc:
            log.warning("live: could not read the snapshot of room %s: %s", room, exc)
            snapshot = []
        now = _now_z(self.clock)
        for data in snapshot:
            client.push(_dumps({"type": "price_update", "data": data, "timestamp": now}))
        client.push(_dumps({"type": "joined", "room": room, "symbols": len(snapshot)}))
        client.push_many(client.holding.pop(room, []))

    def leave(self, client: Client, room: str) -> None:
        client.rooms.discard(room)
        client.holding.pop(room, None)
        self.members.get(room, set()).discard(client)
        client.push(_dumps({"type": "left", "room": room}))

    async def handle(self, client: Client, text: str) -> None:
        """One message from ``client``."""
        try:
            if len(text) > _MESSAGE_MAX:
                raise ValueError(f"message longer than {_MESSAGE_MAX} characters")
            msg = json.loads(text)
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind == "ping":
                client.push('{"type":"pong"}')
                return
            if kind not in ("join_room", "leave_room"):
                raise ValueError(f"unknown message type {kind!r} (join_room, leave_room, ping)")
            raw = msg.get("room")
            if not isinstance(raw, str):
                raise ValueError("room: give a string, 'prices' or a symbol")
            room = ALL_ROOM if raw.strip().lower() == ALL_ROOM else normalize_symbol(raw)
        except ValueError as exc:  # json.JSONDecodeError too
            client.push(_dumps({"type": "error", "message": str(exc)[:200]}))
            return
        if kind == "join_room":
            await self.join(client, room)
        else:
            self.leave(client, room)


async def ws_endpoint(websocket: WebSocket) -> None:
    rooms: Rooms = websocket.app.state.rooms
    await websocket.accept()
    client = rooms.connect(websocket)
    writer = asyncio.create_task(client.writer())
    try:
        while client.closed is None:
            receive = asyncio.ensure_future(websocket.receive_text())
            done, _ = await asyncio.wait({receive, writer}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:  # the writer ended: closed for being slow, or the connection broke
                receive.cancel()
                break
            await rooms.handle(client, receive.result())
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        rooms.disconnect(client)
        if not writer.done():
            writer.cancel()
        try:
            await writer
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the connection is gone either way
            pass
