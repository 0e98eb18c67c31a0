"""What the pipeline tells the rest of the process: cycle and load events, to injected listeners.

Listeners are how metrics, alerts and live push hear about data without the pipeline knowing
them: :class:`~etl.pipeline.EtlPipeline` calls ``on_load`` after each load transaction has
committed (one :class:`LoadEvent` per series that changed) and ``on_cycle`` after each cycle.
A listener must be quick and must not raise; the pipeline logs and swallows what one raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from models.bar import Bar
from models.run import CycleResult

__all__ = ["LoadEvent", "PipelineListener", "MetricsListener"]


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
