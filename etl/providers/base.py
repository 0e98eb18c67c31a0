"""The provider contract: how marketpoll pulls bars from one REST API.

A provider is **pure**: it builds requests and parses replies, nothing more. The request
loop in this base class (:meth:`Provider.fetch_bars`, :meth:`Provider.fetch_range`) owns
everything else, the same for every provider: the rate budget of the API key (taken before
every request, so no provider can skip it), a bounded pool of HTTP sessions that requests
check out and return (connections reused across threads and cycles, see :meth:`Provider.close`),
the per-request deadline and reply-size limit (:mod:`etl.http`), retries
keyed off the transient/terminal mark of :mod:`errors` within the symbol's retry budget
(:mod:`etl.retry`), redaction of secrets, pagination guards, and dropping bars that are
still forming. (The dlt ``rest_client`` pattern: the loop owns the I/O, the strategies
only read and return state.)

What a subclass provides
------------------------
- Class attributes: ``name`` (registry key), ``intervals`` (canonical interval → the API's
  own spelling; an interval not listed is a :class:`~errors.ConfigError`), ``env_prefix``
  (``POLYGON`` → ``POLYGON_BASE_URL``, ``POLYGON_API_KEY``, ``POLYGON_RATE_LIMIT`` and one
  ``POLYGON_<FIELD>`` per field of its ``Config``), ``Config`` (a :class:`ProviderConfig`
  subclass declaring its options, with defaults), ``default_rate_limit`` (the free tier's
  budget, e.g. ``"5/minute"``), ``key_required`` and ``key_help``.
- :meth:`Provider.latest_request`: the request for the newest bars (a polling cycle).
- :meth:`Provider.range_requests`: the requests that cover a UTC window ``[start, end)``
  within the API's limits (chunked by the provider: a month per Alpha Vantage request, 300
  candles per Coinbase request, 8 days per Yahoo 1m request ...).
- :meth:`Provider.parse`: one reply → a :class:`Page`; raises the typed error an error
  body stands for (:class:`~errors.InvalidSymbol`, :class:`~errors.RateLimited`,
  :class:`~errors.PayloadError` ...).
- Optionally :meth:`Provider.error_for` (a non-2xx reply the generic mapping would
  misread, e.g. Binance's HTTP 400 code -1121 = invalid symbol) and
  :meth:`Provider.followup` (one more request after the latest one, e.g. Alpha Vantage's
  ``outputsize=full`` when a compact reply no longer reaches back to the watermark).

Records and paging rules
------------------------
- Bars carry the provider's ``name``, the canonical interval and ``ts`` = the bar's
  **start**, UTC-aware. Daily bars start at 00:00 of the trading date in the exchange's
  zone (UTC for 24/7 markets), whatever the API stamps, so the same daily bar from every
  provider has one ``ts``. Values are decimal text as the API sent it (floats rendered as
  the shortest text that round-trips). Order and duplicates in a payload do not matter: the
  loop sorts, and :func:`etl.transform.validate_bars` keeps identical copies once and
  rejects conflicting ones.
- Records that cannot become bars go to ``Page.rejected`` with a reason and an excerpt.
- A page may name the ``next`` request (Polygon's ``next_url``). The loop follows it only
  while pages bring bars newer than every page before, and at most :data:`MAX_PAGES`
  times: pagination always terminates.
- A page that says "no data for this window" sets ``no_data`` (not an error).
- ``fetch_range`` returns bars with ``start <= ts < end`` only (``end`` exclusive).
- A bar whose interval has not ended at fetch time is still forming: it is dropped unless
  the config says ``include_partial_bars`` (a later fetch then overwrites it).

Errors are translated at this boundary with ``provider``, ``symbol`` and a redacted ``url``.
A provider is safe to call from several threads at once; API keys never appear in anything
it returns, raises or logs.
"""

from __future__ import annotations

import logging
import threading
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import requests

from clock import Clock, SystemClock
from errors import ConfigError, HTTPError, MarketpollError, RateLimited
from etl.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TOTAL_TIMEOUT_SECONDS,
    HttpClient,
    Response,
    is_http_url,
    parse_retry_after,
)
from etl.metrics import RETRIES, THROTTLES
from etl.retry import Retrier, RetryPolicy
from etl.transform import Rejection
from models.action import CorporateAction
from models.bar import Bar, interval_seconds

if TYPE_CHECKING:
    from etl.ratelimit import RateBudget
    from settings import Settings

__all__ = ["Provider", "ProviderConfig", "Request", "Page", "FetchResult", "MAX_PAGES", "provider_config"]

