"""The alert engine of a long-running process: a pipeline listener plus a once-a-minute checker.

- ``on_load`` (after each committed load, on the loading thread): condition rules on the series' newest
  bar. Quick: in-memory state, a reference-bar read for ``change_percent``, one indexed read of the bar
  before the newest for a series with a crossing rule (:mod:`alerts.evaluate`), and one row written only
  when a rule fires or clears. Delivery is queued (:class:`~alerts.deliver.Deliverer`).
- ``on_cycle``: error-rate rules of that cycle's job.
- every ``tick_seconds`` (60) on its own thread: rules re-read (an added or removed rule counts within
  a minute), staleness and error rates checked at ``clock.now()``.

State: armed/disarmed per (rule, subject), read from ``alert_events`` (a firing not cleared = disarmed,
see :mod:`alerts.evaluate`). A crossing's previous value is read from the database on each load, never
kept from what this process happened to load, so any node of a cluster evaluating a load gets the same
answer. Several processes may evaluate one rule (two pollers, a cluster's nodes, each evaluating the
loads it ran): the database holds at most one open firing per (rule, subject), so the process whose
firing lands delivers it and the others stay quiet.

Threads: the decision (armed? fire? clear?) is taken under the service's lock; the row is written after
it is released, with the (rule, subject) marked in flight, so a slow insert (waiting on another node's
firing of the same rule, SQLite's busy timeout) holds up only evaluations of that same (rule, subject),
which wait for it and then decide on its outcome. Nothing here raises into the pipeline: database errors
are logged and the evaluation is skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from decimal import Decimal
from functools import partial
from urllib.parse import urlsplit

import sqlalchemy as sa

from alerts.base import Firing, Rule, RuleKind
from alerts.deliver import Deliverer, DeliveryPolicy, SmtpConfig
from alerts.evaluate import (
    ERROR_RATE_WINDOW,
    error_rate,
    field_value,
    holds,
    previous_bar_cutoff,
    reference_cutoff,
    staleness,
    step,
)
from alerts.grammar import Condition
from alerts.store import AlertStore
from clock import Clock, SystemClock
from errors import MarketpollError
from etl.events import LoadEvent
from etl.redact import Redactor
from models.bar import Bar
from models.run import CycleResult
from scheduler.calendar import Calendars, Session

__all__ = ["AlertService", "start_alerts", "TICK_SECONDS"]

log = logging.getLogger(__name__)

#: How often staleness and error rates are checked and the rules re-read, in seconds.
TICK_SECONDS = 60.0

_Series = tuple[str, str, str]  # provider, symbol, interval


def _show(value: Decimal | float | None, percent: bool = False) -> str:
    if value is None:
        return "?"
    if percent:
        return f"{float(value):+.2f}%"
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    return format(d.normalize(), "f") if abs(d.adjusted()) < 16 else str(d)


class AlertService:
    """Evaluates ``store``'s rules (see the module docstring) and hands firings to ``deliverer``.

    ``register_secret`` is told every rule's webhook URL (and its path) so log lines never show them.
    """

    def __init__(
        self, store: AlertStore, deliverer: Deliverer, calendars: Calendars, *, clock: Clock | None = None,
        tick_seconds: float = TICK_SECONDS, register_secret: Callable[[str], None] = lambda s: None,
    ) -> None:  # fmt: skip
        self.store = store
        self.deliverer = deliverer
        self.calendars = calendars
        self.clock = clock or SystemClock()
        self.tick_seconds = tick_seconds
        self._register_secret = register_secret
        self._lock = threading.RLock()
        self._written = threading.Condition(self._lock)  # notified when a (rule, subject) leaves _in_flight
        self._in_flight: set[tuple[int, str]] = set()  # (rule id, subject) whose row is being written
        self._writes = 0  # rows written by this process: a reload that raced one keeps the state it left
        self._rules: list[Rule] = []
        self._by_symbol: dict[str, list[tuple[Rule, Condition]]] = {}
        self._disarmed: dict[tuple[int, str], int] = {}  # (rule id, subject) -> the open firing's event id (0: another process's)
        self._invalid_seen: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    # -- life cycle ----------------------------------------------------------------------

    def start(self, *, background: bool = True) -> AlertService:
        """Read the rules and state, and (``background``) start the checker thread, which checks at once and
        then every ``tick_seconds``."""
        self.reload()
        if background:
            self._thread = threading.Thread(target=self._run, name="alert-checker", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Stop the checker, then let the deliverer finish its queue for up to ``timeout_seconds``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_seconds)
        self.deliverer.close(timeout_seconds)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            if self._stop.wait(self.tick_seconds):  # real time on purpose: a manual clock must not spin this loop
                return

    # -- rules and state -----------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the rules and the armed state (rows edited by hand that are invalid: logged once, skipped)."""
        with self._lock:
            writes = self._writes
        rules, invalid = self.store.load()
        disarmed = {(f.rule_id, f.subject): f.event_id for f in self.store.open_firings()}
        for bad in invalid:
            if bad.name not in self._invalid_seen:
                log.error("alert rule %r skipped: %s", bad.name, bad.error)
                self._invalid_seen.add(bad.name)
        by_symbol: dict[str, list[tuple[Rule, Condition]]] = {}
        for rule in rules:
            if rule.webhook:
                self._register_secret(rule.webhook)
                path = urlsplit(rule.webhook).path
                if len(path) > 1:
                    self._register_secret(path)
            if rule.kind is RuleKind.CONDITION:
                cond = rule.parsed
                by_symbol.setdefault(cond.symbol, []).append((rule, cond))
        with self._lock:
            self._rules, self._by_symbol = rules, by_symbol
            if self._writes == writes:  # else a firing or clearing written meanwhile may be missing from what was read
                self._disarmed = disarmed

    # -- pipeline listener ---------------------------------------------------------------

    def on_load(self, event: LoadEvent) -> None:
        """Condition rules of ``event.symbol`` on its newest bar. Never raises."""
        with self._lock:
            watching = list(self._by_symbol.get(event.symbol, ()))
        if not watching or self._stop.is_set():
            return
        bar = event.newest
        series: _Series = (event.provider, event.symbol, event.interval)
        seen: dict[str, Decimal | None] = {}
        before: list[Bar | None] = []  # the stored bar before ``bar``, read once (only for a crossing rule)
        previous_seen: dict[str, Decimal | None] = {}
        try:
            for rule, cond in watching:
                if cond.field not in seen:
                    seen[cond.field] = self._value(cond, bar)
                value = seen[cond.field]
                previous = None
                if cond.crossing:
                    if not before:
                        before.append(self.store.bar_at_or_before(*series, previous_bar_cutoff(bar)))
                    if cond.field not in previous_seen:
                        previous_seen[cond.field] = None if before[0] is None else self._value(cond, before[0])
                    previous = previous_seen[cond.field]
                holding = holds(cond, value, previous)
                if holding is not None:
                    text = partial(self._condition_text, rule, cond, bar, value, previous)
                    self._apply(rule, " ".join(series), holding, value, text)
        except MarketpollError as exc:
            log.warning("alerts on %s %s %s not evaluated: %s", *series, exc)

    def on_cycle(self, cycle: CycleResult) -> None:
        """Error-rate rules of the cycle's job. Never raises."""
        for rule in self.rules:
            if rule.kind is RuleKind.ERROR_RATE and rule.subject == cycle.job_name:
                self._guarded(self.check_error_rate, rule)

    # -- the minute ----------------------------------------------------------------------

    def tick(self) -> None:
        """Re-read the rules, then check every staleness and error-rate rule at ``clock.now()``. Never raises."""
        try:
            self.reload()
        except MarketpollError as exc:
            log.warning("alert rules not re-read: %s", exc)
        for rule in self.rules:
            if rule.kind is RuleKind.STALE:
                self._guarded(self.check_stale, rule)
            elif rule.kind is RuleKind.ERROR_RATE:
                self._guarded(self.check_error_rate, rule)

    def _guarded(self, check: Callable[[Rule], None], rule: Rule) -> None:
        try:
            check(rule)
        except MarketpollError as exc:
            log.warning("alert %s not checked: %s", rule.name, exc)
        except Exception:  # noqa: BLE001 - a bug in one rule must not stop the others or the thread
            log.exception("alert %s: unexpected error", rule.name)

    def check_stale(self, rule: Rule) -> None:
        """Fire when ``rule.subject`` (a job, else a symbol) has had no new bar for ``threshold`` minutes while
        its session is open: a job's session and exchange are its own; a symbol's are the rule's."""
        now = self.clock.now()
        job = self.store.job(rule.subject)
        if job is not None:
            if job.paused:
                return
            exchange, sessions = job.exchange, (job.session,)
            newest_end = self.store.newest_bar_end(job.symbols, interval=job.bar_interval)
        else:
            exchange, sessions = rule.exchange or "XNYS", rule.sessions or ("regular",)
            newest_end = self.store.newest_bar_end([rule.subject])
        sess, start, end = self.calendars.get(exchange).next_window(now, frozenset(Session(s) for s in sessions))
        result = staleness(now, newest_end, (start, end), timedelta(minutes=rule.threshold))
        if result.age_minutes is None:  # closed: nothing is expected, and a fired alert clears
            self._apply(rule, rule.subject, False, None, lambda: "")
            return
        age = Decimal(str(round(result.age_minutes, 1)))
        last = f"the newest bar ended {newest_end.isoformat()}" if newest_end else "no bar of it is stored yet"

        def text() -> str:
            return (f"{rule.name}: no new bar of {rule.subject} for {_show(age)} min (alert after {rule.threshold:g}) while "
                    f"{exchange}'s {sess.value} session is open; {last}")  # fmt: skip

        self._apply(rule, rule.subject, result.holding, age, text)

    def check_error_rate(self, rule: Rule) -> None:
        """Fire when the failed share of the job's recent cycles (:mod:`alerts.evaluate`) is above the threshold."""
        statuses = self.store.recent_statuses(rule.subject, self.clock.now() - ERROR_RATE_WINDOW)
        rate = error_rate(statuses)
        if rate is None:
            return
        value = Decimal(str(round(rate, 4)))

        def text() -> str:
            return (f"{rule.name}: {rate:.0%} of job {rule.subject}'s last {len(statuses)} cycles failed "
                    f"(alert above {rule.threshold:.0%})")  # fmt: skip

        self._apply(rule, rule.subject, rate > rule.threshold, value, text)

    # -- firing --------------------------------------------------------------------------

    def _apply(self, rule: Rule, subject: str, holding: bool, value, text: Callable[[], str]) -> None:
        """Run the de-duplication step for (rule, subject); record and queue a firing, or record a clearing.

        Decided under the lock, written outside it (module docstring): an evaluation of a (rule, subject)
        whose row is being written by another thread waits for that write, then decides on its outcome.
        """
        key = (rule.id, subject)
        with self._lock:
            while key in self._in_flight:
                self._written.wait()
            open_id = self._disarmed.get(key)
            s = step(open_id is None, holding)
            if not s.fire and not (s.clear and open_id is not None):
                return
            self._in_flight.add(key)
        try:
            now = self.clock.now()
            if s.clear:
                cleared = self.store.clear(rule.id, subject, now)
                with self._lock:
                    self._disarmed.pop(key, None)
                    self._writes += 1
                if cleared:
                    log.info("alert %s on %s cleared", rule.name, subject)
                return
            firing = Firing(rule, subject, value, now, text())
            event_id = self.store.record_firing(firing)
            with self._lock:
                self._disarmed[key] = event_id or 0
                self._writes += 1
        finally:
            with self._lock:
                self._in_flight.discard(key)
                self._written.notify_all()
        if event_id is None:  # another process (a second poller, a cluster node) fired it: it delivers
            log.debug("alert %s on %s already fired by another process", rule.name, subject)
            return
        log.warning("ALERT %s", firing.text)
        self.deliverer.submit(event_id, firing)

    def _value(self, cond: Condition, bar: Bar) -> Decimal | None:
        ref = None
        if cond.field == "change_percent":
            ref_bar = self.store.bar_at_or_before(bar.provider, bar.symbol, bar.interval, reference_cutoff(bar))
            ref = None if ref_bar is None else ref_bar.close
        return field_value(cond.field, bar, ref)

    @staticmethod
    def _condition_text(rule: Rule, cond: Condition, bar: Bar, value, previous) -> str:
        pct = cond.field == "change_percent"
        when = bar.ts.strftime("%Y-%m-%d %H:%M UTC")
        if cond.crossing:
            verb = cond.op.replace("_", " ").replace("crosses", "crossed")
            what = f"{cond.symbol} {cond.field} {verb} {_show(cond.threshold)}: {_show(previous, pct)} -> {_show(value, pct)}"
        else:
            what = f"{cond.symbol} {cond.field} {_show(value, pct)} {cond.op} {_show(cond.threshold)}"
        return f"{rule.name}: {what} ({bar.provider} {bar.interval} bar of {when})"


