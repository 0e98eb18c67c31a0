"""Delivery of firings: a webhook (JSON with a Slack-compatible ``text``) and email (SMTP), off the loading path.

:class:`Deliverer` owns a bounded queue (:attr:`DeliveryPolicy.queue_size` firings) and one worker thread.
``submit`` never blocks: a full queue records the firing as ``dropped`` in ``alert_events``. The worker
sends each firing to every channel of its rule, each retried with tenacity (at most
:attr:`DeliveryPolicy.attempts` requests, exponential waits from ``initial_delay_seconds`` to
``max_delay_seconds``; only transient failures are retried), then writes the outcome to ``alert_events``
(``delivered`` | ``failed``, requests made, which channel failed and why, redacted).

Webhook: ``POST`` ``{"text": "...", "alert": {"rule", "kind", "subject", "value", "fired_at"}}`` with one
10 s deadline for the whole request (connecting, sending, the reply's status line and headers; the reply's
body is not read): a server that answers a byte at a time is cut off at the deadline, as
:mod:`etl.http`'s watchdog cuts a GET. (Name resolution is not bounded, and a host with several addresses
gets up to 10 s per connect attempt; a request connected after the deadline is cut at once.) 2xx is
accepted, 408/429/5xx, network errors and a missed deadline are transient, other statuses terminal.
Slack, Mattermost, Rocket.Chat and Discord's ``/slack`` endpoint read ``text``.

Email: ``SMTP_URL`` = ``smtp://[user:password@]host[:port]`` (plain, port 25), ``smtp+starttls://...``
(STARTTLS, port 587) or ``smtps://...`` (TLS from the first byte, port 465); user and password
percent-encoded. The sender is ``ALERT_EMAIL_FROM`` (default ``marketpoll@<this host>``). SMTP 4xx replies
and dropped connections are transient; 5xx (a refused recipient, bad credentials) terminal.
"""

from __future__ import annotations

import logging
import queue
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import requests
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from alerts.base import DeliveryError, DeliveryStatus, Firing, redact_webhook
from clock import Clock, SystemClock
from errors import ConfigError, MarketpollError
from etl.http import DeadlineAdapter, request_deadline  # the GET client's end-to-end deadline, for the POST

__all__ = ["Deliverer", "DeliveryPolicy", "SmtpConfig", "WebhookChannel", "EmailChannel", "WEBHOOK_TIMEOUT_SECONDS"]

log = logging.getLogger(__name__)

#: Deadline of one webhook request, end to end (connect, send, the reply's status and headers), in seconds.
WEBHOOK_TIMEOUT_SECONDS = 10.0
#: Deadline of each SMTP socket operation, in seconds.
SMTP_TIMEOUT_SECONDS = 10.0
_SMTP_SCHEMES = {"smtp": ("plain", 25), "smtp+starttls": ("starttls", 587), "smtps": ("ssl", 465)}


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Bounds of delivery: requests per channel per firing, waits between them (seconds), queued firings."""

    attempts: int = 3
    initial_delay_seconds: float = 1.0
    max_delay_seconds: float = 10.0
    queue_size: int = 100

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.queue_size < 1 or self.initial_delay_seconds < 0 or self.max_delay_seconds < 0:
            raise ConfigError(f"bad delivery policy {self!r}", name="delivery")


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where email goes (parsed from ``SMTP_URL``): ``security`` is plain, starttls or ssl."""

    host: str
    port: int
    security: str = "plain"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # a secret: never shown
    sender: str = field(default_factory=lambda: f"marketpoll@{socket.gethostname() or 'localhost'}")
    timeout_seconds: float = SMTP_TIMEOUT_SECONDS

    @classmethod
    def from_url(cls, url: str, *, sender: str | None = None) -> SmtpConfig:
        """Parse ``SMTP_URL`` (module docstring); ConfigError naming it (redacted) when malformed."""
        try:
            parts = urlsplit(url.strip())
            scheme, port = parts.scheme.lower(), parts.port
            host = parts.hostname
        except ValueError:
            scheme, port, host, parts = "", None, None, None
        if scheme not in _SMTP_SCHEMES or not host or parts is None or parts.path not in ("", "/"):
            raise ConfigError(f"SMTP_URL must be smtp://, smtp+starttls:// or smtps://[user:password@]host[:port], got "
                              f"{_redact_smtp_url(url)!r}", name="SMTP_URL")  # fmt: skip
        security, default_port = _SMTP_SCHEMES[scheme]
        extra = {"sender": sender.strip()} if sender and sender.strip() else {}
        return cls(host, port or default_port, security, unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, **extra)  # fmt: skip

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SmtpConfig | None:
        """From ``SMTP_URL`` and ``ALERT_EMAIL_FROM`` in ``env`` (the settings' copy); None without SMTP_URL."""
        url = (env.get("SMTP_URL") or "").strip()
        return cls.from_url(url, sender=env.get("ALERT_EMAIL_FROM")) if url else None

    def describe(self) -> str:
        """``smtp+starttls://user@host:587``: no password."""
        scheme = {v[0]: k for k, v in _SMTP_SCHEMES.items()}[self.security]
        return f"{scheme}://{self.username + '@' if self.username else ''}{self.host}:{self.port}"

    def secrets(self) -> list[str]:
        return [self.password] if self.password else []


