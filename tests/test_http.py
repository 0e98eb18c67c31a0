"""etl/http.py over real loopback sockets: one deadline per request, a bounded reply, one DEBUG line per request."""

from __future__ import annotations

import logging
import time

import pytest

from errors import HTTPError, PayloadError
from etl.http import HttpClient
from netfaults import drip_server
from support import ok


def test_a_server_dripping_a_byte_a_second_is_cut_off_at_the_total_deadline():
    with drip_server(b'{"Meta Data": {}}' * 10, bytes_per_second=4) as url:
        client = HttpClient("t", read_timeout_seconds=30, total_timeout_seconds=1.5)
        t0 = time.monotonic()
        with pytest.raises(HTTPError) as info:
            client.get(f"{url}/query", {"apikey": "DRIPSECRET1"})
        took = time.monotonic() - t0
    assert info.value.transient and "deadline" in str(info.value) and "HTTP_TOTAL_TIMEOUT_SECONDS" in str(info.value)
    assert "DRIPSECRET1" not in str(info.value) and "apikey=***" in str(info.value)
    assert 1.4 <= took < 4.0, f"took {took:.2f}s for a 1.5 s deadline (the read timeout alone would allow 30 s per byte)"


def test_the_client_works_again_after_a_deadline(replay):
    srv = replay([ok(b'{"ok": true}')])
    client = HttpClient("t", total_timeout_seconds=1.0)
    with drip_server(b"x" * 100, bytes_per_second=10) as url, pytest.raises(HTTPError):
        client.get(url, {})
    for _ in range(3):  # no watchdog left armed against later requests on the same thread
        assert client.get(srv.url, {}).body == b'{"ok": true}'
        time.sleep(0.4)


def test_a_declared_oversized_reply_is_refused_before_reading(replay):
    srv = replay([ok(b"x" * 5000)])
    client = HttpClient("t", max_response_bytes=4096)
    with pytest.raises(PayloadError) as info:
        client.get(srv.url, {"apikey": "SIZESECRET99"})
    assert "5,000 bytes" in str(info.value) and "HTTP_MAX_RESPONSE_BYTES" in str(info.value)
    assert not info.value.transient and "SIZESECRET99" not in str(info.value)


def test_a_reply_growing_past_the_limit_is_cut_off_while_streaming():
    # the header declares a small body, then far more arrives: counted as it streams, not trusted
    with drip_server(b"y" * 3000, bytes_per_second=100000, declared_length=3000) as url:
        client = HttpClient("t", max_response_bytes=1000, total_timeout_seconds=10)
        with pytest.raises(PayloadError) as info:
            client.get(url, {})
    assert "over the 1,000-byte limit" in str(info.value)


def test_a_reply_within_the_limit_is_returned_whole(replay):
    body = b"z" * 4096
    srv = replay([ok(body)])
    assert HttpClient("t", max_response_bytes=4096).get(srv.url, {}).body == body


def test_debug_logs_one_redacted_line_per_request(replay, caplog):
    srv = replay([ok(b"{}"), (503, {}, b"down")])
    client = HttpClient("t")
    with caplog.at_level(logging.DEBUG, logger="etl.http"):
        client.get(srv.url, {"symbol": "IBM", "apikey": "DEBUGSECRET7"})
        with pytest.raises(HTTPError):
            client.get(srv.url, {"symbol": "MSFT", "apikey": "DEBUGSECRET7"})
    lines = [r.getMessage() for r in caplog.records if r.name == "etl.http"]
    assert len(lines) == 2
    assert lines[0].startswith("GET http://127.0.0.1:") and "symbol=IBM" in lines[0] and "-> 200 in " in lines[0]
    assert "apikey=***" in lines[0] and " ms (2 bytes)" in lines[0]
    assert "-> 503 in " in lines[1]
    assert all("DEBUGSECRET7" not in line for line in lines)


def test_a_redirect_is_followed_by_requests_and_only_the_first_one_is_sent_twice():
    from etl.loopback import LoopbackServer

    seen: list[str] = []
    with LoopbackServer(lambda _p, q: (200, {"Content-Type": "text/plain"}, f"hello {q['symbol']}".encode())) as target:

        def moved(_p, q):
            seen.append(q["symbol"])
            return 302, {"Location": f"{target.url}/final?symbol={q['symbol']}"}, b""

        with LoopbackServer(moved) as first:
            client = HttpClient("t")
            for symbol in ("IBM", "MSFT", "IBM"):
                reply = client.get(f"{first.url}/query", {"symbol": symbol, "apikey": "REDIRSECRET1"})
                assert reply.status == 200 and reply.body == f"hello {symbol}".encode()
                assert "REDIRSECRET1" not in reply.url
    assert seen == ["IBM", "IBM", "MSFT", "IBM"]  # the first redirect sends that URL through requests from then on
