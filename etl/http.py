"""A thin HTTP GET over ``requests.Session`` that translates failures into :mod:`errors`.

Every request is bounded three ways:

- ``connect_timeout_seconds`` / ``read_timeout_seconds``: per socket operation (requests' own);
- ``total_timeout_seconds``: one end-to-end deadline for connect, headers and the whole body.
  Per-read timeouts alone let a server that drips a byte a second hold a request for
  hours; at the deadline a shared watchdog thread shuts the request's socket down, the
  blocked read returns, and the request fails with a transient :class:`~errors.HTTPError`;
- ``max_response_bytes``: the body is streamed and counted (after decompression); a
  declared ``Content-Length`` over the limit is refused before reading, a body that grows
  past it is cut off. Either way a terminal :class:`~errors.PayloadError`, nothing kept.

No retry happens here (see :mod:`etl.retry`); every URL in a message is redacted. At
DEBUG, one line per request: ``GET <redacted url> -> <status> in <ms> ms (<bytes> bytes)``.
"""

from __future__ import annotations

import email.utils
import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from errors import HTTPError, PayloadError, RateLimited
from etl.metrics import REQUEST_SECONDS, THROTTLES
from etl.redact import redact_url

__all__ = [
    "HttpClient",
    "Response",
    "parse_retry_after",
    "DEFAULT_TOTAL_TIMEOUT_SECONDS",
    "DEFAULT_MAX_RESPONSE_BYTES",
]

log = logging.getLogger(__name__)

#: One request's end-to-end deadline, in seconds (``HTTP_TOTAL_TIMEOUT_SECONDS``).
DEFAULT_TOTAL_TIMEOUT_SECONDS = 30.0
#: The largest body accepted, in bytes after decompression (``HTTP_MAX_RESPONSE_BYTES``): 32 MiB.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    """A response read in full: ``body`` as raw bytes, ``url`` already redacted, ``headers`` (case-insensitive)."""

    status: int
    body: bytes
    content_type: str
    url: str
    elapsed_seconds: float
    headers: Mapping[str, str] = field(default_factory=dict)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


# -- the deadline watchdog ---------------------------------------------------------------

#: thread -> the socket its current request reads from (published for the watchdog). The socket, not
#: the connection: for a ``Connection: close`` reply http.client hands the socket to the response
#: and clears ``connection.sock``.
_SOCKS: dict[threading.Thread, socket.socket] = {}


class _TrackedHTTPConnection(HTTPConnection):
    def request(self, *args, **kwargs):  # called for new and for reused keep-alive connections alike
        try:
            return super().request(*args, **kwargs)
        finally:
            if self.sock is not None:
                _SOCKS[threading.current_thread()] = self.sock


class _TrackedHTTPSConnection(HTTPSConnection):
    def request(self, *args, **kwargs):
        try:
            return super().request(*args, **kwargs)
        finally:
            if self.sock is not None:
                _SOCKS[threading.current_thread()] = self.sock


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with pools whose connections report themselves to the watchdog."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _Alarm:
    __slots__ = ("thread", "fired", "done")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.fired = False
        self.done = False


