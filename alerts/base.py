"""Contracts of the alerts package: what a rule is, what a firing is, what a delivery channel promises.

- A :class:`Rule` is one row of ``alert_rules``; it validates itself (``ConfigError`` naming the field).
- A :class:`Firing` is what an evaluation decided to tell: one row of ``alert_events`` once recorded.
- A :class:`Channel` sends one firing's text somewhere (a webhook, an email); it raises
  :class:`DeliveryError` marked ``transient`` (worth retrying: a timeout, a 5xx, a 4xx SMTP reply) or not
  (a 404, a refused recipient). Messages never hold a secret: webhook URLs appear as
  :func:`redact_webhook` shows them.

Times are UTC-aware datetimes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit

from alerts.grammar import Condition, parse_condition
from db.jobs import check_job_name
from errors import ConfigError, MarketpollError
from etl.http import is_http_url
from models.bar import normalize_symbol

__all__ = ["RuleKind", "Rule", "Firing", "Channel", "DeliveryError", "DeliveryStatus", "check_alert_name",
           "check_webhook", "check_email", "redact_webhook", "MIN_STALE_MINUTES", "MAX_STALE_MINUTES"]  # fmt: skip

#: ``--stale ... --after MINUTES`` bounds: staleness is checked once a minute, so less is meaningless;
#: more than a week is a typo.
MIN_STALE_MINUTES = 1.0
MAX_STALE_MINUTES = 10080.0


class RuleKind(StrEnum):
    CONDITION = "condition"  # a SYMBOL FIELD OP NUMBER condition, evaluated on each committed load
    STALE = "stale"  # no new bar of a series or a job for ``threshold`` minutes while its session is open
    ERROR_RATE = "error_rate"  # the failed share of a job's recent cycles is above ``threshold``


class DeliveryStatus(StrEnum):
    """``alert_events.delivery_status``."""

    PENDING = "pending"  # queued for the delivery worker
    DELIVERED = "delivered"  # every channel of the rule accepted it
    FAILED = "failed"  # a channel refused it or kept failing past its retries (``error`` says which)
    DROPPED = "dropped"  # never sent: the delivery queue was full, or the process stopped first


class DeliveryError(MarketpollError):
    """A channel could not deliver. ``transient``: a retry may help (timeout, 5xx, SMTP 4xx)."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def check_alert_name(raw: str) -> str:
    """``raw`` stripped, if it is a usable rule name (1-100 characters, no blanks, control or bidi
    characters, as job names); else :class:`~errors.ConfigError`."""
    try:
        return check_job_name(raw)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("job name", "alert name"), name="alert", value=raw) from None


def check_webhook(url: str) -> str:
    """``url`` if it is an absolute ``http(s)://host/...`` URL; else ConfigError (showing it redacted)."""
    url = url.strip()
    if not is_http_url(url):
        raise ConfigError(f"--webhook must be an http:// or https:// URL, got {redact_webhook(url)!r}", name="webhook")
    return url


def check_email(address: str) -> str:
    """``address`` if it looks like ``user@host`` (no blanks, commas or control characters); else ConfigError."""
    a = address.strip()
    local, at, host = a.rpartition("@")
    if not at or not local or "." not in host.strip(".") or any(c.isspace() or c in ",;<>" or ord(c) < 32 for c in a):
        raise ConfigError(f"--email must be an address like ops@example.com, got {address!r}", name="email")
    return a


