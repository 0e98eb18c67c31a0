"""Scheduling: market sessions, polling strategies and loop, named jobs, graceful shutdown."""

from scheduler.calendar import CalendarOverrides, Calendars, MarketCalendar, MarketStatus, Session
from scheduler.polling import PollingConfig, PollingManager
from scheduler.shutdown import install_signal_handlers
from scheduler.strategies import STRATEGIES, AdaptiveStrategy, ContinuousStrategy, MarketHoursStrategy, PollingStrategy

__all__ = [
    "Calendars",
    "CalendarOverrides",
    "MarketCalendar",
    "MarketStatus",
    "Session",
    "PollingConfig",
    "PollingManager",
    "PollingStrategy",
    "ContinuousStrategy",
    "MarketHoursStrategy",
    "AdaptiveStrategy",
    "STRATEGIES",
    "install_signal_handlers",
]
