"""The command line: argument parsing and validation only (``main.py`` wires and runs).

Flags follow the seed's ``main.py`` (``--continuous-poll --poll-interval 5
--poll-max-iterations 50``). Bad input exits with status 2 and one line naming the value.
"""

from __future__ import annotations

import argparse
import sys

from etl.providers import provider_names
from etl.providers.alphavantage import MONTH_RE
from models.bar import INTERVALS, normalize_symbol

__all__ = ["build_parser", "EXIT_OK", "EXIT_CYCLE_FAILED", "EXIT_USAGE", "EXIT_UNAVAILABLE"]

EXIT_OK = 0  # every cycle fully succeeded (or a graceful shutdown)
EXIT_CYCLE_FAILED = 1  # at least one cycle had a failed symbol or failed as a whole
EXIT_USAGE = 2  # bad command-line input or settings
EXIT_UNAVAILABLE = 3  # the database could not be reached or migrated at start

#: CLI spellings of intervals: the canonical names plus Alpha Vantage's "daily".
INTERVAL_ALIASES = {**{k: k for k in INTERVALS}, "daily": "1day"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _symbol(text: str) -> str:
    try:
        return normalize_symbol(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _interval(text: str) -> str:
    try:
        return INTERVAL_ALIASES[text]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown interval {text!r} (choose from {', '.join(INTERVAL_ALIASES)})") from None


def _month(text: str) -> str:
    if not MONTH_RE.match(text):
        raise argparse.ArgumentTypeError(f"month must be YYYY-MM: {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="main.py",
        description="marketpoll: market-aware ETL of bars from REST APIs into PostgreSQL (or SQLite).",
        epilog="Settings come from the environment and .env (see .env.example). Exit status: 0 every cycle "
        "succeeded, 1 some cycle failed or was partial, 2 bad input, 3 database unavailable.",
    )
    mode = p.add_argument_group("what to run").add_mutually_exclusive_group(required=True)
    mode.add_argument("--continuous-poll", action="store_true", help="poll every --poll-interval minutes, around the clock")

    src = p.add_argument_group("what to fetch")
    src.add_argument(
        "--provider",
        default="demo",
        choices=provider_names(),
        help="data source (default: demo, a built-in Alpha Vantage simulator on 127.0.0.1)",
    )
    src.add_argument(
        "--symbols", nargs="+", type=_symbol, default=None, metavar="SYMBOL", help="tickers to poll, e.g. IBM MSFT (required)"
    )
    src.add_argument(
        "--interval",
        type=_interval,
        default="5min",
        metavar="INTERVAL",
        help=f"bar interval: {', '.join(INTERVAL_ALIASES)} (default: 5min)",
    )
    src.add_argument(
        "--outputsize",
        choices=("compact", "full"),
        default=None,
        help="Alpha Vantage outputsize: compact = latest 100 bars, full = all (default: ALPHA_VANTAGE_OUTPUTSIZE or compact)",
    )
    src.add_argument("--datatype", choices=("json", "csv"), default=None, help="Alpha Vantage wire format (default: json)")
    src.add_argument(
        "--month", type=_month, default=None, help="Alpha Vantage intraday: one historical month, YYYY-MM (a backfill)"
    )
    src.add_argument("--no-extended-hours", action="store_true", help="intraday: regular session bars only")

    poll = p.add_argument_group("polling")
    poll.add_argument(
        "--poll-interval",
        type=_minutes,
        default=5.0,
        metavar="MINUTES",
        help="minutes between poll starts; fractions allowed, e.g. 0.5 (default: 5)",
    )
    poll.add_argument(
        "--poll-max-iterations",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N cycles (default: run until SIGINT/SIGTERM)",
    )
    poll.add_argument(
        "--max-retries",
        type=int,
        default=3,
        metavar="N",
        help="extra passes per cycle for symbols that failed transiently (default: 3)",
    )
    poll.add_argument("--no-retry", action="store_true", help="no extra passes for failed symbols")
    poll.add_argument(
        "--workers",
        type=_positive_int,
        default=4,
        metavar="N",
        help="threads fetching symbols concurrently; arrived batches are loaded together (default: 4)",
    )
    poll.add_argument("--job-name", default=None, help="etl_runs.job_name for these cycles (default: <strategy>_polling)")

    misc = p.add_argument_group("misc")
    misc.add_argument("--database-url", default=None, help="overrides DATABASE_URL (default: sqlite:///marketpoll.db)")
    misc.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=None)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.continuous_poll and not args.symbols:
        parser.error("argument --symbols: at least one symbol is required")
    if args.max_retries < 0:
        parser.error(f"argument --max-retries: must be >= 0: {args.max_retries}")
    return args


if __name__ == "__main__":  # pragma: no cover
    sys.exit(build_parser().print_help())
