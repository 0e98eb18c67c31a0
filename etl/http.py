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

A plain session's GET skips requests' per-request machinery and goes straight to the same
adapter's urllib3 pool (same pool, TLS settings, headers, timeouts, exception classes; see
:meth:`HttpClient._route`): about half of a GET's CPU time on a loopback API.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import urlencode, urlsplit

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Timeout

from errors import HTTPError, PayloadError, RateLimited
from etl.metrics import REQUEST_SECONDS, THROTTLES
from etl.redact import redact_url

__all__ = [
    "HttpClient",
    "DeadlineAdapter",
    "request_deadline",
    "is_http_url",
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
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_MAX_ROUTES = 4096


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


#: thread -> the alarm of its current request (between :meth:`_Watchdog.arm` and ``disarm``).
_ALARMS: dict[threading.Thread, _Alarm] = {}


def _register(sock: socket.socket | None) -> None:
    """Publish ``sock`` as this thread's for the watchdog; cut it at once if the thread's alarm fired while the
    connection was still being opened (the watchdog found no socket then): either it sees the socket or the
    connection sees the alarm."""
    if sock is None:
        return
    me = threading.current_thread()
    _SOCKS[me] = sock
    alarm = _ALARMS.get(me)
    if alarm is not None and alarm.fired:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


class _TrackedHTTPConnection(HTTPConnection):
    def request(self, *args, **kwargs):  # called for new and for reused keep-alive connections alike
        try:
            return super().request(*args, **kwargs)
        finally:
            _register(self.sock)


class _TrackedHTTPSConnection(HTTPSConnection):
    def request(self, *args, **kwargs):
        try:
            return super().request(*args, **kwargs)
        finally:
            _register(self.sock)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter with pools whose connections report themselves to the watchdog: mount it on a session
    and send inside :func:`request_deadline` for one deadline over the whole request."""

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
            when = time.monotonic() + seconds
            # the thread sleeps until the earliest deadline (done alarms are popped when it wakes): it
            # needs waking only for an earlier one. Requests of one deadline come in deadline order,
            # so this is rare: a hand-off to the watchdog thread per request cost ~5 % of a poll's CPU.
            wake = not self._heap or when < self._heap[0][0]
            heapq.heappush(self._heap, (when, next(self._seq), alarm))
            _ALARMS[alarm.thread] = alarm
            if wake:
                self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> None:
        alarm.done = True  # popped lazily
        if _ALARMS.get(alarm.thread) is alarm:
            del _ALARMS[alarm.thread]

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


def is_http_url(url: str) -> bool:
    """Whether ``url`` is ``http(s)://host[:port][/path...]``: a scheme requests can send to, a host, a valid
    port, and no blank or control character (what a typo in a setting or flag looks like)."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok
            and not any(c.isspace() or ord(c) < 32 for c in url))  # fmt: skip


@contextmanager
def request_deadline(seconds: float) -> Iterator[_Alarm]:
    """One deadline of ``seconds`` for the requests this thread sends inside, through a :class:`DeadlineAdapter`
    (connecting, sending, and reading as far as the caller reads): at the deadline the watchdog shuts the
    socket down, the blocked call raises, and the yielded alarm's ``fired`` says it was the deadline."""
    me = threading.current_thread()
    alarm = _WATCHDOG.arm(seconds)
    try:
        yield alarm
    finally:
        _WATCHDOG.disarm(alarm)
        _SOCKS.pop(me, None)


# -- the direct route ----------------------------------------------------------------------


class _Route(NamedTuple):
    """How a URL is sent on the direct route: the adapter whose pools serve it, the path, TLS settings."""

    adapter: HTTPAdapter
    path: str  # path and query of the URL as given (the request's params are appended)
    sep: str  # "?" or "&": what joins the params' query
    verify: object
    cert: object


class _Target(NamedTuple):
    url: str  # all of requests' adapter reads from a request to pick a pool


def _translated(exc: Exception) -> requests.RequestException:
    """The exception requests' adapter raises for urllib3's ``exc`` (same classes, so the same handling)."""
    if isinstance(exc, u3.MaxRetryError):
        exc = exc.reason if isinstance(exc.reason, Exception) else exc
    if isinstance(exc, u3.ConnectTimeoutError) and not isinstance(exc, u3.NewConnectionError):
        return requests.ConnectTimeout("connect timeout")
    if isinstance(exc, u3.ReadTimeoutError):
        return requests.ReadTimeout("read timeout")
    if isinstance(exc, u3.SSLError):
        return requests.exceptions.SSLError("SSL error")
    if isinstance(exc, u3.DecodeError):
        return requests.exceptions.ContentDecodingError("content decoding error")
    if isinstance(exc, u3.ProtocolError):
        return requests.ConnectionError("connection broken")
    return requests.ConnectionError(type(exc).__name__)


