"""Alerts end to end: real cycles (Alpha Vantage's wire format over loopback), a real loopback webhook and
SMTP server (aiosmtpd), real PostgreSQL and SQLite, a manual clock for staleness."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

import cli
from alerts.base import DeliveryError, Firing, Rule, RuleKind
from alerts.deliver import Deliverer, DeliveryPolicy, SmtpConfig, WebhookChannel
from alerts.service import AlertService
from alerts.store import AlertStore
from app import App
from db import RunLedger
from db.jobs import JobDefinition, JobStore
from db.tables import alert_events, etl_runs
from errors import ConfigError, SchedulingError
from etl.events import LoadEvent
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.redact import Redactor
from models.bar import Bar
from models.run import RunStatus
from scheduler.calendar import Calendars
from settings import Settings
from support import FIXED_NOW, migrate_to, ok

KEY = "ALERTSAVKEY123"
SECRET_PATH = "/hook/T000/B000/SECRETTOKEN42"
FAST = DeliveryPolicy(attempts=3, initial_delay_seconds=0.01, max_delay_seconds=0.05, queue_size=10)
CALENDARS = Calendars()


class Hook:
    """A loopback webhook receiver: records every POSTed JSON body; ``status`` is its reply; while ``gate`` is
    cleared, requests wait for it (at most 10 s)."""

    def __init__(self, status: int = 200) -> None:
        self.status, self.bodies, self.paths = status, [], []
        self.gate = threading.Event()
        self.gate.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.bodies.append(json.loads(body))
                outer.paths.append(self.path)
                outer.gate.wait(10)
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.messages.append((envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
        return "250 OK"


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def smtp():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    box.config = SmtpConfig("127.0.0.1", port, sender="marketpoll@example.test")
    yield box
    controller.stop()


@pytest.fixture
def db(engine):
    """``engine`` (PostgreSQL, then SQLite) with the alert tables empty."""
    with engine.begin() as conn:
        conn.execute(sa.delete(alert_events))
        conn.exec_driver_sql("DELETE FROM alert_rules")
    return engine


class Series:
    """Alpha Vantage 5min replies for TSLA: bar i starts at 09:30 + 5 i min New York on 2024-03-11."""

    def __init__(self, replay) -> None:
        self.closes: list[str] = []
        self.server = replay(lambda _path, _query: ok(self.payload()))

    def payload(self) -> bytes:
        rows = {}
        for i, close in enumerate(self.closes):
            ts = datetime(2024, 3, 11, 9, 30) + timedelta(minutes=5 * i)
            rows[ts.strftime("%Y-%m-%d %H:%M:%S")] = {"1. open": close, "2. high": close, "3. low": close, "4. close": close,
                                                      "5. volume": "1000"}  # fmt: skip
        meta = {"1. Information": "Intraday (5min)", "2. Symbol": "TSLA", "3. Last Refreshed": "2024-03-11 10:50:00",
                "4. Interval": "5min", "5. Output Size": "Compact", "6. Time Zone": "US/Eastern"}  # fmt: skip
        return json.dumps({"Meta Data": meta, "Time Series (5min)": dict(reversed(rows.items()))}).encode()

    def provider(self) -> AlphaVantageProvider:
        return AlphaVantageProvider(AlphaVantageConfig(api_key=KEY, base_url=self.server.url))


def service(engine, clock, *, smtp_config=None, policy=FAST, redactor=None) -> AlertService:
    store = AlertStore(engine)
    deliverer = Deliverer(store, smtp=smtp_config, policy=policy, clock=clock, redact=redactor or Redactor())
    return AlertService(store, deliverer, CALENDARS, clock=clock).start(background=False)


def pipeline(engine, provider, clock, listeners=()) -> EtlPipeline:
    redactor = Redactor([KEY])
    return EtlPipeline(provider, make_loader(engine), RunLedger(engine, redactor), clock=clock, redact=redactor,
                       listeners=listeners)  # fmt: skip


def events(engine) -> list[dict]:
    with engine.connect() as c:
        return [dict(r) for r in c.execute(sa.select(alert_events).order_by(alert_events.c.id)).mappings()]


def test_condition_fires_to_webhook_and_email_once_while_true_and_again_after_clearing(db, replay, manual_clock, hook, smtp):
    AlertStore(db).put(Rule("tsla-800", RuleKind.CONDITION, webhook=hook.url, emails=("ops@example.test",),
                            condition="TSLA close > 800"), manual_clock.now())  # fmt: skip
    series = Series(replay)

    def cycle(svc, close: str) -> None:
        series.closes.append(close)
        result = pipeline(db, series.provider(), manual_clock, [svc]).run_cycle(["TSLA"], "5min", job_name="t")
        assert result.status is RunStatus.SUCCEEDED
        assert svc.deliverer.drain(5)

    first = service(db, manual_clock, smtp_config=smtp.config)
    for close in ("790", "810.5", "820"):  # fires at 810.5 only
        cycle(first, close)
    first.close()
    second = service(db, manual_clock, smtp_config=smtp.config)  # a restart: still disarmed (from alert_events)
    for close in ("830", "790", "805"):  # 790 clears it; 805 fires again
        cycle(second, close)
    second.close()

    assert [b["text"].split(" (")[0] for b in hook.bodies] == [
        "tsla-800: TSLA close 810.5 > 800",
        "tsla-800: TSLA close 805 > 800",
    ]
    assert hook.bodies[0]["alert"]["subject"] == "alphavantage TSLA 5min" and hook.bodies[0]["alert"]["value"] == "810.5"
    assert [rcpt for rcpt, _ in smtp.messages] == [["ops@example.test"]] * 2
    assert "TSLA close 805 > 800" in smtp.messages[1][1] and "From: marketpoll@example.test" in smtp.messages[1][1]
    rows = events(db)
    assert [(r["delivery_status"], r["attempts"], float(r["value"])) for r in rows] == [
        ("delivered", 2, 810.5),
        ("delivered", 2, 805),
    ]
    assert rows[0]["cleared_at"] is not None and rows[1]["cleared_at"] is None


def test_crosses_above_is_seeded_from_the_stored_bars(db, replay, manual_clock, hook):
    series = Series(replay)
    series.closes += ["790", "810"]
    pipeline(db, series.provider(), manual_clock).run_cycle(["TSLA"], "5min", job_name="t")  # before the rule's process
    AlertStore(db).put(Rule("cross", RuleKind.CONDITION, webhook=hook.url, condition="tsla close crosses_above 800"),
                       manual_clock.now())  # fmt: skip
    svc = service(db, manual_clock)  # the stored bar before 820 is 810: 810 -> 820 is no crossing
    for close in ("820", "795", "805", "806"):
        series.closes.append(close)
        pipeline(db, series.provider(), manual_clock, [svc]).run_cycle(["TSLA"], "5min", job_name="t")
    svc.close()
    assert [b["text"].split(" (")[0] for b in hook.bodies] == ["cross: TSLA close crossed above 800: 795 -> 805"]


def test_a_failing_webhook_is_retried_then_recorded_failed_while_loading_goes_on(sqlite_engine, replay, manual_clock):
    db = sqlite_engine
    failing = Hook(status=503)
    failing.gate.clear()  # the first request hangs until the cycle is over
    try:
        AlertStore(db).put(Rule("hot", RuleKind.CONDITION, webhook=failing.url, condition="TSLA high >= 1"), manual_clock.now())
        series = Series(replay)
        series.closes.append("5")
        redactor = Redactor()
        svc = service(db, manual_clock, redactor=redactor)
        svc.reload()
        redactor.add(SECRET_PATH)
        result = pipeline(db, series.provider(), manual_clock, [svc]).run_cycle(["TSLA"], "5min", job_name="t")
        assert result.status is RunStatus.SUCCEEDED and result.rows_loaded == 1  # loaded while the webhook hangs
        assert [r["delivery_status"] for r in events(db)] == ["pending"]
        failing.gate.set()
        assert svc.deliverer.drain(5)
        svc.close()
    finally:
        failing.close()
    (row,) = events(db)
    assert (row["delivery_status"], row["attempts"], len(failing.bodies)) == ("failed", 3, 3)
    assert "webhook: http://127.0.0.1:" in row["error"] and "/*** : HTTP 503" not in row["error"] and "HTTP 503" in row["error"]
    assert "SECRETTOKEN42" not in row["error"] and "SECRETTOKEN42" not in row["message"]


def test_a_full_delivery_queue_records_the_drop(sqlite_engine, manual_clock):
    blocked = Hook()
    blocked.gate.clear()
    store = AlertStore(sqlite_engine)
    rule, _ = store.put(Rule("q", RuleKind.CONDITION, webhook=blocked.url, condition="TSLA close > 1"), manual_clock.now())
    deliverer = Deliverer(store, policy=DeliveryPolicy(attempts=1, queue_size=1), clock=manual_clock)
    try:
        ids = []
        for n in range(3):
            firing = Firing(rule, f"s{n}", 2, manual_clock.now(), f"q {n}")
            ids.append(store.record_firing(firing))
            accepted = deliverer.submit(ids[-1], firing)
            if n == 0:  # wait until the worker holds the first one (the queue is empty again)
                for _ in range(200):
                    if blocked.bodies:
                        break
                    threading.Event().wait(0.01)
        assert not accepted  # the third: one in the worker, one queued
        blocked.gate.set()
        assert deliverer.drain(5)
    finally:
        deliverer.close(1)
        blocked.close()
    statuses = {r["id"]: (r["delivery_status"], r["error"]) for r in events(sqlite_engine)}
    assert [statuses[i][0] for i in ids] == ["delivered", "delivered", "dropped"]
    assert "queue was full (1 firings waiting)" in statuses[ids[2]][1]


def _bar(symbol: str, ts: datetime) -> Bar:
    return Bar("demo", symbol, "5min", ts, "10", "10", "10", "10", "100")


def test_stale_series_and_job_with_a_manual_clock(db, manual_clock, hook):
    store = AlertStore(db)
    loader = make_loader(db)
    loader.load_many([[_bar("TSLA", datetime(2024, 3, 11, 14, 30, tzinfo=UTC))]])  # ends 14:35 UTC (10:35 New York)
    store.put(Rule("tsla-stale", RuleKind.STALE, webhook=hook.url, subject="TSLA", threshold=15, exchange="XNYS",
                   sessions=("regular",)), manual_clock.now())  # fmt: skip
    JobStore(db).put(JobDefinition("morning", "regular", "XNYS", "demo", ("IBM",), 5.0), manual_clock.now())
    store.put(Rule("job-stale", RuleKind.STALE, webhook=hook.url, subject="morning", threshold=120), manual_clock.now())
    svc = service(db, manual_clock)

    manual_clock.set(datetime(2024, 3, 11, 14, 45, tzinfo=UTC))  # 10 min since TSLA's bar, 75 since the open
    svc.tick()
    manual_clock.set(FIXED_NOW)  # 25 min since TSLA's bar; 90 since the open, nothing ever for the job
    svc.tick()
    svc.tick()  # still stale: no second alert
    assert svc.deliverer.drain(5)
    assert [b["alert"]["subject"] for b in hook.bodies] == ["TSLA"]
    assert "no new bar of TSLA for 25 min" in hook.bodies[0]["text"] and "XNYS's regular session" in hook.bodies[0]["text"]

    loader.load_many([[_bar("TSLA", datetime(2024, 3, 11, 14, 55, tzinfo=UTC))]])
    manual_clock.set(datetime(2024, 3, 11, 15, 35, tzinfo=UTC))  # the job: 125 min since the open
    svc.tick()  # TSLA clears, the job fires
    manual_clock.set(datetime(2024, 3, 11, 21, 30, tzinfo=UTC))  # 17:30 New York: closed, nothing is stale
    svc.tick()
    svc.close()
    assert [b["alert"]["subject"] for b in hook.bodies] == ["TSLA", "morning"]
    assert all(r["cleared_at"] is not None for r in events(db))  # the close cleared both


def test_two_processes_evaluating_one_rule_send_it_once(db, manual_clock, hook):
    """Two pollers (or cluster nodes) on one database both find TSLA stale: the firing is recorded and
    delivered once, and either one clearing it re-arms the rule for both."""
    store = AlertStore(db)
    make_loader(db).load_many([[_bar("TSLA", datetime(2024, 3, 11, 14, 30, tzinfo=UTC))]])
    store.put(Rule("tsla-stale", RuleKind.STALE, webhook=hook.url, subject="TSLA", threshold=15, exchange="XNYS",
                   sessions=("regular",)), manual_clock.now())  # fmt: skip
    first, second = service(db, manual_clock), service(db, manual_clock)  # each read the rule armed
    manual_clock.set(FIXED_NOW)  # 25 min since TSLA's bar ended
    first.tick()
    second.tick()
    second.tick()
    assert first.deliverer.drain(5) and second.deliverer.drain(5)
    assert [b["alert"]["subject"] for b in hook.bodies] == ["TSLA"]
    assert [(r["subject"], r["cleared_at"]) for r in events(db)] == [("TSLA", None)]

    make_loader(db).load_many([[_bar("TSLA", datetime(2024, 3, 11, 14, 55, tzinfo=UTC))]])
    second.tick()  # fresh again: the second process clears the firing the first one recorded
    assert events(db)[0]["cleared_at"] is not None
    make_loader(db).load_many([[_bar("TSLA", datetime(2024, 3, 11, 15, 0, tzinfo=UTC))]])
    manual_clock.set(datetime(2024, 3, 11, 15, 30, tzinfo=UTC))  # stale again: 25 min since 15:05
    first.tick()  # re-reads the state (cleared), so it fires again
    second.tick()
    for svc in (first, second):
        svc.close()
    assert [b["alert"]["subject"] for b in hook.bodies] == ["TSLA", "TSLA"]
    assert [r["cleared_at"] is None for r in events(db)] == [False, True]


def test_the_migration_keeps_one_open_firing_of_a_double_send(tmp_path):
    """A database that recorded the same alert twice (before 0010) upgrades: the newest stays open."""
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate_to(eng, "0009")
    fired = datetime(2024, 3, 11, 15, 0, tzinfo=UTC)
    with eng.begin() as conn:
        for i in range(3):
            row = {"rule_id": 1, "rule_name": "r", "subject": "TSLA", "message": "m", "delivery_status": "delivered"}
            conn.execute(sa.insert(alert_events).values(**row, fired_at=fired + timedelta(minutes=i)))
    migrate_to(eng, "head")
    assert [r["cleared_at"] is None for r in events(eng)] == [False, False, True]
    with pytest.raises(sa.exc.IntegrityError), eng.begin() as conn:  # a second open firing is refused
        conn.execute(sa.insert(alert_events).values(rule_id=1, rule_name="r", subject="TSLA", message="m", fired_at=fired,
                                                    delivery_status="pending"))  # fmt: skip
    eng.dispose()


def test_error_rate_from_etl_runs(db, manual_clock, hook):
    def runs(*statuses: str) -> None:
        with db.begin() as conn:
            for s in statuses:
                manual_clock.advance(60)
                conn.execute(sa.insert(etl_runs).values(job_name="nightly", provider="demo", started_at=manual_clock.now(),
                                                        finished_at=manual_clock.now(), status=s))  # fmt: skip

    AlertStore(db).put(Rule("errs", RuleKind.ERROR_RATE, webhook=hook.url, subject="nightly", threshold=0.2), manual_clock.now())
    svc = service(db, manual_clock)
    runs("failed", "succeeded")
    svc.tick()  # two cycles: no rate yet
    runs("partial", "succeeded", "interrupted")
    svc.tick()  # 2 of 4 failed
    svc.tick()
    runs(*["succeeded"] * 6)  # 2 of 10: not above 0.2
    svc.tick()
    svc.close()
    assert [b["text"] for b in hook.bodies] == ["errs: 50% of job nightly's last 4 cycles failed (alert above 20%)"]
    (row,) = events(db)
    assert float(row["value"]) == 0.5 and row["cleared_at"] is not None


def _args(*argv: str):
    return cli.parse_args(list(argv))


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--add-alert", "a", "--condition", "TSLA clse > 1", "--webhook", "http://h/x"], "unknown field 'clse'"),
        (["--add-alert", "a", "--condition", "TSLA close > 1"], "--webhook URL and/or --email"),
        (["--add-alert", "a", "--stale", "TSLA", "--webhook", "http://h/x"], "--after: required with --stale"),
        (["--add-alert", "a", "--error-rate", "j", "--above", "1.5", "--email", "a@b.co"], "--above: must be a share"),
        (["--add-alert", "a", "--condition", "TSLA close > 1", "--stale", "X", "--after", "5", "--webhook", "http://h/x"],
         "exactly one of"),
        (["--add-alert", "a", "--condition", "TSLA close > 1", "--webhook", "ftp://h/x"], "http:// or https://"),
        (["--add-alert", "a", "--condition", "TSLA close > 1", "--email", "nobody"], "--email must be an address"),
        (["--show-alerts", "--above", "0.2"], "--above: only with --add-alert"),
        (["--add-alert", "has space", "--condition", "TSLA close > 1", "--email", "a@b.co"], "bad alert name"),
    ],
)  # fmt: skip
def test_cli_misuse_is_one_line_and_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_add_show_remove_from_the_command_line(sqlite_url, capsys):
    app = App(Settings.from_env({}, database_url=sqlite_url), Redactor(), threading.Event())
    try:
        assert app.alerts(_args("--add-alert", "tsla", "--condition", "tsla CLOSE > 800.0", "--webhook",
                                f"https://hooks.example.test{SECRET_PATH}", "--email", "a@example.test")) == 0  # fmt: skip
        assert app.alerts(_args("--add-alert", "btc", "--stale", "btc-usd", "--after", "10", "--exchange", "24/7",
                                "--email", "a@example.test")) == 0  # fmt: skip
        with pytest.raises(SchedulingError, match="has no pre-market"):  # main.py: one line, exit 2
            app.alerts(_args("--add-alert", "x", "--stale", "IBM", "--after", "5", "--exchange", "XWAR", "--sessions", "pre",
                             "--email", "a@example.test"))  # fmt: skip
        capsys.readouterr()
        app.alerts(_args("--show-alerts"))
        out = capsys.readouterr().out
        shown = {r["name"]: r for r in json.loads(out)}
        assert "SECRETTOKEN42" not in out and shown["tsla"]["webhook"] == "https://hooks.example.test/***"
        assert shown["tsla"]["condition"] == "TSLA close > 800.0" and shown["tsla"]["email"] == ["a@example.test"]
        assert (shown["btc"]["subject"], shown["btc"]["exchange"], shown["btc"]["after_minutes"]) == ("BTC-USD", "24/7", 10.0)
        assert app.alerts(_args("--remove-alert", "tsla")) == 0
        with pytest.raises(ConfigError, match="no alert named 'tsla'"):
            app.alerts(_args("--remove-alert", "tsla"))
    finally:
        app.close()


def test_a_polling_run_delivers_the_alerts_of_its_database(sqlite_url, hook, capsys):
    """The wiring of main.py's polling mode: App.poll starts the alert engine of its database (the demo
    provider), every cycle's loads reach it, and closing the App delivers what is queued."""
    app = App(Settings.from_env({}, database_url=sqlite_url), Redactor(), threading.Event())
    try:
        app.alerts(_args("--add-alert", "ibm-up", "--condition", "IBM close > 0", "--webhook", hook.url))
        assert (
            app.poll(_args("--continuous-poll", "--symbols", "IBM", "--poll-interval", "0.005", "--poll-max-iterations", "2"))
            == 0
        )
    finally:
        app.close()
    assert [b["alert"]["rule"] for b in hook.bodies] == ["ibm-up"] and hook.bodies[0]["text"].startswith("ibm-up: IBM close ")
    assert hook.paths == [SECRET_PATH] and "SECRETTOKEN42" not in app.redactor(f"GET {hook.url}")  # learnt as a secret
    assert "SECRETTOKEN42" not in capsys.readouterr().out


