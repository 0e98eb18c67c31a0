"""marketpoll's settings: read once (in ``main.py``) from the environment and ``.env``.

Every variable is documented in ``.env.example``. :func:`Settings.from_env` takes a
mapping, so no module but ``main.py`` touches ``os.environ``.

Paths are made absolute once, here: a relative SQLite file and ``STREAM_STATE_FILE``
are resolved against the working directory at start, so every later log line names the
file actually used and a process started elsewhere (a systemd unit) can be compared.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from errors import ConfigError
from etl.retry import RetryPolicy

__all__ = ["Settings", "DEFAULT_DATABASE_URL", "parse_bool", "absolute_sqlite_url", "default_stream_state_file",
           "SECRET_SUFFIXES"]  # fmt: skip

#: Embedded default: a SQLite file in the working directory, so the demo needs no server.
DEFAULT_DATABASE_URL = "sqlite:///marketpoll.db"

#: Environment variables whose names end so hold secrets: redacted from every log line from the start.
SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")

#: Largest value of a ``*_SECONDS`` setting: one day (a longer timeout or delay is a typo).
MAX_SETTING_SECONDS = 86400.0


def absolute_sqlite_url(url: str, cwd: Path) -> str:
    """``url`` with a relative SQLite file made absolute against ``cwd``; any other URL unchanged.

    In-memory databases (``sqlite://``, ``:memory:``) and ``file:`` URIs are left as they are.
    """
    from sqlalchemy.engine import make_url  # settings stay importable without a database stack loaded

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by db.make_engine, with its name
        return url
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:") or os.path.isabs(db):
        return url
    return parsed.set(database=os.path.normpath(os.path.join(cwd, db))).render_as_string(hide_password=False)


def default_stream_state_file(env: Mapping[str, str]) -> str:
    """``$XDG_STATE_HOME/marketpoll/stream.json``, else ``~/.local/state/marketpoll/stream.json``.

    A relative ``XDG_STATE_HOME`` is ignored, as the XDG Base Directory spec says.
    """
    xdg = (env.get("XDG_STATE_HOME") or "").strip()
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    else:
        base = Path((env.get("HOME") or "").strip() or Path.home()) / ".local" / "state"
    return str(base / "marketpoll" / "stream.json")


def parse_bool(name: str, raw: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); raises ConfigError naming ``name``."""
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}", name=name, value=raw)


def _choice(*allowed: str):
    def conv(name: str, raw: str) -> str:
        if raw not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}", name=name, value=raw)
        return raw

    return conv


def _positive(kind, maximum: float | None = None):
    """A converter to a finite number > 0 (and <= ``maximum``): NaN and infinity are refused."""

    def conv(name: str, raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}", name=name, value=raw) from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be a finite number > 0, got {raw!r}", name=name, value=raw)
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name} must be at most {maximum:g}, got {raw!r}", name=name, value=raw)
        return value

    return conv


_seconds = _positive(float, MAX_SETTING_SECONDS)


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings. Times are in seconds; every field maps to one environment variable
    (the field name upper-cased, e.g. ``database_url`` ↔ ``DATABASE_URL``).

    Provider settings are not fields here: each provider declares its own in its file
    (``etl/providers/<name>.py``: ``<PREFIX>_BASE_URL``, ``_API_KEY``, ``_RATE_LIMIT`` and its
    options) and reads them from ``env``, a copy of the environment taken once by ``main.py``;
    ``provider_options`` are the command line's provider options (``--outputsize full``).
    """

    database_url: str = DEFAULT_DATABASE_URL
    http_connect_timeout_seconds: float = 5.0
    http_read_timeout_seconds: float = 30.0
    http_total_timeout_seconds: float = 30.0  # one deadline per request, end to end (a dripping server too)
    http_max_response_bytes: int = 32 * 1024 * 1024  # a larger reply is cut off and fails the symbol
    retry_budget_seconds: float = 60.0  # per symbol per cycle: time that retry waits may take in total
    retry_max_attempts: int = 4
    retry_initial_delay_seconds: float = 1.0
    retry_max_delay_seconds: float = 60.0
    log_level: str = "INFO"
    log_format: str = "text"
    market_calendar_file: str | None = None
    # --stream's state, for --streaming-status/--stop-streaming from any directory (absolute)
    stream_state_file: str = field(default_factory=lambda: default_stream_state_file({}))
    marketpoll_api_token: str | None = field(default=None, repr=False)  # a secret: never printed
    include_partial_bars: bool = False  # load bars still forming at fetch time (a later fetch overwrites them)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # the environment, for providers' settings
    provider_options: Mapping[str, Any] = field(default_factory=dict)  # --outputsize & co., for the chosen provider

    _CONVERTERS = {
        "http_connect_timeout_seconds": _seconds,
        "http_read_timeout_seconds": _seconds,
        "http_total_timeout_seconds": _seconds,
        "http_max_response_bytes": _positive(int),
        "retry_budget_seconds": _seconds,
        "retry_max_attempts": _positive(int),
        "retry_initial_delay_seconds": _seconds,
        "retry_max_delay_seconds": _seconds,
        "log_level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "log_format": _choice("text", "json"),
        "include_partial_bars": parse_bool,
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, cwd: Path | None = None, **overrides: Any) -> Settings:
        """Build settings from ``env`` (unset or empty variables keep their defaults), then ``overrides``.

        A relative SQLite path and ``STREAM_STATE_FILE`` are made absolute against ``cwd``
        (default: the working directory); ``stream_state_file`` defaults to the per-user state
        directory (:func:`default_stream_state_file`, from ``XDG_STATE_HOME``/``HOME`` in ``env``).
        Raises :class:`~errors.ConfigError` naming the variable and its bad value.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name.startswith("_") or f.name in ("env", "provider_options"):
                continue
            raw = env.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            conv = cls._CONVERTERS.get(f.name)
            values[f.name] = conv(f.name.upper(), raw.strip()) if conv else raw.strip()
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["env"] = dict(env)
        base = cwd if cwd is not None else Path.cwd()
        values["database_url"] = absolute_sqlite_url(values.get("database_url", DEFAULT_DATABASE_URL), base)
        state = values.get("stream_state_file")
        if state:
            values["stream_state_file"] = os.path.normpath(os.path.join(base, os.path.expanduser(state)))
        else:
            values["stream_state_file"] = default_stream_state_file(env)
        return cls(**values)

    def secrets(self) -> list[str]:
        """Every secret the environment holds (``*_API_KEY``, ``*_TOKEN``, ...) and the API token."""
        found = [v for k, v in self.env.items() if k.upper().endswith(SECRET_SUFFIXES) and v and v.strip()]
        return [*found, *([self.marketpoll_api_token] if self.marketpoll_api_token else [])]

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.retry_max_attempts,
            initial_delay_seconds=self.retry_initial_delay_seconds,
            max_delay_seconds=self.retry_max_delay_seconds,
        )
