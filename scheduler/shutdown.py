"""Signal-based graceful shutdown.

The first SIGINT/SIGTERM sets a ``threading.Event``: loops stop starting new work,
in-flight symbol batches finish their transaction, the cycle is recorded as
``interrupted`` and the process exits 0. A second signal exits at once (status 130):
open transactions die with their connections and PostgreSQL rolls them back, so no
batch is ever half-written.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

__all__ = ["install_signal_handlers"]

log = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event, signals=(signal.SIGINT, signal.SIGTERM)) -> None:
    """Route ``signals`` to ``stop`` (main thread only)."""

    def handler(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: exiting now; open transactions roll back", name)
            logging.shutdown()
            os._exit(130)
        log.warning("%s received: finishing in-flight work, starting nothing new (send again to exit at once)", name)
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)
