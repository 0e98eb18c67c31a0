"""Polling strategies are pure; the manager's loop runs on an injected clock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from clock import ManualClock
from db import RunLedger
from errors import ConfigError
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers.demo import DemoProvider
from models.run import CycleResult
from scheduler.polling import PollingConfig, PollingManager
from scheduler.strategies import ContinuousStrategy

T = datetime(2024, 3, 11, 14, 0, tzinfo=UTC)


def test_continuous_next_poll_is_pure():
    s = ContinuousStrategy(PollingConfig(interval_minutes=5, symbols=("IBM",)))
    assert s.next_poll(None, T) == T
    last = CycleResult(job_name="j", provider="demo", started_at=T)
    assert s.next_poll(last, T + timedelta(seconds=20)) == T + timedelta(minutes=5)  # fixed rate
    assert s.next_poll(last, T + timedelta(minutes=7)) == T + timedelta(minutes=7)  # overran: at once


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"interval_minutes": 0}, "interval_minutes"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"symbols": ()}, "symbols"),
        ({"interval": "7min"}, "interval"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_polling_config_validates_itself(kwargs, name):
    args = {"symbols": ("IBM",), **kwargs}
    with pytest.raises(ConfigError) as info:
        PollingConfig(**args)
    assert info.value.name == name


def test_continuous_polling_runs_n_cycles_on_schedule(sqlite_engine):
    clock = ManualClock(T)
    with DemoProvider(clock=clock) as provider:
        pipeline = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine), clock=clock)
        results = PollingManager(pipeline).continuous_polling(
            PollingConfig(interval_minutes=0.5, max_iterations=3, symbols=("IBM", "MSFT"))
        )
    assert clock.sleeps == [30.0, 30.0]  # the clock stood still during cycles: full interval waits
    assert results["total_iterations"] == 3 and results["successful_cycles"] == 3 and results["failed_cycles"] == 0
    assert results["success_rate"] == 100.0 and results["intervals_seconds"] == [30.0, 30.0]
    assert results["total_records_processed"] == 600 and results["total_records_loaded"] == 200
    assert results["start_time"] == T.isoformat() and results["total_duration"] == "0:01:00"
    assert set(results) >= {
        "total_iterations",
        "successful_cycles",
        "failed_cycles",
        "total_records_processed",
        "start_time",
        "end_time",
        "total_duration",
        "success_rate",
    }


def test_stop_ends_the_loop_during_the_wait(sqlite_engine):
    stop = threading.Event()
    clock = ManualClock(T)
    real_sleep = clock.sleep

    def sleep(seconds, ev=None):
        stop.set()  # a signal arrives while waiting for the next poll
        return real_sleep(seconds, ev)

    clock.sleep = sleep
    with DemoProvider(clock=clock) as provider:
        pipeline = EtlPipeline(provider, make_loader(sqlite_engine), RunLedger(sqlite_engine), clock=clock, stop=stop)
        results = PollingManager(pipeline).continuous_polling(PollingConfig(interval_minutes=1, symbols=("IBM",)))
    assert results["total_iterations"] == 1 and results["interrupted"] is True
