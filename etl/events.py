"""What the pipeline tells the rest of the process: cycle and load events, to injected listeners.

Listeners are how metrics, alerts and live push hear about data without the pipeline knowing
them: :class:`~etl.pipeline.EtlPipeline` calls ``on_load`` after each load transaction has
committed (one :class:`LoadEvent` per series that changed) and ``on_cycle`` after each cycle.
A listener must be quick and must not raise; the pipeline logs and swallows what one raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol

from models.bar import Bar
from models.run import CycleResult

__all__ = ["LoadEvent", "PipelineListener", "MetricsListener", "BARS_CHANNEL", "PAYLOAD_MAX_BYTES", "bar_payload",
           "payload_json"]  # fmt: skip

#: The PostgreSQL channel of committed loads: ``LISTEN marketpoll_bars;`` (one NOTIFY per series changed).
BARS_CHANNEL = "marketpoll_bars"
#: A payload's JSON is at most this many bytes (PostgreSQL's limit is 8,000).
PAYLOAD_MAX_BYTES = 7_900


def bar_payload(bar: Bar, rows: int) -> dict:
    """The event of a series that changed in a committed load: its newest bar and the rows written.

    ``{"provider", "symbol", "interval", "ts", "open", "high", "low", "close", "volume", "rows"}``:
    ``ts`` the bar's start, ISO 8601 in UTC ending in ``Z``; values the decimal text as stored
    (``volume`` may be None); ``rows`` the rows inserted or changed in the series by that transaction.
    The same shape on PostgreSQL (NOTIFY) and SQLite (the in-process bus), and in a catch-up from the tables
    (:func:`api.queries.bars_since`), where ``rows`` are those of the series' last write (its
    ``series_last_write.rows_written``) and the bar its newest.
    """
    ts = bar.ts.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
    return {"provider": bar.provider, "symbol": bar.symbol, "interval": bar.interval, "ts": ts, "open": bar.open,
            "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume, "rows": rows}  # fmt: skip


def payload_json(bar: Bar, rows: int) -> str:
    """:func:`bar_payload` as compact JSON of at most :data:`PAYLOAD_MAX_BYTES` bytes (values too long
    to fit, which validation lets through in theory only, are sent as null)."""
    payload = bar_payload(bar, rows)
    text = json.dumps(payload, separators=(",", ":"))
    if len(text.encode()) > PAYLOAD_MAX_BYTES:
        text = json.dumps({**payload, **dict.fromkeys(("open", "high", "low", "close", "volume"))}, separators=(",", ":"))
    return text


@dataclass(frozen=True, slots=True)
class LoadEvent:
    """A series that changed in a committed load transaction: its newest bar and how many rows were written."""

    provider: str
    symbol: str
    interval: str
    newest: Bar
    rows_written: int
    job_name: str


class PipelineListener(Protocol):
    def on_load(self, event: LoadEvent) -> None: ...

    def on_cycle(self, cycle: CycleResult) -> None: ...


class MetricsListener:
    """Feeds :mod:`etl.metrics` (Prometheus): the first listener of every pipeline."""

    def on_load(self, event: LoadEvent) -> None:
        pass  # cycles carry the counts; freshness is taken from the cycle's newest bars

    def on_cycle(self, cycle: CycleResult) -> None:
        from etl import metrics

        metrics.observe_cycle(cycle)