def redact_webhook(url: str | None) -> str | None:
    """What may be shown of a webhook URL: its scheme and host (``https://hooks.slack.com/***``). The path
    and query of a webhook carry its token (Slack, Teams, Discord), so they are never shown."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    return f"{parts.scheme}://{host}{port}/***"


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule (a row of ``alert_rules``).

    - ``kind`` condition: ``condition`` is its canonical text (``"TSLA close > 800"``).
    - ``kind`` stale: ``subject`` is a scheduled job's name or a symbol (the newest bar of any provider
      and interval of it); ``threshold`` is minutes; ``exchange``/``sessions`` are when a symbol should
      trade (a job's come from ``scheduled_jobs``).
    - ``kind`` error_rate: ``subject`` is a job name (``etl_runs.job_name``); ``threshold`` a share, 0 to 1.
    - ``webhook`` (a secret: never shown whole) and/or ``emails`` (at least one of them).
    """

    name: str
    kind: RuleKind
    webhook: str | None = None
    emails: tuple[str, ...] = ()
    condition: str | None = None
    subject: str | None = None
    threshold: float | None = None
    exchange: str | None = None
    sessions: tuple[str, ...] = ()
    id: int | None = None  # alert_rules.id, once stored
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        if check_alert_name(self.name) != self.name:
            raise ConfigError(f"bad alert name {self.name!r}: surrounding blanks", name="alert", value=self.name)
        if not self.webhook and not self.emails:
            raise ConfigError("an alert needs --webhook URL and/or --email ADDRESS", name="webhook")
        if self.webhook:
            check_webhook(self.webhook)
        for e in self.emails:
            check_email(e)
        if self.kind is RuleKind.CONDITION:
            if not self.condition:
                raise ConfigError("a condition alert needs its condition", name="condition")
            parse_condition(self.condition)
        elif self.kind is RuleKind.STALE:
            self._check_subject()
            t = self.threshold
            if t is None or not math.isfinite(t) or not MIN_STALE_MINUTES <= t <= MAX_STALE_MINUTES:
                raise ConfigError(f"--after must be from {MIN_STALE_MINUTES:g} to {MAX_STALE_MINUTES:g} minutes, got {t!r}",
                                  name="after", value=t)  # fmt: skip
        elif self.kind is RuleKind.ERROR_RATE:
            self._check_subject()
            t = self.threshold
            if t is None or not math.isfinite(t) or not 0 <= t < 1:
                raise ConfigError(f"--above must be a share from 0 to 1 (e.g. 0.2), got {t!r}", name="above", value=t)
        else:  # pragma: no cover - the enum has three members
            raise ConfigError(f"unknown alert kind {self.kind!r}", name="kind")

    def _check_subject(self) -> None:
        if not self.subject:
            raise ConfigError(f"a {self.kind.value} alert needs a job or series", name="subject")
        check_job_name(self.subject)  # no blanks or control characters; symbols pass too

    @property
    def parsed(self) -> Condition:
        """The condition of a condition rule (ConfigError for another kind)."""
        if self.condition is None:
            raise ConfigError(f"alert {self.name!r} is a {self.kind.value} alert, not a condition", name="kind")
        return parse_condition(self.condition)

    def describe(self) -> str:
        """One line a user reads: ``TSLA close > 800``, ``no new bar of TSLA for 15 min``, ..."""
        if self.kind is RuleKind.CONDITION:
            return str(self.condition)
        if self.kind is RuleKind.STALE:
            return f"no new bar of {self.subject} for {self.threshold:g} min while its session is open"
        return f"failed share of {self.subject}'s recent cycles above {self.threshold:g}"

    def as_dict(self) -> dict:
        """JSON-ready, secrets redacted (``webhook`` as scheme and host only)."""
        out: dict = {"name": self.name, "kind": self.kind.value, "rule": self.describe()}
        if self.kind is RuleKind.CONDITION:
            out["condition"] = self.condition
        else:
            out["subject"] = self.subject
            out["after_minutes" if self.kind is RuleKind.STALE else "above"] = self.threshold
        if self.kind is RuleKind.STALE and self.exchange:
            out["exchange"], out["sessions"] = self.exchange, list(self.sessions)
        out["webhook"] = redact_webhook(self.webhook)
        out["email"] = list(self.emails)
        out["created_at"] = self.created_at.isoformat() if self.created_at else None
        return out

    @staticmethod
    def symbol_subject(raw: str) -> str:
        """A ``--stale`` subject that is not a job, as a symbol (upper case); ConfigError if malformed."""
        try:
            return normalize_symbol(raw)
        except ValueError as exc:
            raise ConfigError(f"--stale: {exc} (give a job name or a symbol)", name="stale", value=raw) from None


@dataclass(frozen=True, slots=True)
class Firing:
    """An evaluation's decision to alert: ``rule`` fired on ``subject`` (``"provider SYMBOL interval"``
    for a condition, the symbol or job otherwise) with ``value`` (the field's value; minutes since the
    newest bar; the failed share) at ``fired_at`` (UTC). ``text`` is the one-line message sent."""

    rule: Rule
    subject: str
    value: Decimal | float | None
    fired_at: datetime
    text: str


class Channel(Protocol):
    """Where a firing is sent. ``send`` returns when the far end accepted it; raises DeliveryError."""

    name: str  # "webhook" | "email": names the channel in ``alert_events.error``

    def send(self, firing: Firing) -> None: ...
