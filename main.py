"""marketpoll's entry point: parse, configure, wire, run, map errors to exit codes.

python main.py --continuous-poll --symbols IBM MSFT --poll-interval 0.1 --poll-max-iterations 3
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading

from dotenv import find_dotenv, load_dotenv

import cli
from db import RunLedger, describe_url, make_engine, upgrade
from errors import ConfigError, LoadError
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers import get_provider_class
from etl.redact import RedactingFormatter, Redactor
from scheduler import PollingConfig, PollingManager, install_signal_handlers
from settings import Settings

log = logging.getLogger("marketpoll")


def configure_logging(level: str, redactor: Redactor) -> None:
    """One stderr handler; every line (tracebacks included) goes through the redactor."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(argv)
    load_dotenv(find_dotenv(usecwd=True))  # .env in the working directory or above; real env vars win
    try:
        settings = Settings.from_env(
            os.environ,
            database_url=args.database_url,
            log_level=args.log_level,
            alpha_vantage_outputsize=args.outputsize,
            alpha_vantage_datatype=args.datatype,
            alpha_vantage_month=args.month,
            alpha_vantage_extended_hours=False if args.no_extended_hours else None,
        )
        config = PollingConfig(
            interval_minutes=args.poll_interval,
            max_iterations=args.poll_max_iterations,
            symbols=tuple(dict.fromkeys(args.symbols)),
            interval=args.interval,
            retry_on_failure=not args.no_retry,
            max_retries=args.max_retries,
            job_name=args.job_name,
        )
        provider_cls = get_provider_class(args.provider)
        if args.interval not in provider_cls.intervals:
            raise ConfigError(f"provider {args.provider} has no interval {args.interval}", name="interval")
    except ConfigError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE

    redactor = Redactor([settings.alpha_vantage_api_key])
    configure_logging(settings.log_level, redactor)
    stop = threading.Event()
    install_signal_handlers(stop)

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    except LoadError as exc:
        log.error("database %s unavailable: %s", describe_url(settings.database_url), redactor(str(exc)))
        return cli.EXIT_UNAVAILABLE

    try:
        provider = provider_cls.from_settings(settings)
    except ConfigError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE
    for secret in provider.secrets():
        redactor.add(secret)

    log.info("polling %s from %s into %s", " ".join(config.symbols), provider.name, describe_url(settings.database_url))
    with provider:
        pipeline = EtlPipeline(
            provider, make_loader(engine), RunLedger(engine, redactor), redact=redactor, stop=stop, workers=args.workers
        )
        results = PollingManager(pipeline, stop=stop).continuous_polling(config)
    engine.dispose()

    print(json.dumps(results, indent=2))
    for f in results["failures"]:
        where = f"symbol {f['symbol']}" if f["symbol"] else "cycle"
        print(f"main.py: cycle {f['cycle']}: {where} failed: {f['error']}", file=sys.stderr)
    return cli.EXIT_CYCLE_FAILED if results["failures"] else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
