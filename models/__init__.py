"""Plain values shared by every layer: bars and run results."""

from models.action import CorporateAction
from models.bar import INTERVALS, SYMBOL_RE, Bar, interval_seconds, normalize_symbol
from models.run import CycleResult, PollingResults, RunStatus, SymbolOutcome

__all__ = [
    "CorporateAction",
    "Bar",
    "INTERVALS",
    "SYMBOL_RE",
    "interval_seconds",
    "normalize_symbol",
    "CycleResult",
    "PollingResults",
    "RunStatus",
    "SymbolOutcome",
]