log = logging.getLogger(__name__)

#: Most pages one request may be followed through (``Page.next``); the loop stops earlier when a
#: page brings nothing newer.
MAX_PAGES = 1000

#: Most idle HTTP clients (requests sessions, each with its keep-alive connections) a provider keeps
#: for reuse; a client returned beyond it is closed. A fetch only opens a new client when every kept
#: one is in use, so the number open is bounded by the peak of concurrent requests (the workers).
MAX_IDLE_CLIENTS = 32

#: Config fields every provider has; the others are the provider's own options.
_COMMON = ("base_url", "api_key", "rate_limit", "connect_timeout_seconds", "read_timeout_seconds",
           "total_timeout_seconds", "max_response_bytes", "retry", "include_partial_bars")  # fmt: skip


@dataclass(frozen=True)
class ProviderConfig:
    """Settings every provider takes. Subclass it (frozen dataclass) to declare the provider's own options.

    ``base_url``: the endpoint root ("" = the provider's public default); ``api_key``: a
    secret (never printed); ``rate_limit``: the key's budget (``"5/minute"``; None = the
    provider's default). Times in seconds, sizes in bytes.
    """

    base_url: str = ""
    api_key: str | None = field(default=None, repr=False)
    rate_limit: str | None = None
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 30.0
    total_timeout_seconds: float = DEFAULT_TOTAL_TIMEOUT_SECONDS
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    retry: RetryPolicy = RetryPolicy()
    include_partial_bars: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """One GET: ``url`` (no query), ``params`` (may hold the key: only redacted URLs are ever shown),
    ``headers`` (values never logged), the ``symbol`` and canonical ``interval`` it is for, and the
    UTC ``window`` [start, end) it covers, when it covers one."""

    url: str
    params: Mapping[str, str] = field(default_factory=dict)
    symbol: str = ""
    interval: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    window: tuple[datetime, datetime] | None = None


@dataclass(slots=True)
class Page:
    """What one reply holds: bars (any order), unparseable records, the next page's request, and
    whether the API said it has no data for the request (``no_data``: not an error)."""

    bars: list[Bar] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    next: Request | None = None
    no_data: bool = False
    actions: list[CorporateAction] = field(default_factory=list)


@dataclass(slots=True)
class FetchResult:
    """Bars of one symbol, oldest first, plus unparseable records, corporate actions, and the UTC
    windows the API said hold no data."""

    symbol: str
    bars: list[Bar] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    actions: list[CorporateAction] = field(default_factory=list)
    no_data: list[tuple[datetime, datetime]] = field(default_factory=list)
    partial_dropped: int = 0  # bars still forming at fetch time, left out


