"""Logging for the command line: one stderr handler, every line redacted, text or JSON.

``configure_logging`` is called once by ``main.py`` (and again when settings change the format).
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading

from pythonjsonlogger.json import JsonFormatter

from etl.redact import RedactingFormatter, Redactor

__all__ = ["configure_logging", "JsonStderr", "STDERR_LOGGER", "USAGE_ERROR_PREFIX"]

log = logging.getLogger("marketpoll")


#: Name of the logger that stderr lines written by ``print`` become in JSON mode (:class:`JsonStderr`).
STDERR_LOGGER = "marketpoll.stderr"
#: The CLI's one-line usage error: plain text by design, in every log format.
USAGE_ERROR_PREFIX = "main.py: error: "


class JsonStderr:
    """``sys.stderr`` in JSON mode: every line written to it becomes one JSON log record.

    Code that prints to stderr (a cycle's or a symbol's failure summary, a warning of the CLI, a
    library's own message) would put plain lines between the JSON objects. Each complete line is
    handed to the log ``handler`` (so it is redacted like every log line, and shown whatever the
    log level, as a print was): ``main.py: warning: X`` as a WARNING ``X``, another ``main.py: X``
    as an ERROR ``X``, any other line as INFO. The usage error (``main.py: error: ...``, exit 2)
    is written as it is: one plain line, by design. Other attributes (``isatty``, ``fileno``,
    ``encoding``) are the real stream's.
    """

    def __init__(self, raw, handler: logging.Handler) -> None:
        self.raw = raw
        self.handler = handler
        self._pending = ""
        self._lock = threading.Lock()
        self._inside = threading.local()  # .emitting: this thread is handing a line to the handler

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.raw.flush()

    def drain(self) -> None:
        """Emit a last line that has no newline yet (at exit)."""
        with self._lock:
            line, self._pending = self._pending, ""
        self._emit(line)

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        if line.startswith(USAGE_ERROR_PREFIX):
            self.raw.write(line + "\n")
            self.raw.flush()
            return
        if getattr(self._inside, "emitting", False):
            # the handler failed and logging reports it on sys.stderr, which is this: write it plainly, once;
            # a stream that is gone (the reader of a pipe exited) is ignored, never a loop of the same failure
            try:
                self.raw.write(line + "\n")
            except (OSError, ValueError):
                pass
            return
        level, message = logging.INFO, line
        if line.startswith("main.py: "):
            level, message = logging.ERROR, line.removeprefix("main.py: ")
            if message.startswith("warning: "):
                level, message = logging.WARNING, message.removeprefix("warning: ")
        self._inside.emitting = True
        try:
            self.handler.handle(logging.LogRecord(STDERR_LOGGER, level, __file__, 0, message, None, None))
        finally:
            self._inside.emitting = False

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


def _log_uncaught(exc_type, exc, tb, thread_name: str | None = None) -> None:
    where = f" in thread {thread_name}" if thread_name else ""
    log.critical("uncaught exception%s", where, exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, args.thread.name if args.thread else "?")


def configure_logging(level: str, redactor: Redactor, fmt: str = "text") -> None:
    """One stderr handler; every line (tracebacks included) goes through the redactor.

    Uncaught exceptions (of any thread) are logged as one CRITICAL record with their traceback, so they
    are redacted too.

    ``fmt="json"``: one JSON object per line (``time``, ``level``, ``logger``, ``message``, and
    ``exc_info`` for tracebacks), for journald and log shippers. Then nothing else on stderr is plain
    either: Python warnings are logged (``py.warnings``), so are uncaught exceptions of threads, and
    lines printed to ``sys.stderr`` become records too (:class:`JsonStderr`); only the usage error
    (``main.py: error: ...``) stays a plain line.
    """
    raw = sys.stderr.raw if isinstance(sys.stderr, JsonStderr) else sys.stderr  # configured before: unwrap
    handler = logging.StreamHandler(raw)
    if fmt == "json":
        inner = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                              rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})  # fmt: skip
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(RedactingFormatter(inner, redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("alembic", "urllib3", "apscheduler.scheduler", "apscheduler.executors.default", "pyrate_limiter",
                  "procrastinate", "uvicorn.error"):  # fmt: skip
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # an uncaught exception (a thread's included) is one record through the redacting handler, in every format
    threading.excepthook, sys.excepthook = _log_uncaught_in_thread, _log_uncaught
    json_mode = fmt == "json"
    logging.captureWarnings(json_mode)
    if json_mode:
        sys.stderr = JsonStderr(raw, handler)
        atexit.register(sys.stderr.drain)
        return
    sys.stderr = raw
