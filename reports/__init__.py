"""Reports for people: pictures of what the tables hold (matplotlib, imported only when one is drawn)."""

from reports.coverage_plot import plot_coverage
from reports.coverage_status import CoverageMonitor

__all__ = ["plot_coverage", "CoverageMonitor"]
