"""Scheduling: polling strategies and loop, graceful shutdown."""

from scheduler.polling import ContinuousStrategy, PollingConfig, PollingManager, PollingStrategy
from scheduler.shutdown import install_signal_handlers

__all__ = ["PollingConfig", "PollingManager", "PollingStrategy", "ContinuousStrategy", "install_signal_handlers"]
