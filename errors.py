"""The one exception tree of marketpoll.

Every error raised on purpose by marketpoll derives from :class:`MarketpollError`.
Each class says whether the failure is ``transient`` (worth retrying later: a
throttle, a timeout, a 5xx, a dropped database connection) or terminal (retrying
the same request cannot help: an invalid symbol, a malformed payload, bad
configuration). Retry policies key off that mark, never off message text.

::

    MarketpollError
    ├── ConfigError                      terminal: bad settings or CLI input
    ├── ExtractError                     provider side; carries provider, symbol, redacted url
    │   ├── HTTPError                    transport or HTTP status (transient for 429/5xx/network)
    │   ├── RateLimited                  transient: throttled (HTTP 429 or an Alpha Vantage "Note")
    │   ├── QuotaExhausted               transient: the daily quota is used up; retry after reset
    │   ├── PremiumRequired              terminal: the endpoint needs a paid plan
    │   ├── InvalidSymbol                terminal for that symbol ("Error Message")
    │   └── PayloadError                 terminal: the body is not the documented wire format
    ├── TransformError                   a bar that cannot be made valid
    ├── LoadError                        database side (transient when the connection dropped)
    └── SchedulingError                  jobs, calendars and triggers

Messages never contain secrets: providers build them from redacted URLs only.
"""

from __future__ import annotations

__all__ = [
    "MarketpollError",
    "ConfigError",
    "ExtractError",
    "HTTPError",
    "RateLimited",
    "QuotaExhausted",
    "PremiumRequired",
    "InvalidSymbol",
    "PayloadError",
    "TransformError",
    "LoadError",
    "SchedulingError",
]


class MarketpollError(Exception):
    """Root of every marketpoll error. ``transient`` says whether a retry may help."""

    transient: bool = False


class ConfigError(MarketpollError):
    """A setting or command-line value is invalid; ``name`` and ``value`` say which."""

    def __init__(self, message: str, *, name: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.name = name
        self.value = value


class ExtractError(MarketpollError):
    """A provider request failed.

    Attributes: ``provider`` (registry name), ``symbol`` (or None), ``url`` (redacted:
    the API key is replaced by ``***``).
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        symbol: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.symbol = symbol
        self.url = url


class HTTPError(ExtractError):
    """Transport failure or unexpected HTTP status. ``status`` is None for network errors."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = True, **kw) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.transient = transient


class RateLimited(ExtractError):
    """The provider throttled the request. ``retry_after_seconds`` is its hint, or None."""

    transient = True

    def __init__(self, message: str, *, retry_after_seconds: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after_seconds = retry_after_seconds


class QuotaExhausted(RateLimited):
    """A daily request quota is used up; requests resume after ``retry_after_seconds``."""


class PremiumRequired(ExtractError):
    """The endpoint or parameter needs a paid plan (Alpha Vantage "is a premium endpoint")."""

    transient = False


class InvalidSymbol(ExtractError):
    """The provider does not know the symbol (or rejected the call for it)."""

    transient = False


class PayloadError(ExtractError):
    """The response body does not follow the provider's documented wire format."""

    transient = False


class TransformError(MarketpollError):
    """A record could not be turned into a valid bar."""


class LoadError(MarketpollError):
    """Writing to the database failed. ``transient`` is True when the connection was lost."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class SchedulingError(MarketpollError):
    """A job, calendar or trigger could not be set up or evaluated."""
