"""The command line: argument parsing and validation only (``main.py`` wires and runs).

Flags follow the seed's ``main.py`` (``--continuous-poll --poll-interval 5
--poll-max-iterations 50``). Bad input exits with status 2 and one line naming the value.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, date, datetime

from db.jobs import MAX_JOB_INTERVAL_MINUTES, MIN_JOB_INTERVAL_MINUTES, check_job_name
from errors import ConfigError
from etl.providers import provider_names
from models.bar import INTERVALS, normalize_symbol

__all__ = ["build_parser", "EXIT_OK", "EXIT_CYCLE_FAILED", "EXIT_USAGE", "EXIT_UNAVAILABLE", "EXIT_INTERNAL"]

EXIT_OK = 0  # every cycle fully succeeded (or a graceful shutdown)
EXIT_CYCLE_FAILED = 1  # at least one cycle had a failed symbol or failed as a whole
EXIT_USAGE = 2  # bad command-line input or settings
EXIT_UNAVAILABLE = 3  # the database could not be reached or migrated at start
EXIT_INTERNAL = 4  # an unexpected error (a bug): the traceback is logged

#: CLI spellings of intervals: the canonical names plus Alpha Vantage's "daily".
INTERVAL_ALIASES = {**{k: k for k in INTERVALS}, "daily": "1day"}

#: Bounds of --poll-interval, --stream-interval, --min/--max-poll-interval, in minutes:
#: 0.001 min = 60 ms (fast loops against a local server are legitimate) to a week.
MIN_POLL_MINUTES = 0.001
MAX_POLL_MINUTES = 10080.0
#: --at is accepted from 1900 up to 2200 (the calendars look ~400 days past it; pandas ends in 2262).
AT_RANGE_UTC = (datetime(1900, 1, 1, tzinfo=UTC), datetime(2201, 1, 1, tzinfo=UTC))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _number(kind: type, what: str, ok, bounds: str):
    """An argparse type: ``kind(text)`` that satisfies ``ok``; one-line errors naming the value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {bounds}: {text!r}")
        return value

    return parse


_minutes = _number(
    float, "a number of minutes", lambda v: MIN_POLL_MINUTES <= v <= MAX_POLL_MINUTES,
    f"from {MIN_POLL_MINUTES:g} (60 ms) to {MAX_POLL_MINUTES:g} minutes (a week)",
)  # fmt: skip
_job_minutes = _number(
    float, "a number of minutes", lambda v: MIN_JOB_INTERVAL_MINUTES <= v <= MAX_JOB_INTERVAL_MINUTES,
    f"from {MIN_JOB_INTERVAL_MINUTES:.4f} (1 second) to {MAX_JOB_INTERVAL_MINUTES:g} minutes (a day)",
)  # fmt: skip
_seconds = _number(float, "a number of seconds", lambda v: 0 < v < 86400, "more than 0 and less than 86400 seconds")
_port = _number(int, "a port number", lambda v: 0 <= v <= 65535, "a port from 0 to 65535")
_positive_int = _number(int, "a whole number", lambda v: v >= 1, ">= 1")


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


_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _month(text: str) -> str:
    if not _MONTH.match(text):
        raise argparse.ArgumentTypeError(f"month must be YYYY-MM: {text!r}")
    return text


def _exchange(text: str) -> str:
    code = text.strip().upper()
    if not code or len(code) > 40 or any(c.isspace() for c in code):
        raise argparse.ArgumentTypeError(f"bad exchange code {text!r}")
    return code