class DripHook:
    """A loopback webhook that reads the request, then answers one byte every ``every`` seconds: each
    read of the reply ends well within a per-operation timeout, the whole reply takes seconds."""

    def __init__(self, every: float = 0.1) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}{SECRET_PATH}"
        self.every, self.stop = every, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n":
                if self.stop.wait(self.every):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client gave up
                    return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_the_webhook_deadline_bounds_the_whole_request_not_each_read(manual_clock):
    drip = DripHook(every=0.1)  # 72 bytes: about 7 s for the whole reply, 0.1 s per read
    try:
        rule = Rule("slow", RuleKind.CONDITION, webhook=drip.url, condition="TSLA close > 1", id=1)
        channel = WebhookChannel(drip.url, timeout_seconds=0.5)
        started = time.monotonic()
        with pytest.raises(DeliveryError) as err:
            channel.send(Firing(rule, "TSLA", 2, manual_clock.now(), "slow: TSLA close 2 > 1"))
        elapsed = time.monotonic() - started
    finally:
        drip.close()
    assert elapsed < 3.0, f"the 0.5 s deadline took {elapsed:.1f} s"
    assert err.value.transient and "deadline" in str(err.value) and "SECRETTOKEN42" not in str(err.value)


class GatedStore(AlertStore):
    """An AlertStore whose ``record_firing`` of the rule ``gated`` waits for ``gate`` (as an insert waits on
    another node's uncommitted firing, or on SQLite's busy timeout); counts the calls per rule."""

    def __init__(self, engine, gated: str) -> None:
        super().__init__(engine)
        self.gated, self.gate, self.entered = gated, threading.Event(), threading.Event()
        self.calls: dict[str, int] = {}

    def record_firing(self, firing: Firing) -> int | None:
        self.calls[firing.rule.name] = self.calls.get(firing.rule.name, 0) + 1
        if firing.rule.name == self.gated:
            self.entered.set()
            assert self.gate.wait(10)
        return super().record_firing(firing)


