"""Keep secrets (API keys, tokens) out of logs, errors and tables.

Two layers: :func:`redact_url` masks credential query parameters in a URL before
it is put in a message, and :class:`Redactor` scrubs known secret strings out of
any text (a traceback of a third-party exception included).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

__all__ = ["MASK", "SECRET_PARAMS", "redact_url", "Redactor", "RedactingFormatter"]

MASK = "***"
#: Query parameter names whose values are always masked (compared case-insensitively).
SECRET_PARAMS = frozenset({"apikey", "api_key", "key", "token", "access_token", "secret", "password", "signature"})


_URL_SECRET = re.compile(r"(?i)([?&](?:" + "|".join(sorted(SECRET_PARAMS)) + r")=)[^&#]*")


def redact_url(url: str) -> str:
    """Return ``url`` with the values of :data:`SECRET_PARAMS` in its query replaced by ``***``."""
    return _URL_SECRET.sub(lambda m: m.group(1) + MASK, url) if "?" in url else url


class Redactor:
    """Replaces every registered secret (and credential URL parameters) in text with ``***``.

    Safe to share between threads: log formatting and loading threads redact while the alert engine
    registers webhook secrets each minute. The secrets are an immutable tuple replaced (copy on write,
    under a lock) by :meth:`add`; a redaction reads the current tuple once and never sees it change.
    Longer secrets are replaced first, so one that contains another is masked whole.
    """

    _param_re = re.compile(r"(?i)\b(" + "|".join(sorted(SECRET_PARAMS)) + r")=([^&\s'\"]+)")

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        """Register a secret. Values under 6 characters (the public placeholder key "demo") are not
        scrubbed from free text: that would garble every line naming the demo provider. URL
        parameters such as ``apikey=`` are masked whatever their length."""
        if secret and len(secret) >= 6 and secret not in self._secrets:
            with self._lock:
                if secret not in self._secrets:
                    self._secrets = tuple(sorted((*self._secrets, secret), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for s in self._secrets:  # one read of the current tuple: an add() meanwhile replaces it, never changes it
            if s in text:
                text = text.replace(s, MASK)
        return self._param_re.sub(lambda m: f"{m.group(1)}={MASK}", text)


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter (text or JSON) so its whole output, message and traceback, passes through a :class:`Redactor`."""

    def __init__(self, inner: logging.Formatter | str, redactor: Redactor, datefmt: str | None = None) -> None:
        super().__init__()
        self._inner = inner if isinstance(inner, logging.Formatter) else logging.Formatter(inner, datefmt)
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))