class _Watchdog:
    """One daemon thread for every request of the process: at an alarm's deadline it shuts down
    the socket its thread is reading from (the only way to end a blocked read from outside)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> _Alarm:
        alarm = _Alarm(threading.current_thread())
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._seq), alarm))
            self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> None:
        alarm.done = True  # popped lazily

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][2].done:
                    if self._heap:
                        heapq.heappop(self._heap)
                        continue
                    self._cond.wait()
                when, _, alarm = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            if not alarm.done:
                alarm.fired = True
                _shutdown_socket_of(alarm.thread)


def _shutdown_socket_of(thread: threading.Thread) -> None:
    sock = _SOCKS.get(thread)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


_WATCHDOG = _Watchdog()


class HttpClient:
    """GET with per-operation timeouts, one end-to-end deadline and a reply-size limit (see module docstring).

    Raises :class:`~errors.RateLimited` for 429 (with its ``Retry-After``),
    :class:`~errors.HTTPError` for other non-2xx statuses (transient for 5xx, 408, network
    errors and a missed deadline; terminal for other 4xx) and :class:`~errors.PayloadError`
    for a body over ``max_response_bytes``. Times are seconds.
    """

    def __init__(
        self,
        provider: str,
        session: requests.Session | None = None,
        *,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 30.0,
        total_timeout_seconds: float = DEFAULT_TOTAL_TIMEOUT_SECONDS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        user_agent: str = "marketpoll",
    ) -> None:
        self.provider = provider
        self.session = session or requests.Session()
        if self.session.headers.get("User-Agent", "").startswith("python-requests"):  # requests' default: some APIs refuse it
            self.session.headers["User-Agent"] = user_agent
        adapter = _DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.timeout = (connect_timeout_seconds, read_timeout_seconds)
        self.total_timeout_seconds = total_timeout_seconds
        self.max_response_bytes = max_response_bytes
        # requests re-reads the whole environment for proxy settings on every request (about a
        # third of a GET's CPU time here); resolve them once per endpoint with requests' own
        # rules (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE ...) and pass them explicitly.
        self._env: dict[str, dict] = {}
        self._trust_env = self.session.trust_env
        self.session.trust_env = False

    def _settings_for(self, url: str) -> dict:
        env = self._env.get(url)
        if env is None:
            env = {}
            if self._trust_env:
                self.session.trust_env = True
                env = self.session.merge_environment_settings(url, {}, None, None, None)
                env.pop("stream", None)  # always streamed here: the body is read within the limits
                self.session.trust_env = False
            self._env[url] = env
        return env

    def get(self, url: str, params: dict[str, str], *, symbol: str | None = None, headers: Mapping[str, str] | None = None,
            raise_for_status: bool = True) -> Response:  # fmt: skip
        """One GET of ``url`` with ``params`` and extra ``headers``; the body read in full within the limits.

        With ``raise_for_status=False`` a non-2xx reply is returned (its body bounded the same way)
        for the caller to interpret; else it raises as the class says.
        """
        ctx = {"provider": self.provider, "symbol": symbol}
        env = self._settings_for(url)
        t0 = time.perf_counter()
        me = threading.current_thread()
        alarm = _WATCHDOG.arm(self.total_timeout_seconds)
        resp = None
        try:
            try:
                resp = self.session.get(url, params=params, headers=headers, timeout=self.timeout, stream=True, **env)
                if alarm.fired:
                    raise requests.ConnectionError("deadline")
                status = resp.status_code
                body = self._read_body(resp, ctx, alarm) if 200 <= status < 300 or not raise_for_status else b""
            except requests.RequestException as exc:
                # requests' own messages embed the full URL, API key included, so the
                # original is not chained (``from None``): only its type and the redacted URL travel.
                safe = redact_url(requests.Request("GET", url, params=params).prepare().url or url)
                ms = (time.perf_counter() - t0) * 1000
                if alarm.fired:
                    log.debug("GET %s -> deadline of %gs exceeded after %.0f ms", safe, self.total_timeout_seconds, ms)
                    raise HTTPError(f"{self.provider}: no complete reply within the {self.total_timeout_seconds:g}s "
                                    f"deadline (HTTP_TOTAL_TIMEOUT_SECONDS) for {safe}", url=safe, **ctx) from None  # fmt: skip
                kind = "timeout" if isinstance(exc, requests.Timeout) else type(exc).__name__
                log.debug("GET %s -> %s after %.0f ms", safe, kind, ms)
                raise HTTPError(f"{self.provider}: {kind} requesting {safe}", url=safe, **ctx) from None
        finally:
            _WATCHDOG.disarm(alarm)
            _SOCKS.pop(me, None)
            if resp is not None:
                resp.close()
        elapsed = time.perf_counter() - t0
        REQUEST_SECONDS.labels(self.provider).observe(elapsed)
        safe = redact_url(resp.url)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("GET %s -> %d in %.0f ms (%d bytes)", safe, status, elapsed * 1000, len(body))
        reply = Response(status, body, resp.headers.get("Content-Type", ""), safe, elapsed, resp.headers)
        if not raise_for_status:
            return reply
        if status == 429:
            THROTTLES.labels(self.provider).inc()
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise RateLimited(f"{self.provider}: HTTP 429 for {safe}", retry_after_seconds=retry_after, url=safe, **ctx)
        if not 200 <= status < 300:
            transient = status >= 500 or status == 408
            raise HTTPError(f"{self.provider}: HTTP {status} for {safe}", status=status, transient=transient, url=safe, **ctx)
        return reply

    def _read_body(self, resp: requests.Response, ctx: dict, alarm: _Alarm) -> bytes:
        limit = self.max_response_bytes
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise self._too_large(resp, ctx, f"declares {int(declared):,} bytes")
        chunks, size = [], 0
        for chunk in resp.iter_content(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise self._too_large(resp, ctx, f"passed {limit:,} bytes")
            chunks.append(chunk)
        if alarm.fired:  # the watchdog cut the body short: what arrived is not the reply
            raise requests.ConnectionError("deadline")
        return b"".join(chunks)

    def _too_large(self, resp: requests.Response, ctx: dict, what: str) -> PayloadError:
        safe = redact_url(resp.url)
        return PayloadError(f"{self.provider}: reply {what}, over the {self.max_response_bytes:,}-byte limit "
                            f"(HTTP_MAX_RESPONSE_BYTES) for {safe}; nothing of it is loaded", url=safe, **ctx)  # fmt: skip