def _load_event(symbol: str, close: str) -> LoadEvent:
    return LoadEvent("demo", symbol, "5min", Bar("demo", symbol, "5min", FIXED_NOW, close, close, close, close, "100"), 1, "t")


def test_a_slow_firing_write_holds_up_only_its_own_rule_and_subject(sqlite_engine, manual_clock, hook):
    store = GatedStore(sqlite_engine, gated="tsla")
    for name, symbol in (("tsla", "TSLA"), ("ibm", "IBM")):
        store.put(Rule(name, RuleKind.CONDITION, webhook=hook.url, condition=f"{symbol} close > 1"), manual_clock.now())
    svc = AlertService(store, Deliverer(store, policy=FAST, clock=manual_clock), CALENDARS, clock=manual_clock)
    svc.start(background=False)
    loading = [threading.Thread(target=svc.on_load, args=(_load_event("TSLA", "5"),)) for _ in range(2)]
    try:
        loading[0].start()
        assert store.entered.wait(5)  # the first TSLA firing is being written, and waits
        loading[1].start()  # a second evaluation of the same (rule, series) waits for that write's outcome
        other = threading.Thread(target=svc.on_load, args=(_load_event("IBM", "5"),))
        other.start()
        other.join(5)
        assert not other.is_alive(), "IBM's load waited for TSLA's firing to be written"
        assert store.calls == {"tsla": 1, "ibm": 1}
    finally:
        store.gate.set()
        for t in loading:
            t.join(5)
    assert not any(t.is_alive() for t in loading)
    assert svc.deliverer.drain(5)
    svc.close()
    assert store.calls == {"tsla": 1, "ibm": 1}  # the waiting evaluation found the rule disarmed: no second insert
    assert sorted(b["alert"]["rule"] for b in hook.bodies) == ["ibm", "tsla"]