def start_alerts(
    engine: sa.Engine, *, calendars: Calendars, clock: Clock, env: Mapping[str, str], redactor: Redactor,
    tick_seconds: float = TICK_SECONDS, policy: DeliveryPolicy | None = None,
) -> AlertService:  # fmt: skip
    """The running alert engine of ``engine``'s rules (none yet is fine: they are re-read every ``tick_seconds``).

    ``env``: the settings' copy of the environment (``SMTP_URL``, ``ALERT_EMAIL_FROM``); ``redactor`` learns the
    SMTP password and every webhook URL, and cleans every delivery error. Raises
    :class:`~errors.ConfigError` for a malformed ``SMTP_URL``, :class:`~errors.LoadError` if the database fails.
    """
    store = AlertStore(engine)
    smtp = SmtpConfig.from_env(env)
    if smtp is not None:
        for secret in smtp.secrets():
            redactor.add(secret)
    deliverer = Deliverer(store, smtp=smtp, policy=policy, clock=clock, redact=redactor)
    service = AlertService(store, deliverer, calendars, clock=clock, tick_seconds=tick_seconds,
                           register_secret=redactor.add).start()  # fmt: skip
    kinds = ", ".join(f"{sum(r.kind is k for r in service.rules)} {k.value}" for k in RuleKind)
    needs_smtp = any(r.emails for r in service.rules)
    log.info("alerts: %d rule(s) (%s); email %s", len(service.rules), kinds,
             smtp.describe() if smtp else "not configured (SMTP_URL)" if needs_smtp else "unused")  # fmt: skip
    return service
