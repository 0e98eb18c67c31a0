"""marketpoll's settings: read once (in ``main.py``) from the environment and ``.env``.

Every variable is documented in ``.env.example``. :func:`Settings.from_env` takes a
mapping, so no module but ``main.py`` touches ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from errors import ConfigError
from etl.retry import RetryPolicy

__all__ = ["Settings", "DEFAULT_DATABASE_URL"]

#: Embedded default: a SQLite file in the working directory, so the demo needs no server.
DEFAULT_DATABASE_URL = "sqlite:///marketpoll.db"


def _bool(name: str, raw: str) -> bool:
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


def _positive(kind):
    def conv(name: str, raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}", name=name, value=raw) from None
        if value <= 0:
            raise ConfigError(f"{name} must be > 0, got {raw!r}", name=name, value=raw)
        return value

    return conv


def _rates(name: str, raw: str) -> str:
    from etl.ratelimit import parse_rates

    try:
        parse_rates(raw)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}", name=name, value=raw) from None
    return raw


def _month(name: str, raw: str) -> str:
    from etl.providers.alphavantage import MONTH_RE

    if not MONTH_RE.match(raw):
        raise ConfigError(f"{name} must be YYYY-MM, got {raw!r}", name=name, value=raw)
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings. Times are in seconds; every field maps to one environment variable
    (the field name upper-cased, e.g. ``database_url`` ↔ ``DATABASE_URL``)."""

    database_url: str = DEFAULT_DATABASE_URL
    alpha_vantage_api_key: str | None = field(default=None, repr=False)  # a secret: never printed
    alpha_vantage_base_url: str = "https://www.alphavantage.co/query"
    alpha_vantage_outputsize: str = "compact"
    alpha_vantage_datatype: str = "json"
    alpha_vantage_extended_hours: bool = True
    alpha_vantage_bar_label: str = "start"
    alpha_vantage_month: str | None = None
    alpha_vantage_rate_limit: str = "1/second 25/day"
    demo_rate_limit: str | None = None
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
    stream_state_file: str = "marketpoll-stream.json"
    marketpoll_api_token: str | None = field(default=None, repr=False)  # a secret: never printed

    _CONVERTERS = {
        "alpha_vantage_outputsize": _choice("compact", "full"),
        "alpha_vantage_datatype": _choice("json", "csv"),
        "alpha_vantage_extended_hours": _bool,
        "alpha_vantage_bar_label": _choice("start", "end"),
        "alpha_vantage_month": _month,
        "alpha_vantage_rate_limit": _rates,
        "demo_rate_limit": _rates,
        "http_connect_timeout_seconds": _positive(float),
        "http_read_timeout_seconds": _positive(float),
        "http_total_timeout_seconds": _positive(float),
        "http_max_response_bytes": _positive(int),
        "retry_budget_seconds": _positive(float),
        "retry_max_attempts": _positive(int),
        "retry_initial_delay_seconds": _positive(float),
        "retry_max_delay_seconds": _positive(float),
        "log_level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "log_format": _choice("text", "json"),
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``env`` (unset or empty variables keep their defaults), then ``overrides``.

        Raises :class:`~errors.ConfigError` naming the variable and its bad value.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name.startswith("_"):
                continue
            raw = env.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            conv = cls._CONVERTERS.get(f.name)
            values[f.name] = conv(f.name.upper(), raw.strip()) if conv else raw.strip()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def rate_limit_for(self, provider: str) -> str | None:
        """The rate-limit spec (``"1/second 25/day"``) of a provider, or None."""
        return getattr(self, f"{provider}_rate_limit", None)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.retry_max_attempts,
            initial_delay_seconds=self.retry_initial_delay_seconds,
            max_delay_seconds=self.retry_max_delay_seconds,
        )
