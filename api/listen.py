"""The API's one ``LISTEN marketpoll_bars`` connection (PostgreSQL), fanned out through the hub.

A thread holds a dedicated psycopg2 connection (autocommit), waits on its socket at most
:data:`POLL_SECONDS` at a time, and publishes every notification that arrived together as one
batch (:meth:`api.events.EventHub.publish_many`). When the connection breaks (a database
restart, ``pg_terminate_backend``), it reconnects with backoff (:data:`RECONNECT_INITIAL_SECONDS`,
doubling up to :data:`RECONNECT_MAX_SECONDS`); once ``LISTEN`` is in place again it *catches up*:
the series written since the last moment it knew it was listening (less :data:`CATCHUP_MARGIN_SECONDS`,
for transactions that began before and committed after) are read from ``series_last_write`` and ``bars``
(:func:`api.queries.bars_since`) and published, except those already published with the same
newest bar.

What a subscriber gets around an outage: every series changed during it, once, as one event with its
newest bar and ``rows`` = how many of its rows its last write inserted or changed (its intermediate bars
are not separate events: a consumer that needs each bar reads ``bars`` by ``ts``);
an event may come twice. Notifications received but not yet handed to the hub when the connection
breaks are handed over then (so the catch-up, which skips what was published, cannot skip them). A
catch-up that fails (the database still unreachable) keeps the start of the gap and is retried
(:data:`CATCHUP_RETRY_SECONDS`, doubling up to :data:`RECONNECT_MAX_SECONDS`) until it succeeds; a
later break while it is still owed widens the same gap. The gap is read whole (it begins at a moment
this listener was listening, never before it started); at most :data:`api.queries.CATCHUP_SERIES_MAX`
series, the most recently written (a warning tells when more changed).
"""

from __future__ import annotations

import json
import logging
import select
import threading
import time
from collections import OrderedDict
from datetime import datetime, timedelta

import sqlalchemy as sa

from api.events import EventHub
from api.queries import bars_since
from etl.events import BARS_CHANNEL

__all__ = [
    "PgListener",
    "POLL_SECONDS",
    "BATCH_SECONDS",
    "RECONNECT_INITIAL_SECONDS",
    "RECONNECT_MAX_SECONDS",
    "CATCHUP_MARGIN_SECONDS",
    "CATCHUP_RETRY_SECONDS",
]

log = logging.getLogger(__name__)

#: Longest wait on the socket before checking for a stop and a broken connection, in seconds.
POLL_SECONDS = 1.0
#: First wait before reconnecting, in seconds; doubled after each failure up to :data:`RECONNECT_MAX_SECONDS`.
RECONNECT_INITIAL_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
#: How far before the last moment known to be listening a catch-up reads, in seconds (longer than a load transaction).
CATCHUP_MARGIN_SECONDS = 120.0
#: First wait before retrying a catch-up that failed, in seconds; doubled after each failure up to :data:`RECONNECT_MAX_SECONDS`.
CATCHUP_RETRY_SECONDS = 0.5
#: Series whose last published bar is remembered, to skip re-publishing them in a catch-up.
SEEN_SERIES_MAX = 100_000
#: Notifications are handed to the hub at most this often, in seconds: the first after a quiet spell at once,
#: those of a burst (a cycle's transactions) gathered, so each subscriber is woken and written to once per batch.
BATCH_SECONDS = 0.02
#: A notification that cannot be parsed is logged at most this often, in seconds.
_BAD_LOG_EVERY = 60.0


