"""A tiny threaded HTTP server on 127.0.0.1 for the demo provider and for tests.

It speaks HTTP/1.1 with keep-alive and sets TCP_NODELAY on every connection: without
it, a stdlib keep-alive server stalls ~40 ms per request on delayed ACKs
(shared/PERF_NOTES.md); with it, a client reuses its connection instead of paying a
TCP handshake and a server thread per request.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["LoopbackServer", "Handler", "Reply"]

#: (status, headers, body)
Reply = tuple[int, dict[str, str], bytes]
#: handler(path, query) -> Reply; ``query`` maps each parameter to its last value.
Handler = Callable[[str, dict[str, str]], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        super().server_bind()
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LoopbackServer:
    """Serve ``handler`` on ``127.0.0.1:<port>`` (port 0 = any free port) in a background thread.

    ``url`` is the base URL (``http://127.0.0.1:PORT``). Use as a context manager or call ``close``.
    """

    def __init__(self, handler: Handler, *, port: int = 0) -> None:
        outer = handler

        class _Req(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                try:
                    status, headers, body = outer(parts.path, query)
                except Exception as exc:  # a handler bug must not kill the server thread
                    status, headers, body = 500, {"Content-Type": "text/plain"}, f"handler error: {exc}".encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test, shutdown)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence stderr
                pass

        self._server = _Server(("127.0.0.1", port), _Req)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"loopback:{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
