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
import sys
import threading

__all__ = ["install_signal_handlers", "exit_now_if_threads_linger", "pipeline_deadline_seconds"]

log = logging.getLogger(__name__)


def install_signal_handlers(
    stop: threading.Event,
    *,
    shutdown_timeout_seconds: float | None = None,
    on_stop=None,
    signals=(signal.SIGINT, signal.SIGTERM),
) -> None:
    """Route ``signals`` to ``stop`` (main thread only).

    ``shutdown_timeout_seconds``: a watchdog exits the process (status 1) if the graceful
    stop takes longer; ``on_stop()`` runs at the first signal (e.g. to tell systemd STOPPING=1).
    """

    def handler(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: exiting now; open transactions roll back", name)
            logging.shutdown()
            os._exit(130)
        log.warning("%s received: finishing in-flight work, starting nothing new (send again to exit at once)", name)
        stop.set()
        if on_stop is not None:
            on_stop()
        if shutdown_timeout_seconds is not None:
            timer = threading.Timer(shutdown_timeout_seconds, _force_exit, args=(shutdown_timeout_seconds,))
            timer.daemon = True
            timer.start()

    for sig in signals:
        signal.signal(sig, handler)


def _force_exit(timeout: float) -> None:
    log.error("graceful shutdown took longer than %.0fs: exiting; open transactions roll back", timeout)
    logging.shutdown()
    os._exit(1)


def pipeline_deadline_seconds(shutdown_timeout_seconds: float) -> float:
    """How long a cycle waits for in-flight fetches after a signal: enough reserve before the
    watchdog to record the cycle and close the database (1.5 s, or half the timeout if shorter)."""
    return max(shutdown_timeout_seconds - 1.5, shutdown_timeout_seconds / 2)


def exit_now_if_threads_linger(code: int) -> None:
    """After a signal, do not let the interpreter join worker threads stuck in a slow HTTP read
    (their results were abandoned): flush and exit with ``code`` at once."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others:
        log.info("exiting without waiting for %d abandoned fetch thread(s)", len(others))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