class Provider(ABC):
    """A market-data REST API (see the module docstring for the contract)."""

    name: ClassVar[str]
    #: Canonical interval -> the API's own spelling of it.
    intervals: ClassVar[Mapping[str, str]]
    env_prefix: ClassVar[str]
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig
    default_base_url: ClassVar[str] = ""
    default_rate_limit: ClassVar[str | None] = None
    key_required: ClassVar[bool] = False
    key_help: ClassVar[str] = ""
    #: Most bars one ordinary request (:meth:`latest_request`'s reply, or :meth:`followup`'s) brings
    #: back from an old watermark; None: any watermark (one request spans from it to now). Pages past
    #: the first are requests of the symbol's retry budget: do not count on them. See :meth:`latest_reach`.
    latest_bars: ClassVar[int | None] = None
    #: Where intraday bars start: ``"clock"`` on multiples of the interval since the Unix epoch (UTC;
    #: a 60min bar at 09:00, 10:00 ... New York), ``"session"`` from each session's open (09:30,
    #: 10:30 ...). The coverage ledger expects bars on this grid (:mod:`db.coverage`).
    bar_grid: ClassVar[str] = "clock"

    def __init__(self, config: ProviderConfig | None = None, *, session: requests.Session | None = None,
                 clock: Clock | None = None, sleep=None) -> None:  # fmt: skip
        self.config = config if config is not None else self.Config()
        if self.key_required and not self.config.api_key:
            raise ConfigError(f"{self.env_prefix}_API_KEY is not set{f' ({self.key_help})' if self.key_help else ''}",
                              name=f"{self.env_prefix}_API_KEY")  # fmt: skip
        self.clock = clock or SystemClock()
        self.budget: RateBudget | None = None  # set by the wiring (app.py): every request takes it
        self._session = session
        self._shared: HttpClient | None = None  # the one client around an injected session
        self._idle: list[HttpClient] = []  # LIFO: the warmest connection first
        self._clients_open = 0  # created and not yet closed (idle + checked out)
        self._generation = 0  # bumped by close(): a client checked out before it is closed on return
        self._clients_lock = threading.Lock()
        self._retrier = Retrier(self.config.retry, on_retry=self._on_retry, **({"sleep": sleep} if sleep else {}))

    # -- declaration --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return (self.config.base_url or self.default_base_url).rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> Provider:
        """Build from validated settings: ``<PREFIX>_*`` variables and the CLI's provider options."""
        return cls(provider_config(cls, settings))

    def secrets(self) -> list[str]:
        """Strings that must never be logged (API keys); the wiring registers them with a Redactor."""
        return [self.config.api_key] if self.config.api_key else []

    def api_key(self) -> str | None:
        """The key the rate budget is kept for (never logged: only its hash is stored)."""
        return self.config.api_key

    def rate_limit(self) -> str | None:
        """The budget spec in force: ``<PREFIX>_RATE_LIMIT``, else the provider's default."""
        return self.config.rate_limit if self.config.rate_limit is not None else self.default_rate_limit

    def check_interval(self, interval: str) -> str:
        """The API's spelling of canonical ``interval``; raises ConfigError if the API has no such bars."""
        try:
            return self.intervals[interval]
        except KeyError:
            raise ConfigError(f"provider {self.name} has no interval {interval} (it has: {', '.join(self.intervals)})",
                              name="interval", value=interval) from None  # fmt: skip

    # -- what a provider implements (pure) ---------------------------------------------------------

    @abstractmethod
    def latest_request(self, symbol: str, interval: str, since: datetime | None) -> Request:
        """The request for the newest bars of ``symbol``; ``since`` is its watermark (newest stored bar start, UTC)."""

    def range_requests(self, symbol: str, interval: str, start: datetime, end: datetime) -> Iterable[Request]:
        """Requests covering UTC ``[start, end)`` within the API's limits (window per request, pages)."""
        raise ConfigError(f"provider {self.name} cannot fetch a history window", name="provider", value=self.name)

    @abstractmethod
    def parse(self, reply: Response, request: Request) -> Page:
        """One 2xx reply → a :class:`Page`; raises the typed error an error body stands for. Pure."""

    def error_for(self, reply: Response, request: Request) -> MarketpollError | None:
        """The typed error of a non-2xx reply, when the API's meaning differs from the generic mapping."""
        return None

    def followup(self, request: Request, result: FetchResult, since: datetime | None) -> Request | None:
        """One more request after :meth:`latest_request`'s result (its bars replace the first result's)."""
        return None

    def latest_reach(self, interval: str) -> timedelta | None:
        """How far back from now one ordinary request surely brings bars, for a watermark older than that.

        None: from any watermark. Default: :attr:`latest_bars` intervals of wall time, exact for a
        24/7 market and short for one with closed hours (its bars span more time), so a hole is
        never missed. A series whose watermark is older is backfilled first, with
        :meth:`fetch_range` (:func:`etl.history.fetch_caught_up`). Providers limited by time override it.
        """
        return None if self.latest_bars is None else self.latest_bars * timedelta(seconds=interval_seconds(interval))

    # -- the request loop (shared; not overridden) ---------------------------------------------------

    def fetch_bars(self, symbol: str, interval: str, *, since: datetime | None = None) -> FetchResult:
        """The newest bars of ``symbol`` (see the contract). Raises the typed errors of :mod:`errors`."""
        self.check_interval(interval)
        request = self.latest_request(symbol, interval, since)
        result = self._collect(request, FetchResult(symbol))
        follow = self.followup(request, result, since)
        if follow is not None:
            result = self._collect(follow, FetchResult(symbol))
        return self._finish(result, interval)

    def fetch_range(self, symbol: str, interval: str, start: datetime, end: datetime) -> FetchResult:
        """Every bar of ``symbol`` starting in UTC ``[start, end)``, paged and chunked within the API's limits."""
        self.check_interval(interval)
        if start.tzinfo is None or end.tzinfo is None:
            raise ConfigError("fetch_range needs UTC-aware start and end", name="window")
        result = FetchResult(symbol)
        for request in self.range_requests(symbol, interval, start, end):
            self._collect(request, result)
        result.bars = [b for b in result.bars if start <= b.ts < end]
        return self._finish(result, interval)

    def _collect(self, request: Request, into: FetchResult) -> FetchResult:
        newest: datetime | None = None
        for _ in range(MAX_PAGES):
            page = self._get(request)
            into.rejected.extend(page.rejected)
            into.actions.extend(page.actions)
            if page.no_data and request.window is not None:
                into.no_data.append(request.window)
            page_newest = max((b.ts for b in page.bars), default=None)
            into.bars.extend(page.bars)
            if page.next is None or page_newest is None or (newest is not None and page_newest <= newest):
                break  # no next page, or this page brought nothing newer: never loop
            newest, request = page_newest, page.next
        else:
            log.warning("%s %s: stopped following pages after %d", self.name, request.symbol, MAX_PAGES)
        return into

    def _get(self, request: Request) -> Page:
        """One request through the budget, the HTTP client and the retry policy."""

        def once() -> Page:
            if self.budget is not None:
                self.budget.acquire()  # waits for the per-second/minute budget; QuotaExhausted when the day's is used
            with self._lease() as client:
                reply = client.get(request.url, dict(request.params), symbol=request.symbol, headers=request.headers,
                                   raise_for_status=False)  # fmt: skip
            if not 200 <= reply.status < 300:
                err = self.error_for(reply, request) or _status_error(self.name, reply, request.symbol)
                if isinstance(err, RateLimited) and self.budget is not None and err.retry_after_seconds:
                    self.budget.hold(err.retry_after_seconds)  # every thread of this key backs off, before a ban
                raise err
            return self.parse(reply, request)

        return self._retrier(once)

    def _finish(self, result: FetchResult, interval: str) -> FetchResult:
        result.bars.sort(key=_ts)
        if not self.config.include_partial_bars and result.bars:
            cutoff = self.clock.now() - timedelta(seconds=interval_seconds(interval))
            complete = [b for b in result.bars if b.ts <= cutoff]
            result.partial_dropped = len(result.bars) - len(complete)
            result.bars = complete
        return result

    def _on_retry(self, error: BaseException, _delay: float) -> None:
        RETRIES.labels(self.name).inc()
        if isinstance(error, RateLimited) and "HTTP 429" not in str(error):
            THROTTLES.labels(self.name).inc()  # a throttle payload (HTTP 429 is counted by the client)

    def _new_client(self, session: requests.Session) -> HttpClient:
        cfg = self.config
        return HttpClient(
            self.name, session,
            connect_timeout_seconds=cfg.connect_timeout_seconds, read_timeout_seconds=cfg.read_timeout_seconds,
            total_timeout_seconds=cfg.total_timeout_seconds, max_response_bytes=cfg.max_response_bytes,
        )  # fmt: skip

    @contextmanager
    def _lease(self) -> Iterator[HttpClient]:
        """Check an HTTP client out for one request and give it back.

        requests.Session is not documented as thread-safe, so a client serves one request at a
        time. Clients are not tied to threads: the pipeline makes new fetch threads every cycle,
        and per-thread sessions were never closed (about 8 sockets leaked a cycle). Idle clients
        wait in a LIFO list of at most :data:`MAX_IDLE_CLIENTS`; extra ones are closed on return.
        An injected session (tests, single-threaded use) is shared as is and never closed here.
        """
        if self._session is not None:
            with self._clients_lock:
                if self._shared is None:
                    self._shared = self._new_client(self._session)
            yield self._shared
            return
        with self._clients_lock:
            client = self._idle.pop() if self._idle else None
            generation = self._generation
            if client is None:
                self._clients_open += 1
        if client is None:
            client = self._new_client(requests.Session())
        try:
            yield client
        finally:
            with self._clients_lock:
                keep = generation == self._generation and len(self._idle) < MAX_IDLE_CLIENTS
                if keep:
                    self._idle.append(client)
                else:
                    self._clients_open -= 1
            if not keep:
                client.session.close()

    def http_clients(self) -> dict[str, int]:
        """How many HTTP clients are ``open`` (idle + in use) and ``idle`` (each keeps its connections)."""
        with self._clients_lock:
            return {"open": self._clients_open, "idle": len(self._idle)}

    def close(self) -> None:
        """Release the HTTP sessions (and any server or thread) the provider owns.

        Idle clients are closed now; a client still serving a request is closed when it returns.
        The provider stays usable: a later request opens a new client.
        """
        with self._clients_lock:
            idle, self._idle = self._idle, []
            self._clients_open -= len(idle)
            self._generation += 1
        for client in idle:
            client.session.close()

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ts(bar: Bar) -> datetime:
    return bar.ts