class PgListener:
    """``LISTEN`` on ``engine``'s database in a daemon thread; :meth:`close` stops it (waits at most a poll).

    ``hub.listen_state`` shows it (``GET /status`` → ``live.listen``): connected, reconnects, notifications,
    caught-up events, the last error.
    """

    def __init__(self, engine: sa.Engine, hub: EventHub, *, channel: str = BARS_CHANNEL) -> None:
        self.engine = engine
        self.hub = hub
        self.channel = channel
        self._stop = threading.Event()
        self._conn = None
        self._seen: OrderedDict[tuple, tuple] = OrderedDict()
        self._listening_since: datetime | None = None  # the last moment known to be listening (UTC)
        self._gap_from: datetime | None = None  # the start of a gap not caught up yet (UTC): kept until a catch-up succeeds
        self._retry_delay = 0.0
        self._retry_at = 0.0  # time.monotonic() of the next catch-up attempt while _gap_from is set
        self._pending: list[dict] = []  # received, not yet handed to the hub
        self.connected = threading.Event()
        self.state = hub.listen_state
        self.state.update(channel=channel, connected=False, reconnects=0, notifications=0, caught_up=0, last_error=None,
                          catch_up_owed=False, catch_up_failures=0)  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="api-listen", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_SECONDS + 5)
        self._drop()

    # -- the thread ------------------------------------------------------------------------

    def _connect(self):
        conn = self.engine.raw_connection()  # the engine's URL and options; detached: this thread owns it
        pg = conn.driver_connection
        conn.detach()
        pg.autocommit = True
        with pg.cursor() as cur:
            cur.execute(f'LISTEN "{self.channel}"')
            cur.execute("SELECT now()")
            (now,) = cur.fetchone()
        self._conn = pg  # detached from the pool: closed by this thread only
        self.state["backend_pid"] = pg.get_backend_pid()
        return pg, now

    def _drop(self) -> None:
        pg, self._conn = self._conn, None
        if pg is not None:
            try:
                pg.close()
            except Exception:  # noqa: BLE001, S110 - already broken: nothing to tell
                pass

    def _run(self) -> None:
        delay = 0.0  # the first connection at once; after a break, RECONNECT_INITIAL_SECONDS, doubling while it fails
        while not self._stop.wait(delay):
            try:
                pg, db_now = self._connect()
            except Exception as exc:  # noqa: BLE001 - whatever broke, the thread lives on and retries
                self._drop()
                delay = min(max(delay * 2, RECONNECT_INITIAL_SECONDS), RECONNECT_MAX_SECONDS)
                self._failed(exc, delay)
                continue
            self.state.update(connected=True, last_error=None)
            if self._listening_since is not None:  # it listened before the break: read what it missed
                self.state["reconnects"] += 1
                if self._gap_from is None:  # else a gap still owed: it began earlier and stays open
                    self._gap_from = self._listening_since
                log.info("live: LISTEN %s again; catching up on what was written meanwhile", self.channel)
                self._retry_at = 0.0
                self._try_catch_up()
            self._listening_since = db_now
            self.connected.set()
            try:
                self._listen(pg)
            except Exception as exc:  # noqa: BLE001 - a broken connection (or a bug): reconnect
                delay = RECONNECT_INITIAL_SECONDS
                self._failed(exc, delay)
            finally:
                self.connected.clear()
                self.state["connected"] = False
                self._drop()

    def _failed(self, exc: BaseException, delay: float) -> None:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.state.update(connected=False, last_error=text)
        log.warning("live: the LISTEN connection failed (%s); reconnecting in %.1f s", text, delay)

    def _listen(self, pg) -> None:
        try:
            self._listen_until_broken(pg)
        finally:  # whatever arrived is committed: hand it over now, or the catch-up would skip it as published
            self._publish_pending()

    def _listen_until_broken(self, pg) -> None:
        last_bad = 0.0
        probed = published = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            wait = POLL_SECONDS if not self._pending else max(0.0, published + BATCH_SECONDS - now)
            if self._gap_from is not None:
                wait = min(wait, max(0.0, self._retry_at - now))
            ready, _, _ = select.select([pg], [], [], wait)
            if time.monotonic() - probed >= POLL_SECONDS:
                probed = time.monotonic()
                with pg.cursor() as cur:  # an idle connection's death shows only when used; and the database's now
                    cur.execute("SELECT now()")
                    (self._listening_since,) = cur.fetchone()
            if ready or pg.notifies:
                pg.poll()
                notes, pg.notifies[:] = list(pg.notifies), []
                self.state["notifications"] += len(notes)
                for note in notes:
                    try:
                        payload = json.loads(note.payload)
                        if not isinstance(payload, dict):
                            raise ValueError("not a JSON object")
                    except ValueError as exc:
                        if time.monotonic() - last_bad > _BAD_LOG_EVERY:
                            last_bad = time.monotonic()
                            log.warning("live: ignored a %s notification that is not a bar event: %s", self.channel, exc)
                        continue
                    self._pending.append(payload)
            if self._pending and time.monotonic() - published >= BATCH_SECONDS:
                self._publish_pending()
                published = time.monotonic()
            if self._gap_from is not None and time.monotonic() >= self._retry_at:
                self._try_catch_up()

    def _publish_pending(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self.hub.publish_many(pending)
            for payload in pending:  # remembered once published, never before
                self._remember(payload)

    def _remember(self, payload: dict) -> None:
        key = (payload.get("provider"), payload.get("symbol"), payload.get("interval"))
        self._seen[key] = (payload.get("ts"), payload.get("close"))
        self._seen.move_to_end(key)
        if len(self._seen) > SEEN_SERIES_MAX:
            self._seen.popitem(last=False)

    def _try_catch_up(self) -> None:
        """Catch up on the gap owed; when that fails, keep its start and try again later (backing off)."""
        if self._gap_from is None:
            return
        try:
            self._catch_up(self._gap_from)
        except Exception as exc:  # noqa: BLE001 - a database still away (LoadError) or a bug: the gap stays owed
            self.state["catch_up_failures"] += 1
            self._retry_delay = min(max(self._retry_delay * 2, CATCHUP_RETRY_SECONDS), RECONNECT_MAX_SECONDS)
            self._retry_at = time.monotonic() + self._retry_delay
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("live: could not catch up on what was written while not listening (%s); retrying in %.1f s",
                        text, self._retry_delay)  # fmt: skip
        else:
            self._gap_from, self._retry_delay = None, 0.0
        self.state["catch_up_owed"] = self._gap_from is not None

    def _catch_up(self, gap_from: datetime) -> None:
        """Publish the series written since ``gap_from`` (less the margin) not published already; raises LoadError."""
        since = gap_from - timedelta(seconds=CATCHUP_MARGIN_SECONDS)
        found = bars_since(self.engine, since, window=None)  # the listener's own gap: read whole
        if found.truncated:
            log.warning("live: more series were written while not listening than one catch-up sends; "
                        "the %d most recently written are published", len(found.payloads))  # fmt: skip
        self._publish_pending()  # what was heard before goes first, and is not published twice
        fresh = []
        for payload in found.payloads:
            key = (payload["provider"], payload["symbol"], payload["interval"])
            if self._seen.get(key) == (payload["ts"], payload["close"]):
                continue  # published before the gap, with this very bar
            fresh.append(payload)
        self.state["caught_up"] += len(fresh)
        if fresh:
            log.info("live: caught up %d series written while not listening", len(fresh))
            self.hub.publish_many(fresh)
            for payload in fresh:
                self._remember(payload)
