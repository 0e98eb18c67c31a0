"""The commands behind main.py's flags, over lazily wired parts (engine, providers, pipelines).

Each command returns an exit status; errors are left to main.py to map.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

import cli
from clock import Clock, SystemClock
from db import RunLedger, describe_url, make_engine, upgrade
from db.jobs import JobStore
from db.quota import QuotaStore
from errors import ConfigError, MarketpollError
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers import Provider, get_provider_class
from etl.ratelimit import budget_for, parse_rates
from etl.redact import Redactor
from scheduler.api import ServiceApi
from scheduler.calendar import CalendarOverrides, Calendars
from scheduler.jobs import JOB_SESSIONS, MarketScheduler
from scheduler.polling import PollingConfig, PollingManager
from scheduler.streaming import DataStreamingService
from scheduler.systemd import Notifier, unit_file, unit_path
from settings import Settings

__all__ = ["App"]

log = logging.getLogger("marketpoll")


@dataclass
class App:
    """Wiring shared by the commands. Build with validated settings; ``close`` releases everything."""

    settings: Settings
    redactor: Redactor
    stop: threading.Event
    workers: int = 4
    rate_limit: list[str] | None = None  # --rate-limit: overrides the provider's configured budget
    shutdown_timeout_seconds: float = 30.0  # how long a cycle waits for in-flight fetches after a signal
    clock: Clock = field(default_factory=SystemClock)
    _engine: sa.Engine | None = None
    _providers: dict[str, Provider] = field(default_factory=dict)
    _pipelines: dict[str, EtlPipeline] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    notifier: Notifier = field(default_factory=lambda: Notifier(None))

    def __post_init__(self) -> None:
        self.calendars = Calendars(CalendarOverrides.load(self.settings.market_calendar_file))

    @property
    def engine(self) -> sa.Engine:
        """The database, migrated to the newest schema on first use (raises LoadError if unreachable)."""
        if self._engine is None:
            engine = make_engine(self.settings.database_url)
            upgrade(engine)
            self._engine = engine
        return self._engine

    def provider(self, name: str) -> Provider:
        with self._lock:
            if name not in self._providers:
                provider = get_provider_class(name).from_settings(self.settings)
                for secret in provider.secrets():
                    self.redactor.add(secret)
                rates = parse_rates(self.rate_limit or self.settings.rate_limit_for(name))
                if rates:
                    quota = QuotaStore(self.engine) if any(r.unit == "day" for r in rates) else None
                    provider.budget = budget_for(name, provider.api_key(), rates, quota=quota, clock=self.clock, stop=self.stop)
                    log.info("%s rate budget: %s", name, " ".join(map(str, rates)))
                self._providers[name] = provider
            return self._providers[name]

    def pipeline(self, provider_name: str) -> EtlPipeline:
        provider = self.provider(provider_name)
        with self._lock:
            if provider_name not in self._pipelines:
                self._pipelines[provider_name] = EtlPipeline(
                    provider, make_loader(self.engine), RunLedger(self.engine, self.redactor),
                    clock=self.clock, redact=self.redactor, stop=self.stop, workers=self.workers,
                    shutdown_timeout_seconds=self.shutdown_timeout_seconds,
                )  # fmt: skip
            return self._pipelines[provider_name]

    def scheduler(self) -> MarketScheduler:
        return MarketScheduler(JobStore(self.engine), self.pipeline, calendars=self.calendars, clock=self.clock)

    def close(self) -> None:
        for p in self._providers.values():
            p.close()
        if self._engine is not None:
            self._engine.dispose()

    # -- commands ------------------------------------------------------------------------

    def polling_config(self, args, **overrides) -> PollingConfig:
        values = dict(
            interval_minutes=args.poll_interval,
            max_iterations=args.poll_max_iterations,
            symbols=tuple(dict.fromkeys(args.symbols)),
            interval=args.interval,
            batch_size=args.batch_size,
            retry_on_failure=not args.no_retry,
            max_retries=args.max_retries,
            exchange=args.exchange,
            sessions=tuple(args.sessions),
            min_interval_minutes=args.min_poll_interval,
            max_interval_minutes=args.max_poll_interval,
            job_name=args.job_name,
        )
        return PollingConfig(**{**values, **overrides})

    def poll(self, args) -> int:
        strategy = "continuous" if args.continuous_poll else "market_hours" if args.market_hours_poll else "adaptive"
        config = self.polling_config(args)
        if strategy != "continuous":
            self.calendars.get(config.exchange)  # an unknown exchange is bad input: fail before any work
        self.check_interval(args.provider, args.interval)
        pipeline = self.pipeline(args.provider)
        log.info("%s polling %s from %s into %s", strategy, " ".join(config.symbols), args.provider,
                 describe_url(self.settings.database_url))  # fmt: skip
        manager = PollingManager(pipeline, calendars=self.calendars, clock=self.clock, stop=self.stop)
        results = getattr(manager, f"{strategy}_polling")(config)
        print(json.dumps(results, indent=2))
        for f in results["failures"]:
            where = f"symbol {f['symbol']}" if f["symbol"] else "cycle"
            print(f"main.py: cycle {f['cycle']}: {where} failed: {f['error']}", file=sys.stderr)
        # a graceful stop is not a failure: what the interrupted cycle left undone, the next run completes
        failed = [f for f in results["failures"] if f["cycle_status"] != "interrupted"]
        return cli.EXIT_CYCLE_FAILED if failed else cli.EXIT_OK

    def stream(self, args) -> int:
        """--stream: continuous polling in a background thread, published through the state file."""
        config = self.polling_config(
            args, interval_minutes=args.stream_interval or args.poll_interval, max_iterations=args.stream_max_iterations,
            job_name=args.job_name or "streaming",
        )  # fmt: skip
        self.check_interval(args.provider, args.interval)
        state = Path(self.settings.stream_state_file).resolve()
        if DataStreamingService.status(state)["is_running"]:
            raise ConfigError(f"a streaming process is already running (see {state}); stop it with --stop-streaming")
        manager = PollingManager(self.pipeline(args.provider), calendars=self.calendars, clock=self.clock, stop=self.stop)
        service = DataStreamingService(manager, state, clock=self.clock)
        service.start_streaming(config)
        self.notifier.ready("streaming")
        log.info("streaming %s every %g min (state in %s)", " ".join(config.symbols), config.interval_minutes, state)
        results = service.wait(tick=self.notifier.watchdog)
        print(json.dumps(results, indent=2))
        failed = [f for f in (results or {}).get("failures", []) if f["cycle_status"] != "interrupted"]
        return cli.EXIT_CYCLE_FAILED if failed or results is None else cli.EXIT_OK

    def streaming_status(self) -> int:
        print(json.dumps(DataStreamingService.status(Path(self.settings.stream_state_file).resolve()), indent=2))
        return cli.EXIT_OK

    def stop_streaming(self, timeout_seconds: float) -> int:
        stopped, message = DataStreamingService.stop(Path(self.settings.stream_state_file).resolve(), timeout_seconds)
        print(message)
        return cli.EXIT_OK if stopped or message.startswith("no streaming") else cli.EXIT_CYCLE_FAILED

    def check_interval(self, provider: str, interval: str) -> None:
        if interval not in get_provider_class(provider).intervals:
            raise ConfigError(f"provider {provider} has no interval {interval}", name="interval", value=interval)

    def market_status(self, args) -> int:
        at = args.at or self.clock.now()
        print(json.dumps(self.calendars.get(args.exchange).status(at).as_dict(), indent=2))
        return cli.EXIT_OK

    def schedule(self, args, kind: str) -> int:
        name = getattr(args, f"schedule_{kind}_job")
        symbols = args.job_symbols or args.symbols
        self.check_interval(args.provider, args.interval)  # also rejects an unknown provider
        replaced = self.scheduler().schedule_job(
            name, JOB_SESSIONS[kind], symbols or (), args.job_interval,
            exchange=args.exchange, provider=args.provider, bar_interval=args.interval,
        )  # fmt: skip
        verb = "replaced existing job" if replaced else "scheduled new job"
        print(f"{verb} {name!r}: {JOB_SESSIONS[kind].value} session of {args.exchange}, every {args.job_interval:g} min")
        return cli.EXIT_OK

    def show_jobs(self) -> int:
        print(json.dumps(self.scheduler().get_scheduled_jobs(), indent=2))
        return cli.EXIT_OK

    def remove_job(self, name: str) -> int:
        if self.scheduler().remove_job(name):
            print(f"removed job {name!r}")
            return cli.EXIT_OK
        print(f"main.py: error: no job named {name!r}", file=sys.stderr)
        return cli.EXIT_USAGE

    def run_jobs(self, api_host: str = "127.0.0.1", api_port: int | None = None, api_token: str | None = None) -> int:
        """Run named jobs until a signal; optionally serve the API; tell systemd how it goes."""
        scheduler = self.scheduler()
        api = None
        if api_port is not None:
            api = ServiceApi(scheduler, host=api_host, port=api_port, token=api_token, clock=self.clock, budgets=self.budgets)
        notifier = self.notifier
        ticks = {"ready": False}

        def tick() -> None:  # every sync (about 2 s): the loop is alive
            if not ticks["ready"]:
                notifier.ready(f"running {len(scheduler.loaded_jobs())} job(s)")
                ticks["ready"] = True
            notifier.watchdog()

        try:
            scheduler.run(self.stop, on_tick=tick)
        finally:
            if api is not None:
                api.close()
        return cli.EXIT_OK

    def install_service(self, args) -> int:
        """Write (or with --dry-run print) the systemd unit for this checkout and interpreter."""
        checkout = Path(__file__).resolve().parent
        svc_args = ["--run-scheduled-jobs", "--shutdown-timeout", f"{args.shutdown_timeout:g}"]
        if args.api_port is not None:
            svc_args += ["--api-port", str(args.api_port), "--api-host", args.api_host]
        text = unit_file(checkout=checkout, args=svc_args, shutdown_timeout_seconds=args.shutdown_timeout, user=args.user)
        if args.dry_run:
            print(text, end="")
            return cli.EXIT_OK
        path = unit_path(args.user)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        ctl = "systemctl --user" if args.user else "systemctl"
        logs = "journalctl --user-unit marketpoll -f" if args.user else "journalctl -u marketpoll -f"
        print(f"wrote {path}\nnext: {ctl} daemon-reload && {ctl} enable --now marketpoll\n      {ctl} status marketpoll; {logs}")
        return cli.EXIT_OK

    def budgets(self) -> dict:
        """Rate budget left per provider (requests left today; None without a daily quota)."""
        out = {}
        for name, p in list(self._providers.items()):
            if p.budget is not None:
                try:
                    left = p.budget.remaining_today()
                except MarketpollError:
                    left = None
                paused = p.budget.exhausted_until()
                out[name] = {"rates": [str(r) for r in p.budget.rates], "remaining_today": left,
                             "paused_until": paused.isoformat() if paused else None}  # fmt: skip
        return out
