"""One ETL cycle end to end: provider over loopback HTTP -> validate -> load -> etl_runs."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from clock import ManualClock
from db import RunLedger, make_engine
from db.tables import etl_runs
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.alphavantage import AlphaVantageConfig, AlphaVantageProvider
from etl.providers.demo import DemoProvider
from etl.redact import Redactor
from etl.retry import RetryPolicy
from models.run import RunStatus
from support import fixture, ok

NOW = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)
KEY = "PIPELINESECRET42"


def pipeline(engine, provider, **kw):
    redactor = Redactor([KEY])
    return EtlPipeline(provider, make_loader(engine), RunLedger(engine, redactor), clock=ManualClock(NOW), redact=redactor, **kw)


def ledger(engine):
    with engine.connect() as c:
        return c.execute(sa.select(etl_runs).order_by(etl_runs.c.id)).mappings().all()


def bar_count(engine, symbol=None):
    with engine.connect() as c:
        q = "SELECT count(*) FROM bars" + (f" WHERE symbol = '{symbol}'" if symbol else "")
        return c.exec_driver_sql(q).scalar()


def test_partial_failure_loads_the_good_symbols_and_records_the_bad_one(engine):
    with DemoProvider(clock=ManualClock(NOW)) as provider:
        cycle = pipeline(engine, provider).run_cycle(["IBM", "INVALIDX", "MSFT"], "5min", job_name="test")
    assert cycle.status is RunStatus.PARTIAL
    assert [o.symbol for o in cycle.failed] == ["INVALIDX"]
    assert bar_count(engine, "IBM") == 100 and bar_count(engine, "MSFT") == 100 and bar_count(engine, "INVALIDX") == 0
    (row,) = ledger(engine)
    assert row["status"] == "partial" and row["job_name"] == "test" and row["provider"] == "demo"
    assert (row["symbols_requested"], row["symbols_succeeded"], row["symbols_failed"]) == (3, 2, 1)
    assert (row["rows_fetched"], row["rows_loaded"], row["rows_rejected"]) == (200, 200, 0)
    assert row["failed_symbols"] == "INVALIDX" and row["error_summary"].startswith("INVALIDX: ")
    assert row["finished_at"] is not None


def test_second_cycle_is_idempotent(engine):
    with DemoProvider(clock=ManualClock(NOW)) as provider:
        p = pipeline(engine, provider)
        first = p.run_cycle(["IBM"], "5min", job_name="t")
        second = p.run_cycle(["IBM"], "5min", job_name="t")
    assert first.status is second.status is RunStatus.SUCCEEDED
    assert (first.rows_loaded, second.rows_loaded, second.rows_fetched) == (100, 0, 100)
    assert bar_count(engine) == 100 and [r["status"] for r in ledger(engine)] == ["succeeded", "succeeded"]


def test_rejected_bars_are_counted_and_logged(engine, replay, caplog):
    body = json.loads(fixture("alphavantage/intraday_1min_MSFT.json"))
    series = body["Time Series (1min)"]
    first = next(iter(series))
    series[first]["3. low"] = "99999"  # low above high
    srv = replay([ok(json.dumps(body).encode())])
    provider = AlphaVantageProvider(AlphaVantageConfig(api_key=KEY, base_url=srv.url))
    cycle = pipeline(engine, provider).run_cycle(["MSFT"], "1min", job_name="t")
    assert cycle.status is RunStatus.SUCCEEDED and cycle.rows_rejected == 1 and cycle.rows_loaded == 99
    assert "rejected 1 of 100 bars" in caplog.text and "inconsistent OHLC" in caplog.text
    assert ledger(engine)[0]["rows_rejected"] == 1


def test_throttled_symbol_gets_another_pass_and_no_secret_is_stored(engine, replay):
    hits = {"n": 0}

    def route(_path, q):
        if q["symbol"] == "MSFT":
            hits["n"] += 1
            if hits["n"] <= 2:  # throttled past the provider's single attempt, twice
                return ok(fixture("alphavantage/throttle_note.json"))
        return ok(fixture("alphavantage/intraday_1min_MSFT.json"))

    srv = replay(route)
    cfg = AlphaVantageConfig(api_key=KEY, base_url=srv.url, retry=RetryPolicy(max_attempts=1))
    p = pipeline(engine, AlphaVantageProvider(cfg))
    failed_once = p.run_cycle(["MSFT"], "1min", job_name="t", retry_passes=0)
    assert failed_once.status is RunStatus.FAILED and failed_once.failed[0].transient
    recovered = p.run_cycle(["MSFT"], "1min", job_name="t", retry_passes=2)
    assert recovered.status is RunStatus.SUCCEEDED and recovered.rows_loaded == 100
    runs = ledger(engine)
    assert [r["status"] for r in runs] == ["failed", "succeeded"]
    assert "throttled" in runs[0]["error_summary"] and KEY not in runs[0]["error_summary"]


def test_timeout_error_in_ledger_is_redacted(engine, replay):
    import time

    def slow(_p, _q):
        time.sleep(0.3)
        return ok(b"{}")

    srv = replay(slow)
    cfg = AlphaVantageConfig(api_key=KEY, base_url=srv.url, read_timeout_seconds=0.05, retry=RetryPolicy(max_attempts=1))
    cycle = pipeline(engine, AlphaVantageProvider(cfg)).run_cycle(["IBM"], "5min", job_name="t")
    summary = ledger(engine)[0]["error_summary"]
    assert cycle.status is RunStatus.FAILED and "timeout" in summary
    assert KEY not in summary and "apikey=***" in summary


def test_dead_database_fails_the_cycle_without_raising():
    engine = make_engine("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")
    with DemoProvider(clock=ManualClock(NOW)) as provider:
        cycle = pipeline(engine, provider).run_cycle(["IBM"], "5min", job_name="t")
    assert cycle.status is RunStatus.FAILED and "writing etl_runs" in cycle.error and cycle.outcomes == []


def test_stop_event_interrupts_between_symbols(engine):
    stop = threading.Event()

    class StopAfterFirst(DemoProvider):
        def fetch_bars(self, symbol, interval, *, since=None):
            result = super().fetch_bars(symbol, interval, since=since)
            stop.set()  # a signal arrives while the first symbol is in flight
            return result

    with StopAfterFirst(clock=ManualClock(NOW)) as provider:
        cycle = pipeline(engine, provider, stop=stop).run_cycle(["IBM", "MSFT", "AAPL"], "5min", job_name="t")
    assert cycle.status is RunStatus.INTERRUPTED
    assert [o.symbol for o in cycle.outcomes] == ["IBM"] and bar_count(engine, "IBM") == 100  # in-flight batch committed
    assert ledger(engine)[0]["status"] == "interrupted"


@pytest.mark.parametrize("datatype", ["json", "csv"])
def test_demo_cycle_into_postgres_keeps_decimal_text(pg_engine, datatype):
    with DemoProvider(AlphaVantageConfig(datatype=datatype), clock=ManualClock(NOW)) as provider:
        expected = provider.fetch_bars("IBM", "60min").bars[-1]
        pipeline(pg_engine, provider).run_cycle(["IBM"], "60min", job_name="t")
    with pg_engine.connect() as c:
        got = c.exec_driver_sql("SELECT open::text, close::text FROM latest_bars WHERE symbol = 'IBM'").one()
    assert tuple(got) == (expected.open, expected.close)


def test_worker_pool_loads_every_symbol_and_keeps_symbol_order(engine):
    symbols = [f"S{i:02d}" for i in range(12)] + ["INVALIDQ"]
    with DemoProvider(clock=ManualClock(NOW)) as provider:
        cycle = pipeline(engine, provider, workers=4).run_cycle(symbols, "15min", job_name="t")
    assert [o.symbol for o in cycle.outcomes] == symbols
    assert cycle.status is RunStatus.PARTIAL and [o.symbol for o in cycle.failed] == ["INVALIDQ"]
    assert bar_count(engine) == 1200 and cycle.rows_loaded == 1200
    assert all(o.rows_loaded == 100 for o in cycle.outcomes if o.ok)
    assert ledger(engine)[0]["symbols_succeeded"] == 12
