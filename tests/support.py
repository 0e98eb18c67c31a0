"""Plain helpers for tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl.loopback import Reply

ROOT = Path(__file__).resolve().parent.parent
#: Our own payloads in each provider's wire format (tests/fixtures/<provider>/), enough for every
#: unit and end-to-end test on a fresh clone.
FIXTURES = ROOT / "tests" / "fixtures"
#: Real recorded API responses, read in place (see shared/data/real/PROVENANCE.md); CI has them,
#: a fresh clone does not.
REAL = ROOT.parent / "shared" / "data" / "real"
#: The instant the ``manual_clock`` fixture starts at: Monday 2024-03-11 11:00 New York (EDT, the
#: first trading day after the US DST switch), inside XNYS's regular session.
FIXED_NOW = datetime(2024, 3, 11, 15, 0, tzinfo=UTC)


def fixture(name: str) -> bytes:
    """The bytes of ``tests/fixtures/<name>`` (e.g. ``"alphavantage/intraday_1min_MSFT.json"``)."""
    return (FIXTURES / name).read_bytes()


def real(name: str) -> bytes:
    """A real recording from ``../shared/data/real``; the calling test is skipped, with that reason, without it.

    Call it in the test body or a fixture, never inside a loopback server's handler: the skip
    would be raised in the server's thread, and the test would see a dropped connection.
    """
    path = REAL / name
    if not path.exists():
        pytest.skip(f"real recording {name} needs ../shared/data/real beside the checkout (CI has it)")
    return path.read_bytes()


def ok(body: bytes, content_type: str = "application/json") -> Reply:
    return 200, {"Content-Type": content_type}, body


def as_symbol(body: bytes, symbol: str) -> bytes:
    """An Alpha Vantage JSON reply (e.g. a fixture) relabelled as ``symbol``'s, in its ``Meta Data``.

    The provider refuses a reply about another symbol than it asked for, so a replay serving one
    fixture for many symbols relabels it per request.
    """
    obj = json.loads(body.decode("utf-8-sig"))
    meta = obj["Meta Data"]
    key = next(k for k in meta if k.endswith(". Symbol"))
    meta[key] = symbol
    return json.dumps(obj, indent=4).encode()


#: (function, symbol, Alpha Vantage interval or None, datatype) -> our fixture with that reply.
AV_FIXTURES = {
    ("TIME_SERIES_INTRADAY", "MSFT", "1min", "json"): ("alphavantage/intraday_1min_MSFT.json", "application/json"),
    ("TIME_SERIES_INTRADAY", "IBM", "5min", "csv"): ("alphavantage/intraday_5min_IBM.csv", "application/x-download"),
    ("TIME_SERIES_DAILY", "MSFT", None, "json"): ("alphavantage/daily_MSFT.json", "application/json"),
    ("TIME_SERIES_DAILY", "IBM", None, "csv"): ("alphavantage/daily_IBM.csv", "application/x-download"),
}


def alphavantage_route(api_key: str):
    """A replay route answering like Alpha Vantage from :data:`AV_FIXTURES`, for ``replay(route)``.

    A request without ``api_key`` gets Alpha Vantage's missing-key reply; a known (function,
    symbol, interval, datatype) gets its fixture; anything else (an unknown symbol) gets the
    ``"Error Message"`` reply. Every answer is HTTP 200, as Alpha Vantage's are.
    """
    missing_key = json.dumps({"Error Message": "the parameter apikey is invalid or missing. Please claim your free API key "
                              "on (https://www.alphavantage.co/support/#api-key)."}).encode()  # fmt: skip

    def route(_path: str, q: dict[str, str]) -> Reply:
        if q.get("apikey") != api_key:
            return ok(missing_key)
        key = (q.get("function"), q.get("symbol"), q.get("interval"), q.get("datatype", "json"))
        if key in AV_FIXTURES:
            name, content_type = AV_FIXTURES[key]
            return ok(fixture(name), content_type)
        return ok(fixture("alphavantage/error_invalid_call.json"))

    return route


def wait_for(pred: Callable[[], object], what: str | Callable[[], str] = "a condition", timeout: float = 20.0, step=0.05):
    """``pred()``'s first truthy value, polled every ``step`` seconds; AssertionError naming ``what`` (text, or
    a callable giving it at the deadline) after ``timeout`` seconds. A generous deadline, never an
    elapsed-time assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"not within {timeout:g} s: {what() if callable(what) else what}")


class SseClient:
    """A streaming ``GET /events`` client on its own thread (HTTP/1.0 over a plain socket, so ``close`` cuts it at
    once): parsed events (``event``, default ``message``; ``id``; ``data`` as JSON) land in ``events``; ``status``
    is the HTTP status; ``ended`` is set when the server closes the stream."""

    def __init__(self, port: int, target: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[dict] = queue.Queue()
        self.opened, self.ended = threading.Event(), threading.Event()
        self.status: int | None = None
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = [f"GET {target} HTTP/1.0", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "the event stream did not open"

    def _read(self) -> None:
        try:
            stream = self._sock.makefile("rb")
            self.status = int(stream.readline().split()[1])
            while stream.readline().strip():
                pass  # the headers
            self.opened.set()
            fields: dict = {}
            for raw in stream:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if "data" in fields:
                        self.events.put({"event": "message", **fields, "data": json.loads(fields["data"])})
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
        except (OSError, ValueError, IndexError):  # closed by the test
            pass
        finally:
            self.opened.set()
            self.ended.set()

    def next(self, timeout: float = 10.0) -> dict:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)


def migrate_to(engine, revision: str, *, down: bool = False) -> None:
    """Upgrade (or with ``down``, downgrade) ``engine``'s schema to Alembic ``revision``, in one transaction, as
    :func:`db.migrate.upgrade` does for ``head``: to build a database as an older marketpoll left it."""
    from alembic import command

    from db.migrate import _config

    with engine.begin() as conn:
        cfg = _config()
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
