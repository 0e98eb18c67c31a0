"""The API server of the long-running modes: health, status, metrics, job control, and live bar events.

- :mod:`api.base`: the contracts (:class:`StatusSource`, :class:`ApiContext`);
- :mod:`api.status`: health and status of named jobs or of a polling run;
- :mod:`api.events`: the in-process fan-out hub (bounded subscribers);
- :mod:`api.listen`: the one ``LISTEN marketpoll_bars`` connection (PostgreSQL), reconnect and catch-up;
- :mod:`api.sse` (``GET /events``), :mod:`api.ws` (``WS /ws`` rooms), :mod:`api.queries` (what they read);
- :mod:`api.server`: the Starlette app and the uvicorn thread.
"""

from api.base import ApiContext, StatusSource
from api.events import EventFilter, EventHub, HubEvent, HubListener, Subscription
from api.server import ApiServer, build_app
from api.status import PollingStatus, SchedulerStatus, job_health

__all__ = [
    "ApiContext",
    "ApiServer",
    "EventFilter",
    "EventHub",
    "HubEvent",
    "HubListener",
    "PollingStatus",
    "SchedulerStatus",
    "StatusSource",
    "Subscription",
    "build_app",
    "job_health",
]
