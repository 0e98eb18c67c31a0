"""marketpoll's entry point: parse, configure, wire, run, map errors to exit codes.

python main.py --continuous-poll --symbols IBM MSFT --poll-interval 0.1 --poll-max-iterations 3
python main.py --market-status --exchange XNYS --at 2024-03-11T13:00:00Z
python main.py --schedule-market-job daily --job-symbols AAPL MSFT --job-interval 5
python main.py --run-scheduled-jobs
python main.py --backfill --provider alphavantage --symbols IBM --interval 5min --start 2024-01-01 --end 2024-04-01
"""

from __future__ import annotations

import signal
import threading

#: Set by the first SIGINT/SIGTERM. Installed before the heavy imports below, so a signal that
#: arrives while marketpoll is still starting up is a graceful stop (exit 0), not a kill (143).
STOP = threading.Event()
if __name__ == "__main__":
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, lambda _signum, _frame: STOP.set())

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from dotenv import load_dotenv  # noqa: E402

import cli  # noqa: E402
from app import App  # noqa: E402
from db import describe_url  # noqa: E402
from errors import ConfigError, LoadError, SchedulingError  # noqa: E402
from etl.redact import Redactor  # noqa: E402
from logs import configure_logging  # noqa: E402
from scheduler import install_signal_handlers  # noqa: E402
from scheduler.shutdown import exit_now_if_threads_linger, pipeline_deadline_seconds  # noqa: E402
from scheduler.systemd import Notifier  # noqa: E402
from settings import Settings  # noqa: E402

log = logging.getLogger("marketpoll")


def dispatch(app: App, args) -> int:
    if any(getattr(args, m) for m in cli.POLL_MODES):
        return app.poll(args)
    if args.stream:
        return app.stream(args)
    if args.streaming_status:
        return app.streaming_status()
    if args.stop_streaming:
        return app.stop_streaming(args.shutdown_timeout + 5)
    if args.market_status:
        return app.market_status(args)
    if args.schedule_kind:
        return app.schedule(args, args.schedule_kind)
    if args.add_alert or args.show_alerts or args.remove_alert:
        return app.alerts(args)
    if args.show_scheduled_jobs:
        return app.show_jobs()
    if args.remove_job:
        return app.remove_job(args.remove_job)
    if args.install_service:
        return app.install_service(args)
    if args.backfill:
        return app.backfill(args)
    if args.fill_gaps:
        return app.fill_gaps(args)
    if args.coverage:
        return app.coverage(args)
    if args.show_cluster:
        return app.show_cluster()
    if args.worker:
        return app.run_worker(stalled_after_seconds=args.stalled_after)
    return app.run_jobs(args.api_host, args.api_port, args.api_token or app.settings.marketpoll_api_token,
                        cluster=args.cluster, stalled_after_seconds=args.stalled_after)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv)
    # .env of the working directory only (a parent directory's is never read); real env vars win
    load_dotenv(os.path.join(os.getcwd(), ".env"))
    try:
        settings = Settings.from_env(
            os.environ,
            database_url=args.database_url,
            log_level=args.log_level,
            log_format=args.log_format,
            include_partial_bars=True if args.include_partial_bars else None,
            provider_options=cli.provider_options(args),
        )
    except ConfigError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE
    redactor = Redactor([*settings.secrets(), args.api_token])
    configure_logging(settings.log_level, redactor, settings.log_format)
    stop = STOP
    notifier = Notifier(os.environ.get("NOTIFY_SOCKET"), os.environ.get("WATCHDOG_USEC"))
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers(stop, shutdown_timeout_seconds=args.shutdown_timeout, on_stop=notifier.stopping)
    if stop.is_set():
        log.warning("stopped by a signal during start-up: nothing was started")
        return cli.EXIT_OK
    app = None
    code = cli.EXIT_INTERNAL
    try:
        app = App(settings, redactor, stop, workers=args.workers, rate_limit=args.rate_limit,
                  retry_passes=0 if args.no_retry else args.max_retries, batch_size=args.batch_size,
                  shutdown_timeout_seconds=pipeline_deadline_seconds(args.shutdown_timeout), notifier=notifier)  # fmt: skip
        if args.cluster or args.worker:  # every node takes from one rate budget per API key (etl/ratelimit.py)
            app.shared_rate_limits = True
        code = dispatch(app, args)
    except (ConfigError, SchedulingError) as exc:
        print(f"main.py: error: {redactor(str(exc))}", file=sys.stderr)
        code = cli.EXIT_USAGE
    except LoadError as exc:
        log.error("database %s unavailable: %s", describe_url(settings.database_url), redactor(str(exc)))
        code = cli.EXIT_UNAVAILABLE
    except BrokenPipeError:  # `main.py --show-scheduled-jobs | head`: the reader has gone, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = cli.EXIT_OK
    except Exception:  # a bug: say so with the (redacted) traceback, never as "bad input"
        log.exception("unexpected error")
        code = cli.EXIT_INTERNAL
    finally:
        if app is not None:
            app.close()
        if stop.is_set():
            exit_now_if_threads_linger(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