def _redact_smtp_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password:
            return url.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        return "***"
    return url


def _with_deadline_adapter(session: requests.Session) -> requests.Session:
    """``session`` with :class:`etl.http.DeadlineAdapter` mounted for http and https (once: its pools are kept)."""
    for prefix in ("http://", "https://"):
        if not isinstance(session.adapters.get(prefix), DeadlineAdapter):
            session.mount(prefix, DeadlineAdapter())
    return session


class WebhookChannel:
    """POSTs a firing as JSON to ``url`` (a secret: errors show :func:`~alerts.base.redact_webhook` of it),
    within one end-to-end deadline of ``timeout_seconds`` (module docstring). ``session`` gets the
    deadline's adapter mounted for http:// and https://."""

    name = "webhook"

    def __init__(self, url: str, session: requests.Session | None = None, timeout_seconds: float = WEBHOOK_TIMEOUT_SECONDS):
        self.url = url
        self.shown = redact_webhook(url)
        self.session = _with_deadline_adapter(session or requests.Session())
        self.timeout_seconds = timeout_seconds

    def send(self, firing: Firing) -> None:
        payload = {
            "text": firing.text,
            "alert": {"rule": firing.rule.name, "kind": firing.rule.kind.value, "subject": firing.subject,
                      "value": None if firing.value is None else str(firing.value), "fired_at": firing.fired_at.isoformat()},
        }  # fmt: skip
        late = DeliveryError(f"{self.shown}: no reply within the {self.timeout_seconds:g} s deadline", transient=True)
        # per-operation timeouts alone let a slow drip go on for ever: one deadline for the whole request
        with request_deadline(self.timeout_seconds) as alarm:
            try:
                with self.session.post(self.url, json=payload, timeout=self.timeout_seconds, allow_redirects=False,
                                       stream=True) as r:  # fmt: skip
                    status = r.status_code
            except requests.Timeout:
                raise late from None
            except requests.RequestException as exc:  # str(exc) would name the URL's path: its token
                if alarm.fired:  # the watchdog cut the socket: the deadline, not the network
                    raise late from None
                raise DeliveryError(f"{self.shown}: {type(exc).__name__} (connection failed)", transient=True) from None
        if not 200 <= status < 300:
            raise DeliveryError(f"{self.shown}: HTTP {status}", transient=status in (408, 429) or status >= 500)


class EmailChannel:
    """Sends a firing as a plain-text email to ``recipients`` through ``config`` (one SMTP session per send)."""

    name = "email"

    def __init__(self, config: SmtpConfig | None, recipients: tuple[str, ...]) -> None:
        self.config = config
        self.recipients = recipients

    def send(self, firing: Firing) -> None:
        cfg = self.config
        if cfg is None:
            raise DeliveryError("SMTP_URL is not set: no email can be sent", transient=False)
        msg = EmailMessage()
        msg["Subject"] = f"[marketpoll] {firing.rule.name}: {firing.text}"[:200]
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(self.recipients)
        value = "" if firing.value is None else f"\nvalue: {firing.value}"
        msg.set_content(f"{firing.text}\n\nrule: {firing.rule.name} ({firing.rule.describe()})\nsubject: {firing.subject}"
                        f"{value}\nfired at: {firing.fired_at.isoformat()} (UTC)\n")  # fmt: skip
        where = cfg.describe()
        try:
            if cfg.security == "ssl":
                smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
            with smtp:
                if cfg.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if cfg.username:
                    smtp.login(cfg.username, cfg.password or "")
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [c for c, _ in exc.recipients.values()]
            raise DeliveryError(f"{where}: recipients refused {sorted(exc.recipients)} ({codes})",
                                transient=all(400 <= c < 500 for c in codes)) from None  # fmt: skip
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            transient = 400 <= exc.smtp_code < 500
            raise DeliveryError(f"{where}: SMTP {exc.smtp_code} {text.strip()[:120]}", transient=transient) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc}", transient=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}", transient=True) from None


@dataclass(slots=True)
class _Job:
    event_id: int
    firing: Firing