def _instant(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r}") from None
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (Z or +HH:MM): {text!r}")
    try:
        at = dt.astimezone(UTC)
    except OverflowError:
        at = None
    if at is None or not AT_RANGE_UTC[0] <= at < AT_RANGE_UTC[1]:
        raise argparse.ArgumentTypeError(f"must be from 1900 to 2200: {text!r}")
    return at


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _when(text: str) -> date | datetime:
    """--start/--end: a date (YYYY-MM-DD: midnight in the --exchange's zone) or an ISO 8601 instant
    (without a zone: UTC), from 1900 to 2200. An instant comes back UTC-aware."""
    t = text.strip()
    try:
        if _DATE.match(t):
            day = date.fromisoformat(t)
            if not AT_RANGE_UTC[0].date() <= day < AT_RANGE_UTC[1].date():
                raise argparse.ArgumentTypeError(f"must be from 1900 to 2200: {text!r}")
            return day
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD) or an ISO 8601 instant: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # an instant without a zone is UTC
    try:
        at = dt.astimezone(UTC)
    except OverflowError:
        at = None
    if at is None or not AT_RANGE_UTC[0] <= at < AT_RANGE_UTC[1]:
        raise argparse.ArgumentTypeError(f"must be from 1900 to 2200: {text!r}")
    return at


def _png(text: str) -> str:
    if not text.lower().endswith(".png") or len(text) <= 4:
        raise argparse.ArgumentTypeError(f"must name a .png file: {text!r}")
    return text


