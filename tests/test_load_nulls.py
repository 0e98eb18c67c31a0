"""Bars without volume (indices) load as NULL, idempotently, on both databases and every load path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from etl.load import make_loader
from models.bar import Bar

T0 = datetime(2024, 3, 11, tzinfo=UTC)


def day(i: int, volume: str | None = None, close: str = "101") -> Bar:
    return Bar("polygon", "I:NDX", "1day", T0 + timedelta(days=i), "100", "102", "99", close, volume)


def test_bars_without_volume_load_as_null_and_reload_as_nothing(engine):
    loader = make_loader(engine)
    assert loader.load([day(i) for i in range(5)]) == 5  # the append path (COPY on PostgreSQL)
    assert loader.load([day(i) for i in range(6)]) == 1  # unchanged rows rewrite nothing; one new
    assert make_loader(engine).load([day(2, close="101.5"), day(3, volume="7")]) == 2  # revisions, fresh loader
    with engine.connect() as c:
        got = c.exec_driver_sql("SELECT volume FROM bars ORDER BY ts").all()
    assert [v for (v,) in got] == [None, None, None, 7, None, None]