def _status_error(provider: str, reply: Response, symbol: str) -> MarketpollError:
    """The generic meaning of a non-2xx status: 429 throttled, 5xx/408 transient, other 4xx terminal."""
    ctx = {"provider": provider, "symbol": symbol, "url": reply.url}
    if reply.status == 429:
        THROTTLES.labels(provider).inc()
        return RateLimited(f"{provider}: HTTP 429 for {reply.url}",
                           retry_after_seconds=parse_retry_after(reply.headers.get("Retry-After")), **ctx)  # fmt: skip
    transient = reply.status >= 500 or reply.status == 408
    return HTTPError(f"{provider}: HTTP {reply.status} for {reply.url}", status=reply.status, transient=transient, **ctx)


# -- configuration from the environment ---------------------------------------------------------


def _convert(name: str, annotation: Any, raw: str) -> Any:
    kind = annotation
    if isinstance(kind, str):  # postponed annotations: resolve the few simple names used by configs
        kind = {"str": str, "bool": bool, "int": int, "float": float}.get(kind.split("|")[0].strip(), str)
    elif isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), str)
    if kind is bool:
        from settings import parse_bool

        return parse_bool(name, raw)
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}", name=name, value=raw) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name} must be a finite number, got {raw!r}", name=name, value=raw)
        return value
    return raw.strip()


