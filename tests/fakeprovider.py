"""An independent provider for the contract suite: a made-up API ("Fakex") that shares nothing with
Alpha Vantage, so the contract is seen to hold for more than one wire format and one code path.

Wire format: ``GET /v1/candles/{symbol}?interval=<seconds>&from=<unix s>&to=<unix s>[&cursor=N]``
answers ``{"symbol": "ABC", "candles": [{"t": <unix s>, "o": "1.5", "h": .., "l": .., "c": .., "v": ..}],
"next": "<path and query of the next page>" | null}``; 50 candles a page, oldest first. An unknown
symbol is HTTP 404 ``{"error": "unknown symbol"}``; throttling is HTTP 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from errors import InvalidSymbol, PayloadError
from etl.http import Response
from etl.providers.base import Page, Provider, ProviderConfig, Request
from etl.providers.registry import PROVIDERS
from etl.transform import Rejection
from models.bar import Bar, interval_seconds

START = datetime(2024, 3, 11, 13, 30, tzinfo=UTC)
PAGE = 50


def candles(symbol: str, n: int = 120) -> list[dict]:
    out = []
    for i in range(n):
        p = 100 + zlib.crc32(f"{symbol}{i}".encode()) % 1000 / 100
        t = int((START + timedelta(minutes=i)).timestamp())
        out.append({"t": t, "o": f"{p:.2f}", "h": f"{p + 0.5:.2f}", "l": f"{p - 0.5:.2f}", "c": f"{p + 0.1:.2f}",
                    "v": str(100 + i)})  # fmt: skip
    return out


def serve(path: str, q: dict[str, str], *, key: str) -> tuple[int, dict, bytes]:
    """The Fakex server's answer (the test's loopback route)."""
    if q.get("key") != key:
        return 401, {"Content-Type": "application/json"}, b'{"error": "bad key"}'
    symbol = path.rsplit("/", 1)[-1]
    if symbol == "THROTTLED":
        return 429, {"Retry-After": "1", "Content-Type": "application/json"}, b'{"error": "slow down"}'
    if not symbol.startswith(("ABC", "LOOP")):
        return 404, {"Content-Type": "application/json"}, b'{"error": "unknown symbol"}'
    lo, hi = int(q.get("from", 0)), int(q.get("to", 2**40))
    rows = [c for c in candles(symbol) if lo <= c["t"] < hi]
    cursor = int(q.get("cursor", 0))
    page = rows[cursor * PAGE : (cursor + 1) * PAGE]
    nxt = None
    if symbol.startswith("LOOP"):  # a broken API: always a next page, always the first page again
        nxt, page = f"{path}?interval={q['interval']}&from={lo}&to={hi}&cursor=0", rows[:PAGE]
    elif (cursor + 1) * PAGE < len(rows):
        nxt = f"{path}?interval={q['interval']}&from={lo}&to={hi}&cursor={cursor + 1}"
    return 200, {"Content-Type": "application/json"}, json.dumps({"symbol": symbol, "candles": page, "next": nxt}).encode()


@dataclass(frozen=True)
class FakexConfig(ProviderConfig):
    base_url: str = "http://127.0.0.1:9"


class FakexProvider(Provider):
    """The client of the made-up Fakex API (see the module docstring)."""

    name = "fakex"
    intervals = {"1min": "60", "5min": "300"}
    env_prefix = "FAKEX"
    Config = FakexConfig
    key_required = True

    def latest_request(self, symbol, interval, since):
        return self._request(symbol, interval, None, None)

    def range_requests(self, symbol, interval, start, end):
        yield self._request(symbol, interval, start, end)

    def _request(self, symbol, interval, start, end):
        params = {"interval": self.intervals[interval], "key": self.config.api_key or ""}
        if start is not None:
            params |= {"from": str(int(start.timestamp())), "to": str(int(end.timestamp()))}
        window = (start, end) if start is not None else None
        return Request(f"{self.base_url}/v1/candles/{symbol}", params, symbol=symbol, interval=interval, window=window)

    def error_for(self, reply: Response, request: Request):
        if reply.status == 404:
            return InvalidSymbol(f"{self.name}: unknown symbol {request.symbol!r}", provider=self.name, symbol=request.symbol,
                                 url=reply.url)  # fmt: skip
        return None

    def parse(self, reply: Response, request: Request) -> Page:
        ctx = {"provider": self.name, "symbol": request.symbol, "url": reply.url}
        try:
            obj = json.loads(reply.body)
            rows, nxt = obj["candles"], obj.get("next")
        except (ValueError, KeyError, TypeError):
            raise PayloadError(f"{self.name}: not a candles reply for {request.symbol}", **ctx) from None
        page = Page()
        for c in rows:
            try:
                ts = datetime.fromtimestamp(int(c["t"]), UTC)
                page.bars.append(Bar(self.name, request.symbol, request.interval, ts, c["o"], c["h"], c["l"], c["c"], c["v"]))
            except (KeyError, TypeError, ValueError):
                page.rejected.append(Rejection(request.symbol, str(c.get("t") if isinstance(c, dict) else c), "missing field"))
        if nxt:
            parts = urlsplit(nxt)
            params = {k: v[-1] for k, v in parse_qs(parts.query).items()} | {"key": self.config.api_key or ""}
            page.next = Request(f"{self.base_url}{parts.path}", params, symbol=request.symbol, interval=request.interval,
                                window=request.window)  # fmt: skip
        page.no_data = not rows
        return page


def register() -> type[FakexProvider]:
    if "fakex" not in PROVIDERS:
        PROVIDERS.register(FakexProvider)
    return FakexProvider


__all__ = ["FakexProvider", "serve", "register", "interval_seconds"]