class _DirectReply:
    """A urllib3 response with the few members of requests.Response that :meth:`HttpClient.get` uses."""

    __slots__ = ("raw", "status_code", "headers", "url", "_consumed")

    def __init__(self, raw, url: str) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers  # urllib3's HTTPHeaderDict: case-insensitive, like requests'
        self.url = url
        self._consumed = False

    def iter_content(self, size: int) -> Iterator[bytes]:
        try:
            yield from self.raw.stream(size, decode_content=True)
        except u3.ReadTimeoutError:  # as requests: a timeout within the body is a broken connection
            raise requests.ConnectionError("read timeout within the body") from None
        except (u3.HTTPError, OSError) as exc:
            raise _translated(exc) from None
        self._consumed = True

    def close(self) -> None:  # as requests.Response.close
        if not self._consumed:
            self.raw.close()  # a body left unread (cut off, not wanted): its connection is not reused
        self.raw.release_conn()


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
        adapter = DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.timeout = (connect_timeout_seconds, read_timeout_seconds)
        self._timeout = Timeout(connect=connect_timeout_seconds, read=read_timeout_seconds)
        self.total_timeout_seconds = total_timeout_seconds
        self.max_response_bytes = max_response_bytes
        # requests re-reads the whole environment for proxy settings on every request (about a
        # third of a GET's CPU time here); resolve them once per endpoint with requests' own
        # rules (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE ...) and pass them explicitly.
        self._env: dict[str, dict] = {}
        self._routes: dict[str, _Route | None] = {}
        self._pools: dict[str, HTTPConnectionPool] = {}  # URL -> its pool (a lookup costs ~3 % of a poll's CPU)
        self._trust_env = self.session.trust_env
        self.session.trust_env = False

    def _route(self, url: str, env: dict) -> _Route | None:
        """The direct route for ``url``, or None when only requests' full path does what the session asks.

        requests' per-request machinery (merging session settings, preparing the request, hooks,
        cookie bookkeeping) costs more CPU than the GET itself on a loopback or LAN API. A plain
        session (no cookies, auth, default params or hooks; no proxy for the URL; the adapter
        mounted here) asks for none of it, so the GET goes straight to the same adapter's urllib3
        pool, with the same pool, TLS settings, headers, timeouts and retries as requests would
        use, and the same exception classes. Redirects are left to requests: a URL that answers
        with one is sent through requests from then on (that first request is sent twice, once
        per URL and client). ``Set-Cookie`` replies are not kept in the session (no provider uses cookies).
        """
        s = self.session
        if s.cookies or s.auth is not None or s.params or any(s.hooks.values()):
            return None
        if url not in self._routes:
            if len(self._routes) >= _MAX_ROUTES:  # URLs naming a symbol or a window: bounded all the same
                self._routes.clear()
                self._pools.clear()
            adapter = s.get_adapter(url)
            parts = urlsplit(url)
            route = None
            if isinstance(adapter, DeadlineAdapter) and not env.get("proxies") and not s.proxies and parts.hostname:
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                route = _Route(adapter, path, "&" if parts.query else "?", env.get("verify", s.verify),
                               env.get("cert", s.cert))  # fmt: skip
            self._routes[url] = route
        return self._routes[url]

    def _direct_get(self, route: _Route, url: str, params: dict[str, str], headers: Mapping[str, str] | None):
        """One GET on the direct route (see :meth:`_route`); a :class:`_DirectReply`, streamed."""
        query = urlencode(params, doseq=True) if params else ""
        full = f"{url}{route.sep}{query}" if query else url
        if headers:
            merged = CaseInsensitiveDict(self.session.headers)
            merged.update(headers)
            send = {k: v for k, v in merged.items() if v is not None}
        else:
            send = dict(self.session.headers)
        adapter = route.adapter
        try:
            pool = self._pools.get(url)
            if pool is None or pool.pool is None:  # not yet looked up, or closed (evicted by the pool manager)
                pool = adapter.get_connection_with_tls_context(_Target(full), route.verify, cert=route.cert)  # type: ignore[arg-type]
                self._pools[url] = pool
            if full.startswith("https"):
                adapter.cert_verify(pool, full, route.verify, route.cert)
            raw = pool.urlopen("GET", f"{route.path}{route.sep}{query}" if query else route.path, headers=send,
                               redirect=False, assert_same_host=False, preload_content=False, decode_content=False,
                               retries=adapter.max_retries, timeout=self._timeout, chunked=False)  # fmt: skip
        except (u3.HTTPError, OSError) as exc:
            raise _translated(exc) from None
        return _DirectReply(raw, full)

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
        resp = None
        with request_deadline(self.total_timeout_seconds) as alarm:
            try:
                try:
                    route = self._route(url, env)
                    if route is not None:
                        resp = self._direct_get(route, url, params, headers)
                        if resp.status_code in _REDIRECTS and "Location" in resp.headers:
                            # requests follows redirects with all its rules (auth stripped across hosts ...):
                            # this URL takes its path from now on, and this one request is sent again through it
                            resp.close()
                            resp = None
                            self._routes[url] = None
                    if resp is None:
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
                                        f"deadline (HTTP_TOTAL_TIMEOUT_SECONDS) for {safe}", url=safe,
                                        **ctx) from None  # fmt: skip
                    kind = "timeout" if isinstance(exc, requests.Timeout) else type(exc).__name__
                    log.debug("GET %s -> %s after %.0f ms", safe, kind, ms)
                    raise HTTPError(f"{self.provider}: {kind} requesting {safe}", url=safe, **ctx) from None
            finally:
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
