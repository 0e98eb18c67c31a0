"""The API's contracts: where health and status come from, and what routes are bound to.

A long-running mode hands the server one :class:`StatusSource`: the named-job scheduler
(:class:`api.status.SchedulerStatus`) or a polling run (:class:`api.status.PollingStatus`:
``--continuous-poll``, ``--market-hours-poll``, ``--adaptive-poll``, ``--stream``).
Route factories (the dashboard's ``routes(ctx)``) receive an :class:`ApiContext`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa

from clock import Clock

if TYPE_CHECKING:  # pragma: no cover
    from api.events import EventHub
    from scheduler.calendar import Calendars

__all__ = ["StatusSource", "ApiContext"]

log = logging.getLogger(__name__)


class StatusSource(Protocol):
    """What ``GET /health``, ``GET /status`` and ``POST /jobs/NAME/ACTION`` answer: ``(HTTP code, JSON body)``.

    Called on the server's worker threads, concurrently with loading: implementations read
    the database (errors answered as 503, never raised) and thread-safe in-memory state only.
    """

    def health(self) -> tuple[int, dict]:
        """200 with ``{"status": "ok", ...}`` while the mode runs as it should; else 503 ``"unhealthy"``."""

    def status(self) -> tuple[int, dict]:
        """200 with what runs (``"now"`` in UTC ISO 8601, jobs or the polling run, ``"rate_budget"``); 503 if unreadable."""

    def control(self, name: str, action: str) -> tuple[int, dict]:
        """``action`` (pause, resume, run) on job ``name``: 200/202, 404 no such job, 409 cannot run now."""


@dataclass
class ApiContext:
    """What route factories get: the database, the clock, the calendars, the event hub and the status.

    ``status()`` returns the same dict as ``GET /status`` (the ``status_extras`` merged in;
    on a database error, ``{"error": ...}``).
    """

    engine: sa.Engine
    clock: Clock
    hub: EventHub
    source: StatusSource
    calendars: Calendars | None = None
    #: each returns a dict merged into ``GET /status`` (cluster nodes, coverage, ...); one that raises is reported
    status_extras: list[Callable[[], dict]] = field(default_factory=list)
    #: the counts of the live push (subscribers, drops, LISTEN state), ``GET /status`` → ``live``; default: the hub's
    live_stats: Callable[[], dict] | None = None

    def status(self) -> dict:
        return self.status_response()[1]

    def status_response(self) -> tuple[int, dict]:
        code, body = self.source.status()
        if code != 200:
            return code, body
        body = dict(body)
        for extra in list(self.status_extras):
            try:
                body.update(extra())
            except Exception as exc:  # noqa: BLE001 - one broken extra must not take /status down
                log.exception("a GET /status extra failed")
                body.setdefault("status_extra_errors", []).append(
                    f"{getattr(extra, '__qualname__', extra)}: {type(exc).__name__}"
                )
        body["live"] = self.live_stats() if self.live_stats is not None else self.hub.stats()
        return code, body