def _check_base_url(var: str, url: str) -> None:
    """ConfigError naming ``var`` unless ``url`` is ``http(s)://host[:port][/path]`` (:func:`etl.http.is_http_url`;
    checked at start, so a typo is one line and exit 2, not a failure of every request). A URL holding a password
    is not echoed."""
    if not is_http_url(url):
        shown = "" if "@" in url else f": got {url!r}"  # user:password@host: never echoed
        raise ConfigError(f"{var} must be an http:// or https:// URL with a host (e.g. https://api.example.com){shown}",
                          name=var, value=None if not shown else url)  # fmt: skip


def provider_config(cls: type[Provider], settings: Settings) -> ProviderConfig:
    """``cls.Config`` from the settings: ``<PREFIX>_<FIELD>`` variables for the provider's own fields
    (``<PREFIX>_BASE_URL``, ``_API_KEY``, ``_RATE_LIMIT`` and its options), then the CLI's provider
    options (``--outputsize`` ...), over the shared HTTP and retry settings.

    Raises :class:`~errors.ConfigError` naming the variable or option for a bad value, and for a
    CLI option this provider does not have.
    """
    from etl.ratelimit import parse_rates

    env, prefix = settings.env, cls.env_prefix
    values: dict[str, Any] = {
        "connect_timeout_seconds": settings.http_connect_timeout_seconds,
        "read_timeout_seconds": settings.http_read_timeout_seconds,
        "total_timeout_seconds": settings.http_total_timeout_seconds,
        "max_response_bytes": settings.http_max_response_bytes,
        "retry": settings.retry_policy,
        "include_partial_bars": settings.include_partial_bars,
    }
    own = {f.name: f for f in fields(cls.Config) if f.init and f.name not in _COMMON[3:]}
    for name, f in own.items():
        var = f"{prefix}_{name.upper()}"
        raw = env.get(var)
        if raw is not None and raw.strip() != "":
            values[name] = _convert(var, f.type, raw)
    for name, raw in settings.provider_options.items():
        if name not in own or name in _COMMON:
            raise ConfigError(f"provider {cls.name} has no option --{name.replace('_', '-')}", name=name, value=raw)
        values[name] = _convert(f"--{name.replace('_', '-')}", own[name].type, raw) if isinstance(raw, str) else raw
    if values.get("base_url"):
        _check_base_url(f"{prefix}_BASE_URL", values["base_url"])
    if cls.key_required and not values.get("api_key"):  # never a config default: the user's own key
        raise ConfigError(f"{prefix}_API_KEY is not set{f' ({cls.key_help})' if cls.key_help else ''}",
                          name=f"{prefix}_API_KEY")  # fmt: skip
    if values.get("rate_limit"):
        try:
            parse_rates(values["rate_limit"])
        except ConfigError as exc:
            raise ConfigError(f"{prefix}_RATE_LIMIT: {exc}", name=f"{prefix}_RATE_LIMIT", value=values["rate_limit"]) from None
    try:
        return cls.Config(**values)
    except ConfigError as exc:  # name the variable the user wrote, not the field
        if exc.name in own and exc.name not in _COMMON:
            var = f"{prefix}_{exc.name.upper()}"
            raise ConfigError(f"{var}: {exc}", name=var, value=exc.value) from None
        raise
