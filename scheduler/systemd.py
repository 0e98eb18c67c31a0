"""systemd integration: the sd_notify protocol and the unit file.

sd_notify is a datagram to the socket named by ``$NOTIFY_SOCKET`` (see sd_notify(3)); the
protocol is a few lines, and the Python packages for it are either unmaintained (sdnotify,
2017) or need libsystemd headers to build, so it is implemented here.
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

__all__ = ["Notifier", "unit_file", "unit_path"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY / STOPPING / WATCHDOG / STATUS to systemd; a no-op outside systemd.

    ``socket_path`` and ``watchdog_usec`` come from ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``
    (read by main.py). ``watchdog_interval_seconds`` is half the watchdog timeout, or None.
    """

    def __init__(self, socket_path: str | None, watchdog_usec: str | None = None) -> None:
        self.address = None
        if socket_path:
            self.address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
        self.watchdog_interval_seconds = int(watchdog_usec) / 2e6 if watchdog_usec and watchdog_usec.isdigit() else None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone: nothing to tell
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: finishing in-flight batches")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def unit_path(user: bool, home: Path | None = None) -> Path:
    if user:
        return (home or Path.home()) / ".config" / "systemd" / "user" / "marketpoll.service"
    return Path("/etc/systemd/system/marketpoll.service")


def unit_file(*, checkout: Path, python: str = sys.executable, args: list[str], shutdown_timeout_seconds: float,
              user: bool, watchdog_seconds: int = 60, database: str | None = None) -> str:  # fmt: skip
    """The unit for this checkout and interpreter (Type=notify, watchdog, restart on failure).

    ``database`` (a description with any password already hidden: :func:`db.describe_url`)
    goes into a comment; nothing secret is ever written into the unit.
    """
    cmd = " ".join([python, str(checkout / "main.py"), *args])
    stop_timeout = int(shutdown_timeout_seconds + 15)
    db_line = f"# database: {''.join(c if c.isprintable() else '?' for c in database)}\n" if database else ""
    return f"""[Unit]
Description=marketpoll: market-aware ETL of market data into PostgreSQL
Documentation=file://{checkout / "README.md"}
After=network-online.target postgresql.service
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
WorkingDirectory={checkout}
# settings (DATABASE_URL, keys) come from this file only, not from the shell that installed the unit
{db_line}EnvironmentFile=-{checkout / ".env"}
ExecStart={cmd}
Restart=on-failure
RestartSec=5
WatchdogSec={watchdog_seconds}
KillSignal=SIGTERM
# the graceful stop takes at most --shutdown-timeout ({shutdown_timeout_seconds:g} s); systemd waits longer before SIGKILL
TimeoutStopSec={stop_timeout}
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy={"default.target" if user else "multi-user.target"}
"""