def _job_name(text: str) -> str:
    try:
        return check_job_name(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


POLL_MODES = ("continuous_poll", "market_hours_poll", "adaptive_poll")
HISTORY_MODES = ("backfill", "fill_gaps", "coverage")
SCHEDULE_KINDS = ("market", "pre_market", "after_hours")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="main.py",
        description="marketpoll: market-aware ETL of bars from REST APIs into PostgreSQL (or SQLite).",
        epilog="Settings come from the environment and .env (see .env.example). Exit status: 0 every cycle "
        "succeeded, 1 some cycle failed or was partial, 2 bad input, 3 database unavailable, 4 unexpected error.",
    )
    mode = p.add_argument_group("what to run (one of)").add_mutually_exclusive_group(required=True)
    mode.add_argument("--continuous-poll", action="store_true", help="poll every --poll-interval minutes, around the clock")
    mode.add_argument(
        "--market-hours-poll",
        action="store_true",
        help="poll every --poll-interval minutes inside --sessions of --exchange only; sleep until the next open",
    )
    mode.add_argument(
        "--adaptive-poll", action="store_true", help="poll at an interval that follows new data, the session and throttling"
    )
    mode.add_argument("--market-status", action="store_true", help="print the session of --exchange at --at as JSON")
    mode.add_argument(
        "--schedule-market-job",
        type=_job_name,
        metavar="NAME",
        help="create or replace a named job in the regular session (NAME: 1-100 characters, no spaces or control characters)",
    )
    mode.add_argument("--schedule-pre-market-job", type=_job_name, metavar="NAME", help="... in the pre-market session")
    mode.add_argument("--schedule-after-hours-job", type=_job_name, metavar="NAME", help="... in the after-hours session")
    mode.add_argument(
        "--show-scheduled-jobs",
        action="store_true",
        help="list named jobs: session, exchange, symbols, interval, next run, last run status",
    )
    mode.add_argument("--remove-job", type=_job_name, metavar="NAME", help="delete a named job")
    mode.add_argument(
        "--stream",
        action="store_true",
        help="poll every --stream-interval minutes; runs in the foreground until SIGINT/SIGTERM or --stop-streaming "
        "from another shell, publishing its state for --streaming-status",
    )
    mode.add_argument(
        "--streaming-status",
        action="store_true",
        help="print the streaming process's state as JSON, from any directory (state file: STREAM_STATE_FILE, "
        "default $XDG_STATE_HOME/marketpoll/stream.json or ~/.local/state/marketpoll/stream.json)",
    )
    mode.add_argument(
        "--stop-streaming",
        action="store_true",
        help="stop the streaming process gracefully (SIGTERM, then wait), from any directory",
    )
    mode.add_argument(
        "--install-service",
        action="store_true",
        help="write a systemd unit that runs --run-scheduled-jobs from this checkout (see --user, --dry-run)",
    )
    mode.add_argument(
        "--run-scheduled-jobs",
        action="store_true",
        help="run the named jobs in the foreground until SIGINT/SIGTERM (picks up changes within seconds)",
    )
    mode.add_argument(
        "--worker",
        action="store_true",
        help="a fetch-only cluster node: run the chunks that --cluster nodes queue, no scheduler (PostgreSQL only; "
        "--workers chunks at once)",
    )
    mode.add_argument(
        "--show-cluster",
        action="store_true",
        help="print the cluster's nodes, last seen, chunks in flight and queue depths as JSON",
    )
    mode.add_argument(
        "--backfill",
        action="store_true",
        help="load the history of --symbols over [--start, --end) in the provider's API-sized chunks; resumable "
        "(a rerun continues where a stop or crash left it); prints a JSON summary",
    )
    mode.add_argument(
        "--fill-gaps",
        action="store_true",
        help="backfill exactly the bars the coverage report finds missing in --sessions of --exchange, session dates "
        "from --start up to --end (excluded)",
    )
    mode.add_argument(
        "--coverage",
        action="store_true",
        help="report, per symbol and session date from --start up to --end (excluded), the bars expected in --sessions "
        "of --exchange vs loaded (--format)",
    )

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
    src.add_argument("--adjusted", action="store_true", default=None,
                     help="Alpha Vantage daily bars from TIME_SERIES_DAILY_ADJUSTED (a premium function): adjusted "
                     "close into bars.adj_close, dividends and splits into corporate_actions "
                     "(default: ALPHA_VANTAGE_ADJUSTED or off)")  # fmt: skip
    src.add_argument(
        "--fallback-provider",
        choices=provider_names(),
        default=None,
        help="polling: a provider that fetches a symbol the --provider fails terminally (unknown symbol, bad reply) "
        "or cannot serve (paused on its daily quota); rows land under the provider that served them",
    )
    src.add_argument(
        "--include-partial-bars",
        action="store_true",
        help="also load the bar still forming at fetch time (a later fetch overwrites it; default: INCLUDE_PARTIAL_BARS or off)",
    )

    poll = p.add_argument_group("polling")
    poll.add_argument(
        "--poll-interval",
        type=_minutes,
        default=5.0,
        metavar="MINUTES",
        help="minutes between poll starts; fractions allowed, e.g. 0.5; 0.001 (60 ms) to 10080 (default: 5)",
    )
    poll.add_argument(
        "--poll-max-iterations",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N cycles (default: run until SIGINT/SIGTERM)",
    )
    poll.add_argument(
        "--exchange",
        type=_exchange,
        default="XNYS",
        help="market calendar: XNYS, XNAS, XWAR, XNSE, 24/7 (crypto) or another pandas_market_calendars code (default: XNYS)",
    )
    poll.add_argument(
        "--sessions",
        nargs="+",
        choices=("pre", "regular", "post"),
        default=None,
        metavar="SESSION",
        help="sessions to poll in: pre regular post (default: regular; adaptive: all three)",
    )
    poll.add_argument(
        "--min-poll-interval",
        type=_minutes,
        default=None,
        metavar="MINUTES",
        help="adaptive: shortest interval (default: a quarter of --poll-interval)",
    )
    poll.add_argument(
        "--max-poll-interval",
        type=_minutes,
        default=None,
        metavar="MINUTES",
        help="adaptive: longest interval (default: 8 x --poll-interval)",
    )
    poll.add_argument(
        "--rate-limit",
        nargs="+",
        default=None,
        metavar="N/UNIT",
        help="request budget of the provider's API key, e.g. 75/minute or 1/second 25/day; unit second, "
        "minute or day (default: ALPHA_VANTAGE_RATE_LIMIT, the free tier 1/second 25/day; demo: DEMO_RATE_LIMIT, none); "
        "with --install-service, written into the unit",
    )
    poll.add_argument(
        "--batch-size",
        type=_positive_int,
        default=10,
        metavar="N",
        help="at most N symbols written per load transaction (default: 10)",
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
    poll.add_argument(
        "--job-name", type=_job_name, default=None, help="etl_runs.job_name for these cycles (default: <strategy>_polling)"
    )

    hist = p.add_argument_group("history (--backfill, --fill-gaps, --coverage)")
    hist.add_argument(
        "--start",
        type=_when,
        default=None,
        metavar="WHEN",
        help="first instant of the window: a date (YYYY-MM-DD, midnight in the --exchange's zone) or an ISO 8601 "
        "instant (no zone: UTC), e.g. 2024-03-01 or 2024-03-01T13:30:00Z",
    )
    hist.add_argument(
        "--end", type=_when, default=None, metavar="WHEN", help="end of the window, excluded; as --start (after it)"
    )
    hist.add_argument(
        "--refetch", action="store_true", help="--backfill: fetch again the chunks already loaded (default: skip them)"
    )
    hist.add_argument(
        "--recount", action="store_true",
        help="--coverage, --fill-gaps: count again the days found complete before (bars deleted by hand since); "
        "by default a complete day is not read again",
    )  # fmt: skip
    hist.add_argument(
        "--format", choices=("table", "json"), default=None, help="--coverage: the report's format (default: table)"
    )
    hist.add_argument(
        "--coverage-plot", type=_png, default=None, metavar="FILE.png", help="--coverage: also draw the heatmap into FILE.png"
    )

    stream = p.add_argument_group("streaming")
    stream.add_argument(
        "--stream-interval",
        type=_minutes,
        default=None,
        metavar="MINUTES",
        help="--stream: minutes between polls (default: --poll-interval)",
    )
    stream.add_argument(
        "--stream-max-iterations",
        type=_positive_int,
        default=None,
        metavar="N",
        help="--stream: stop after N cycles (default: until stopped)",
    )

    jobs = p.add_argument_group("named jobs and market status")
    jobs.add_argument("--job-symbols", nargs="+", type=_symbol, default=None, metavar="SYMBOL", help="the job's tickers")
    jobs.add_argument("--job-fallback-provider", choices=provider_names(), default=None, metavar="NAME",
                      help="the job's fallback provider (see --fallback-provider)")  # fmt: skip
    jobs.add_argument(
        "--job-interval",
        type=_job_minutes,
        default=None,
        metavar="MINUTES",
        help="minutes between the job's runs, counted from the session open; from 0.0167 (1 second) to 1440 (a day)",
    )
    jobs.add_argument(
        "--at",
        type=_instant,
        default=None,
        metavar="ISO8601",
        help="--market-status at this instant, with a zone, from 1900 to 2200: 2024-03-11T13:00:00Z (default: now)",
    )

    svc = p.add_argument_group("service and API (--api-port: any long-running mode)")
    svc.add_argument(
        "--api-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve the API on this port in any long-running mode: GET /health /status /metrics /events, WS /ws, "
        "the dashboard at / (and job control with a token)",
    )
    svc.add_argument("--api-host", default="127.0.0.1", metavar="HOST", help="address the API binds to (default: 127.0.0.1)")
    svc.add_argument(
        "--api-token",
        default=None,
        metavar="TOKEN",
        help="enables POST /jobs/NAME/pause|resume|run for requests bearing it; prefer MARKETPOLL_API_TOKEN (a flag shows in ps)",
    )
    svc.add_argument(
        "--cluster",
        action="store_true",
        help="--run-scheduled-jobs as one node of a cluster on a shared PostgreSQL: each slot claimed by one node, its "
        "symbols spread in chunks over every node's workers (also --install-service)",
    )
    svc.add_argument(
        "--stalled-after",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="--cluster/--worker: a node whose workers sent no heartbeat for this long is dead and its chunks are "
        "retried elsewhere (default: 30)",
    )
    svc.add_argument("--user", action="store_true", help="--install-service: a user unit (~/.config/systemd/user)")
    svc.add_argument(
        "--dry-run",
        action="store_true",
        help="--install-service: print the unit (and the database it will use) instead of writing it",
    )

    # alerts (alerts/): rules in alert_rules, evaluated by the polling modes, --stream and --run-scheduled-jobs
    from alerts.base import MAX_STALE_MINUTES, MIN_STALE_MINUTES, check_alert_name, check_email, check_webhook
    from alerts.grammar import parse_condition

    def checked(fn):  # an alerts/ ConfigError as argparse's one-line error
        def conv(text: str):
            try:
                return fn(text)
            except ConfigError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return conv

    mode.add_argument("--add-alert", type=checked(check_alert_name), metavar="NAME",
                      help="create or replace an alert rule: one of --condition, --stale or --error-rate, and --webhook "
                      "and/or --email")  # fmt: skip
    mode.add_argument("--show-alerts", action="store_true", help="list alert rules and their last firing as JSON "
                      "(webhooks redacted)")  # fmt: skip
    mode.add_argument("--remove-alert", type=checked(check_alert_name), metavar="NAME", help="delete an alert rule")
    alert = p.add_argument_group("alerts (with --add-alert)")
    alert.add_argument("--condition", type=checked(lambda t: parse_condition(t) and t), metavar='"SYMBOL FIELD OP NUMBER"',
                       help="e.g. \"TSLA close > 800\"; fields open high low close volume change_percent (vs 24 h "
                       "earlier; daily bars: the previous session); ops > >= < <= crosses_above crosses_below")  # fmt: skip
    alert.add_argument("--stale", default=None, metavar="JOB_OR_SYMBOL",
                       help="alert when no new bar arrives for --after minutes while the session is open: a named job's "
                       "session, or a symbol's --sessions of --exchange")  # fmt: skip
    stale_minutes = _number(float, "a number of minutes", lambda v: MIN_STALE_MINUTES <= v <= MAX_STALE_MINUTES,
                            f"from {MIN_STALE_MINUTES:g} to {MAX_STALE_MINUTES:g} minutes")  # fmt: skip
    alert.add_argument("--after", type=stale_minutes, default=None, metavar="MINUTES",
                       help="--stale: minutes without a new bar")  # fmt: skip
    alert.add_argument("--error-rate", type=_job_name, default=None, metavar="JOB",
                       help="alert when the failed share of JOB's last 20 cycles (of the last 24 h) is above "
                       "--above")  # fmt: skip
    alert.add_argument("--above", type=_number(float, "a share", lambda v: 0 <= v < 1, "a share from 0 to 1, e.g. 0.2"),
                       default=None, metavar="SHARE", help="--error-rate: the failed share that fires, e.g. 0.2")  # fmt: skip
    alert.add_argument("--webhook", type=checked(check_webhook), default=None, metavar="URL",
                       help="POST the alert as JSON with a Slack-compatible text field (a secret: shown redacted)")  # fmt: skip
    alert.add_argument("--email", nargs="+", type=checked(check_email), default=None, metavar="ADDRESS",
                       help="email the alert through SMTP_URL (from ALERT_EMAIL_FROM)")  # fmt: skip

    misc = p.add_argument_group("misc")
    misc.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long in-flight symbol batches may take to finish (default: 30)",
    )
    misc.add_argument("--database-url", default=None, help="overrides DATABASE_URL (default: sqlite:///marketpoll.db)")
    misc.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=None,
                      help="DEBUG adds one line per provider request (default: LOG_LEVEL or INFO)")  # fmt: skip
    misc.add_argument("--log-format", choices=("text", "json"), default=None,
                      help="json: one JSON object per line, for journald and log shippers (default: LOG_FORMAT)")  # fmt: skip
    return p


