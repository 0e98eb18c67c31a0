"""The provider interface: how marketpoll pulls bars from one REST API.

Contract for every provider:

- :meth:`Provider.fetch_bars` makes the request(s) for one symbol and returns a
  :class:`FetchResult` whose ``bars`` are ordered oldest first, carry the provider's
  registry ``name``, the canonical ``interval`` (see :data:`models.INTERVALS`) and
  ``ts`` = the bar's start as a UTC-aware datetime. Bars are not validated yet (the
  pipeline runs :func:`etl.transform.validate_bars`); records that could not even be
  parsed (a bad timestamp) are in ``rejected`` with a reason.
- Errors are translated at this boundary into :mod:`errors` classes, with
  ``provider``, ``symbol`` and a redacted ``url``: :class:`~errors.RateLimited`
  (transient), :class:`~errors.InvalidSymbol` (terminal for that symbol),
  :class:`~errors.PremiumRequired`, :class:`~errors.PayloadError`,
  :class:`~errors.HTTPError`. Transient errors are retried inside ``fetch_bars``
  according to the provider's :class:`~etl.retry.RetryPolicy` before they surface.
- A provider is safe to call from several threads at once.
- API keys never appear in anything a provider returns or raises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from etl.transform import Rejection
from models.bar import Bar

if TYPE_CHECKING:
    from etl.ratelimit import RateBudget
    from settings import Settings

__all__ = ["Provider", "FetchResult"]


@dataclass(slots=True)
class FetchResult:
    """Bars of one symbol from one request, oldest first, plus unparseable records."""

    symbol: str
    bars: list[Bar] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


class Provider(ABC):
    """A market-data REST API. Subclasses set ``name`` and ``intervals`` and register themselves."""

    name: ClassVar[str]
    #: Canonical intervals this provider can serve.
    intervals: ClassVar[frozenset[str]]
    #: The request budget of this provider's API key (set by the wiring); every request acquires it.
    budget: RateBudget | None = None

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Provider:
        """Build the provider from validated settings (keys, base URL, timeouts, retries)."""

    @abstractmethod
    def fetch_bars(self, symbol: str, interval: str, *, since: datetime | None = None) -> FetchResult:
        """Fetch the provider's latest bars of ``symbol`` at ``interval`` (see module contract).

        ``since`` is the symbol's watermark (newest stored bar start, UTC): the provider must
        return every bar after it that it can, widening its request when its default window
        would leave a gap. Bars at or before ``since`` may be returned too (revisions).
        """

    def secrets(self) -> list[str]:
        """Strings that must never be logged (API keys); the caller registers them with a Redactor."""
        return []

    def api_key(self) -> str | None:
        """The key the rate budget is kept for (never logged: only its hash is stored)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, servers and threads the provider owns."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
