"""A thin HTTP GET over ``requests.Session`` that translates failures into :mod:`errors`.

No retry happens here (see :mod:`etl.retry`); every URL in a message is redacted.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import requests

from errors import HTTPError, RateLimited
from etl.metrics import REQUEST_SECONDS, THROTTLES
from etl.redact import redact_url

__all__ = ["HttpClient", "Response", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class Response:
    """A successful (2xx) response: ``body`` as raw bytes, ``url`` already redacted."""

    status: int
    body: bytes
    content_type: str
    url: str
    elapsed_seconds: float


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


class HttpClient:
    """GET with connect/read timeouts (seconds) on an injected ``requests.Session``.

    Raises :class:`~errors.RateLimited` for 429 (with its ``Retry-After``),
    :class:`~errors.HTTPError` for other non-2xx statuses (transient for 5xx, 408 and
    network errors, terminal for other 4xx).
    """

    def __init__(
        self,
        provider: str,
        session: requests.Session | None = None,
        *,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 30.0,
        user_agent: str = "marketpoll",
    ) -> None:
        self.provider = provider
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", user_agent)
        self.timeout = (connect_timeout_seconds, read_timeout_seconds)
        # requests re-reads the whole environment for proxy settings on every request (about a
        # third of a GET's CPU time here); resolve them once per endpoint with requests' own
        # rules (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE ...) and pass them explicitly.
        self._env: dict[str, dict] = {}
        self._trust_env = self.session.trust_env
        self.session.trust_env = False

    def get(self, url: str, params: dict[str, str], *, symbol: str | None = None) -> Response:
        ctx = {"provider": self.provider, "symbol": symbol}
        env = self._env.get(url)
        if env is None:
            env = {}
            if self._trust_env:
                self.session.trust_env = True
                env = self.session.merge_environment_settings(url, {}, None, None, None)
                self.session.trust_env = False
            self._env[url] = env
        t0 = time.perf_counter()
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout, **env)
        except requests.RequestException as exc:
            # requests' own messages embed the full URL, API key included, so the
            # original is not chained (``from None``): only its type and the redacted URL travel.
            safe = redact_url(requests.Request("GET", url, params=params).prepare().url or url)
            kind = "timeout" if isinstance(exc, requests.Timeout) else type(exc).__name__
            raise HTTPError(f"{self.provider}: {kind} requesting {safe}", url=safe, **ctx) from None
        REQUEST_SECONDS.labels(self.provider).observe(time.perf_counter() - t0)
        safe = redact_url(resp.url)
        status = resp.status_code
        if status == 429:
            THROTTLES.labels(self.provider).inc()
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            raise RateLimited(f"{self.provider}: HTTP 429 for {safe}", retry_after_seconds=retry_after, url=safe, **ctx)
        if not 200 <= status < 300:
            transient = status >= 500 or status == 408
            raise HTTPError(f"{self.provider}: HTTP {status} for {safe}", status=status, transient=transient, url=safe, **ctx)
        return Response(status, resp.content, resp.headers.get("Content-Type", ""), safe, resp.elapsed.total_seconds())