class Deliverer:
    """The bounded delivery queue and its worker (module docstring). ``store`` is an
    :class:`~alerts.store.AlertStore`; ``redact`` cleans every error text before it is stored or logged."""

    def __init__(
        self, store, *, smtp: SmtpConfig | None = None, policy: DeliveryPolicy | None = None, clock: Clock | None = None,
        redact: Callable[[str], str] = lambda s: s, session: requests.Session | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.smtp = smtp
        self.policy = policy or DeliveryPolicy()
        self.clock = clock or SystemClock()
        self.redact = redact
        self.session = _with_deadline_adapter(session or requests.Session())
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=self.policy.queue_size)
        self._stop = threading.Event()  # set at close: retries end, what is left is dropped
        self._thread = threading.Thread(target=self._work, name="alert-delivery", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Firings waiting in the queue (at most ``policy.queue_size``)."""
        return self._queue.qsize()

    def submit(self, event_id: int, firing: Firing) -> bool:
        """Queue a recorded firing for delivery; never blocks. False (and the event marked ``dropped``) if the
        queue is full or the deliverer is closed."""
        if not self._stop.is_set():
            try:
                self._queue.put_nowait(_Job(event_id, firing))
                return True
            except queue.Full:
                why = f"not sent: the delivery queue was full ({self.policy.queue_size} firings waiting)"
        else:
            why = "not sent: marketpoll was stopping"
        log.warning("alert %s on %s %s", firing.rule.name, firing.subject, why)
        self._record(event_id, DeliveryStatus.DROPPED, 0, why)
        return False

    def drain(self, timeout_seconds: float) -> bool:
        """Wait until every queued firing has been handled (True) or ``timeout_seconds`` passed (False)."""
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, name="alert-drain", daemon=True).start()
        return done.wait(timeout_seconds)

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout_seconds``, then stop: retries end and firings still
        queued are recorded ``dropped``."""
        self.drain(timeout_seconds)
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=max(timeout_seconds, 1.0))
        while True:  # the worker has stopped: whatever is left was never sent
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._record(job.event_id, DeliveryStatus.DROPPED, 0, "not sent: marketpoll was stopping")

    # -- the worker ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None or self._stop.is_set():
                    if job is not None:
                        self._record(job.event_id, DeliveryStatus.DROPPED, 0, "not sent: marketpoll was stopping")
                    if job is None:
                        return
                    continue
                self._deliver(job)
            except Exception:  # noqa: BLE001 - a bug in one delivery must not end the worker
                log.exception("alert delivery failed unexpectedly")
            finally:
                self._queue.task_done()

    def channels(self, firing: Firing) -> list:
        rule = firing.rule
        out: list = []
        if rule.webhook:
            out.append(WebhookChannel(rule.webhook, self.session))
        if rule.emails:
            out.append(EmailChannel(self.smtp, rule.emails))
        return out

    def _deliver(self, job: _Job) -> None:
        attempts, errors = 0, []
        for channel in self.channels(job.firing):
            tries = 0

            def once(channel=channel) -> None:
                nonlocal tries
                tries += 1
                channel.send(job.firing)

            retrying = Retrying(
                stop=stop_after_attempt(self.policy.attempts),
                wait=wait_exponential(multiplier=self.policy.initial_delay_seconds, min=self.policy.initial_delay_seconds,
                                      max=self.policy.max_delay_seconds),
                retry=retry_if_exception(lambda e: isinstance(e, DeliveryError) and e.transient and not self._stop.is_set()),
                sleep=self._stop.wait, reraise=True,
            )  # fmt: skip
            try:
                retrying(once)
            except Exception as exc:  # noqa: BLE001 - a channel's bug is that firing's failure, not the worker's end
                why = str(exc) if isinstance(exc, MarketpollError) else f"unexpected {type(exc).__name__}: {exc}"
                errors.append(f"{channel.name}: {why} (after {tries} attempt{'s' if tries != 1 else ''})")
            attempts += tries
        rule, subject = job.firing.rule.name, job.firing.subject
        if errors:
            error = self.redact("; ".join(errors))
            log.warning("alert %s on %s not delivered: %s", rule, subject, error)
            self._record(job.event_id, DeliveryStatus.FAILED, attempts, error)
        else:
            log.info("alert %s on %s delivered (%d request(s))", rule, subject, attempts)
            self._record(job.event_id, DeliveryStatus.DELIVERED, attempts, None)

    def _record(self, event_id: int, status: DeliveryStatus, attempts: int, error: str | None) -> None:
        try:
            at = self.clock.now() if status is DeliveryStatus.DELIVERED else None
            self.store.record_delivery(event_id, status, attempts, None if error is None else self.redact(error), at)
        except MarketpollError as exc:
            log.warning("could not record the delivery of alert event %s (%s): %s", event_id, status.value, exc)