def provider_options(args: argparse.Namespace) -> dict[str, object]:
    """The provider options given on the command line (``--outputsize full`` -> ``{"outputsize": "full"}``).

    The chosen provider declares which it has (see its ``Config``); one it lacks is an error there.
    """
    given = {"outputsize": args.outputsize, "datatype": args.datatype, "month": args.month,
             "extended_hours": False if args.no_extended_hours else None, "adjusted": args.adjusted}  # fmt: skip
    return {k: v for k, v in given.items() if v is not None}


def _check_history(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The history modes' required flags; flags of one mode given to another are refused, not ignored."""
    history = next((m for m in HISTORY_MODES if getattr(args, m)), None)
    flag = f"--{(history or '').replace('_', '-')}"
    if history:
        if not args.symbols:
            parser.error("argument --symbols: at least one symbol is required")
        for name in ("start", "end"):
            value = getattr(args, name)
            if value is None:
                parser.error(f"argument --{name}: required with {flag}")
            if history != "backfill" and isinstance(value, datetime):
                parser.error(f"argument --{name}: {flag} takes a date (YYYY-MM-DD), not an instant: {value.isoformat()}")
        if type(args.start) is type(args.end) and args.end <= args.start:
            parser.error(f"argument --end: must be after --start ({args.start.isoformat()}): {args.end.isoformat()}")
    elif args.start is not None or args.end is not None:
        name = "start" if args.start is not None else "end"
        parser.error(f"argument --{name}: only with --backfill, --fill-gaps or --coverage")
    if args.refetch and not args.backfill:
        parser.error("argument --refetch: only with --backfill")
    if args.recount and not (args.coverage or args.fill_gaps):
        parser.error("argument --recount: only with --coverage or --fill-gaps")
    for name, value in (("format", args.format), ("coverage-plot", args.coverage_plot)):
        if value is not None and not args.coverage:
            parser.error(f"argument --{name}: only with --coverage")


def _unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A misspelt flag is named (argparse would first say a mode is required when the misspelt one was the mode)."""
    known = parser._option_string_actions  # noqa: SLF001 - argparse keeps its option strings only here
    bad = []
    for token in argv:
        if token == "--":
            break
        flag = token.split("=", 1)[0]
        if flag.startswith("--") and flag not in known and sum(k.startswith(flag) for k in known) != 1:
            bad.append(flag)  # neither a flag nor the unique abbreviation of one (argparse accepts those)
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (python main.py --help lists every flag)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    _unknown_flags(parser, sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    polling = any(getattr(args, m) for m in POLL_MODES) or args.stream
    if polling and not args.symbols:
        parser.error("argument --symbols: at least one symbol is required")
    scheduling = next((k for k in SCHEDULE_KINDS if getattr(args, f"schedule_{k}_job") is not None), None)
    if scheduling and not (args.job_symbols or args.symbols):
        parser.error("argument --job-symbols: at least one symbol is required")
    if scheduling and args.job_interval is None:
        parser.error("argument --job-interval: required to schedule a job")
    if args.sessions is None:
        args.sessions = ["pre", "regular", "post"] if args.adaptive_poll else ["regular"]
    args.schedule_kind = scheduling
    _check_history(parser, args)
    from alerts.commands import check_args as check_alert_args  # alerts: which flags go together

    if (alert_misuse := check_alert_args(args)) is not None:
        parser.error(alert_misuse)
    if args.rate_limit is not None:
        from etl.ratelimit import parse_rates

        try:
            rates = parse_rates(args.rate_limit)
        except ConfigError as exc:
            parser.error(f"argument --rate-limit: {exc}")
        if not rates:
            parser.error("argument --rate-limit: empty (give N/second, N/minute or N/day, e.g. 75/minute)")
    if args.max_retries < 0:
        parser.error(f"argument --max-retries: must be >= 0: {args.max_retries}")
    if args.api_port is not None and not (polling or args.run_scheduled_jobs or args.install_service):
        parser.error("argument --api-port: only with a long-running mode (--continuous-poll, --market-hours-poll, "
                     "--adaptive-poll, --stream, --run-scheduled-jobs) or --install-service")  # fmt: skip
    if args.cluster and not (args.run_scheduled_jobs or args.install_service):
        parser.error("argument --cluster: only with --run-scheduled-jobs or --install-service")
    if args.adjusted and args.interval != "1day":
        parser.error(f"argument --adjusted: daily bars only (--interval 1day), not {args.interval}")
    return args


if __name__ == "__main__":  # pragma: no cover
    sys.exit(build_parser().print_help())
