"""The commands behind main.py's flags, over lazily wired parts (engine, providers, pipelines).

Each command returns an exit status; errors are left to main.py to map.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import sqlalchemy as sa
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

import cli
from clock import Clock, SystemClock
from db import RunLedger, describe_url, make_engine, upgrade
from db.backfill import ChunkStore
from db.jobs import JobStore
from db.quota import QuotaStore
from errors import ConfigError, MarketpollError
from etl.events import PipelineListener
from etl.history import Backfill, Plan, make_progress
from etl.load import make_loader
from etl.pipeline import EtlPipeline
from etl.providers import Provider, get_provider_class
from etl.providers.base import provider_config
from etl.ratelimit import SharedWindows, budget_for, parse_rates
from etl.redact import Redactor
from reports.coverage_status import CoverageMonitor
from scheduler.calendar import EXCHANGES, CalendarOverrides, Calendars, Session, canonical_code
from scheduler.jobs import JOB_SESSIONS, MarketScheduler, define_job
from scheduler.polling import PollingConfig, PollingManager
from scheduler.streaming import DataStreamingService, pid_alive
from scheduler.systemd import Notifier, unit_file, unit_path
from settings import DEFAULT_DATABASE_URL, Settings, absolute_sqlite_url

__all__ = ["App", "same_database"]

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
    retry_passes: int = 3  # --max-retries: extra passes per cycle for transient failures (every route)
    batch_size: int = 10  # --batch-size: symbols per load transaction (every route)
    clock: Clock = field(default_factory=SystemClock)
    #: share each API key's per-second/minute windows with every process on this database (a cluster;
    #: PostgreSQL only, or Redis when RATE_LIMIT_REDIS_URL is set): see etl/ratelimit.py
    shared_rate_limits: bool = False
    #: told of every committed load and every cycle of every pipeline (alerts, live push), after metrics
    listeners: list[PipelineListener] = field(default_factory=list)
    #: each returns a dict merged into the API's ``GET /status`` (cluster nodes, coverage, ...)
    status_extras: list[Callable[[], dict]] = field(default_factory=list)
    _engine: sa.Engine | None = None
    _ledger: RunLedger | None = None
    _providers: dict[str, Provider] = field(default_factory=dict)
    _pipelines: dict[str, EtlPipeline] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _alerts: object | None = None  # the alert engine (alerts/service.py) of a long-running mode, once started
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    checkout: Path = field(default_factory=lambda: Path(__file__).resolve().parent)  # what --install-service runs

    @property
    def stream_state_file(self) -> Path:
        """Where --stream publishes its state (absolute: the same from any working directory)."""
        return Path(self.settings.stream_state_file).expanduser().resolve()

    def __post_init__(self) -> None:
        self.calendars = Calendars(CalendarOverrides.load(self.settings.market_calendar_file))
        # named jobs' recent coverage after each of their cycles: /metrics (missing bars) and /status (worst series)
        self.coverage_monitor = CoverageMonitor(lambda: self._coverage_ledger(required=True),
                                                lambda: JobStore(self.engine).all())  # fmt: skip
        self.listeners.append(self.coverage_monitor)
        self.status_extras.append(self.coverage_monitor.coverage_status)

    @property
    def engine(self) -> sa.Engine:
        """The database, migrated to the newest schema on first use (raises LoadError if unreachable)."""
        if self._engine is None:
            engine = make_engine(self.settings.database_url)
            upgrade(engine)
            self._engine = engine
            # rows left 'running' by processes of this host that died (kill -9, power loss) stop lying
            self.ledger.mark_abandoned(self.clock.now(), alive=pid_alive)
        return self._engine

    @property
    def ledger(self) -> RunLedger:
        """The one ``etl_runs`` ledger of the process (it keeps cycles the database missed while down)."""
        if self._ledger is None:
            self._ledger = RunLedger(self.engine if self._engine is None else self._engine, self.redactor)
        return self._ledger

    def provider(self, name: str) -> Provider:
        with self._lock:
            if name not in self._providers:
                provider = get_provider_class(name).from_settings(self.settings)
                for secret in provider.secrets():
                    self.redactor.add(secret)
                rates = parse_rates(self.rate_limit or provider.rate_limit())
                if rates:
                    quota = QuotaStore(self.engine) if any(r.unit == "day" for r in rates) else None
                    shared = self._shared_windows()
                    provider.budget = budget_for(name, provider.api_key(), rates, quota=quota, clock=self.clock, stop=self.stop,
                                                 shared=shared)  # fmt: skip
                    log.info("%s rate budget: %s%s", name, " ".join(map(str, rates)),
                             f" (shared by every process, in {provider.budget.backend})" if shared else "")  # fmt: skip
                self._providers[name] = provider
            return self._providers[name]

    def _shared_windows(self) -> SharedWindows | None:
        """Where rate windows are shared (``shared_rate_limits`` on PostgreSQL), else None: per process."""
        if not self.shared_rate_limits or not self.settings.database_url.startswith("postgresql"):
            return None
        return SharedWindows(self.settings.database_url, redis_url=self.settings.env.get("RATE_LIMIT_REDIS_URL") or None)

    def pipeline(self, provider_name: str, fallback_name: str | None = None) -> EtlPipeline:
        """The one cycle route for polling, streaming and named jobs (and backfill): provider (+ fallback)
        → validate → load, with the same retry passes and batch size everywhere."""
        provider = self.provider(provider_name)
        fallback = self.provider(fallback_name) if fallback_name else None
        if fallback is not None and fallback is provider:
            raise ConfigError(f"the fallback provider must differ from the provider ({provider_name})", name="fallback")
        key = f"{provider_name}+{fallback_name}" if fallback_name else provider_name
        with self._lock:
            if key not in self._pipelines:
                self._pipelines[key] = EtlPipeline(
                    provider, make_loader(self.engine), self.ledger,
                    clock=self.clock, redact=self.redactor, stop=self.stop, workers=self.workers,
                    shutdown_timeout_seconds=self.shutdown_timeout_seconds,
                    retry_attempts=self.settings.retry_max_attempts, retry_budget_seconds=self.settings.retry_budget_seconds,
                    retry_passes=self.retry_passes, batch_size=self.batch_size, fallback=fallback,
                    listeners=self.listeners,
                )  # fmt: skip
            return self._pipelines[key]

    def scheduler(self) -> MarketScheduler:
        return MarketScheduler(JobStore(self.engine), self.pipeline, calendars=self.calendars, clock=self.clock)

    def close(self) -> None:
        if self._alerts is not None:
            self._alerts.close()  # queued alert deliveries get a few seconds before the engine goes
        for p in self._providers.values():
            p.close()
        if self._engine is not None:
            self._engine.dispose()

    def start_alerts(self) -> None:
        """Long-running modes: evaluate the database's alert rules (alerts/) on every load and each minute
        (re-read each minute: a rule added while it runs counts). Before the first pipeline is built
        (pipelines copy ``listeners``). ConfigError for a bad SMTP_URL."""
        if self._alerts is None:
            from alerts import start_alerts

            self._alerts = start_alerts(self.engine, calendars=self.calendars, clock=self.clock, env=self.settings.env,
                                        redactor=self.redactor)  # fmt: skip
            self.listeners.append(self._alerts)

    def alerts(self, args) -> int:
        """--add-alert, --show-alerts, --remove-alert (alerts/commands.py)."""
        from alerts import commands

        return commands.run(self, args)

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
        if strategy != "continuous" or canonical_code(config.exchange) not in EXCHANGES:
            cal = self.calendars.get(config.exchange)  # an unknown exchange is bad input: fail before any work
            if strategy != "continuous":  # so are sessions the exchange does not have ("XWAR has no pre-market")
                cal.next_window(self.clock.now(), frozenset(Session(s) for s in config.sessions))
        self.check_provider(args.provider, args.interval)
        if args.fallback_provider:
            self.check_provider(args.fallback_provider, args.interval)
        live = self._polling_status(args, f"{strategy}_polling", config,
                                    exchange=None if strategy == "continuous" else config.exchange)  # fmt: skip
        api = self.start_api(live, args.api_host, args.api_port, args.api_token) if live is not None else None
        try:
            self.start_alerts()  # inside: a bad SMTP_URL still closes the API
            pipeline = self.pipeline(args.provider, args.fallback_provider)
            log.info("%s polling %s from %s into %s", strategy, " ".join(config.symbols), args.provider,
                     describe_url(self.settings.database_url))  # fmt: skip
            manager = PollingManager(pipeline, calendars=self.calendars, clock=self.clock, stop=self.stop)
            hooks = {"on_cycle": live.on_cycle, "on_wait": live.on_wait} if live is not None else {}
            results = getattr(manager, f"{strategy}_polling")(config, **hooks)
        finally:
            if api is not None:
                live.stopped()
                api.close()
        print(json.dumps(results, indent=2))
        for f in results["failures"]:
            where = f"symbol {f['symbol']}" if f["symbol"] else "cycle"
            print(f"main.py: cycle {f['cycle']}: {where} failed: {f['error']}", file=sys.stderr)
        # a graceful stop is not a failure: what the interrupted cycle left undone, the next run completes
        return cli.EXIT_CYCLE_FAILED if results["partial_or_failed_cycles"] else cli.EXIT_OK

    def stream(self, args) -> int:
        """--stream: continuous polling in a background thread, published through the state file."""
        config = self.polling_config(
            args, interval_minutes=args.stream_interval or args.poll_interval, max_iterations=args.stream_max_iterations,
            job_name=args.job_name or "streaming",
        )  # fmt: skip
        self.check_provider(args.provider, args.interval)
        state = self.stream_state_file
        if DataStreamingService.status(state)["is_running"]:
            raise ConfigError(f"a streaming process is already running (see {state}); stop it with --stop-streaming")
        live = self._polling_status(args, "streaming", config,
                                    next_poll_at=lambda: DataStreamingService.status(state)["next_cycle"])  # fmt: skip
        api = self.start_api(live, args.api_host, args.api_port, args.api_token) if live is not None else None
        if live is not None:
            self.listeners.append(live)  # its cycles (the loop's own hooks publish the state file)
        try:
            self.start_alerts()  # inside: a bad SMTP_URL still closes the API
            manager = PollingManager(self.pipeline(args.provider, args.fallback_provider), calendars=self.calendars,
                                     clock=self.clock, stop=self.stop)  # fmt: skip
            service = DataStreamingService(manager, state, clock=self.clock)
            service.start_streaming(config)
            self.notifier.ready("streaming")
            log.info("streaming %s every %g min into %s (state in %s)", " ".join(config.symbols), config.interval_minutes,
                     describe_url(self.settings.database_url), state)  # fmt: skip
            results = service.wait(tick=self.notifier.watchdog)
        finally:
            if api is not None:
                live.stopped()
                api.close()
        print(json.dumps(results, indent=2))
        failed = (results or {}).get("partial_or_failed_cycles", 0)
        return cli.EXIT_CYCLE_FAILED if failed or results is None else cli.EXIT_OK

    def start_api(self, source, host: str, port: int, token: str | None):
        """Serve the API (api/server.py) for ``source`` on ``host:port`` until its ``close()``.

        On SQLite the pipelines built from now on publish their loads to its hub (the in-process bus);
        on PostgreSQL it LISTENs. Raises ConfigError when the port is busy.
        """
        from api import ApiServer, HubListener
        from db.engine import is_postgres

        engine = self.engine
        api = ApiServer(source, engine=engine, clock=self.clock, host=host, port=port, token=token,
                        status_extras=self.status_extras, calendars=self.calendars)  # fmt: skip
        if not is_postgres(engine):
            self.listeners.append(HubListener(api.hub))
        return api

    def _polling_status(self, args, job: str, config: PollingConfig, **kw):
        """What the API reports for a polling run (None without --api-port); started now."""
        if args.api_port is None:
            return None
        from api.status import PollingStatus

        mode = next(f"--{m.replace('_', '-')}" for m in (*cli.POLL_MODES, "stream") if getattr(args, m))
        live = PollingStatus(mode=mode, job_name=config.job_name or job, provider=args.provider, symbols=config.symbols,
                             interval=config.interval, clock=self.clock, engine=self.engine, calendars=self.calendars,
                             budgets=self.budgets, **kw)  # fmt: skip
        live.started()
        return live

    def streaming_status(self) -> int:
        print(json.dumps(DataStreamingService.status(self.stream_state_file), indent=2))
        return cli.EXIT_OK

    def stop_streaming(self, timeout_seconds: float) -> int:
        stopped, message = DataStreamingService.stop(self.stream_state_file, timeout_seconds)
        print(message)
        return cli.EXIT_OK if stopped or message.startswith("no streaming") else cli.EXIT_CYCLE_FAILED

    def check_interval(self, provider: str, interval: str) -> None:
        cls = get_provider_class(provider)
        if interval not in cls.intervals:
            raise ConfigError(f"provider {provider} has no interval {interval} (it has: {', '.join(cls.intervals)})",
                              name="interval", value=interval)  # fmt: skip

    def check_provider(self, provider: str, interval: str) -> None:
        """:meth:`check_interval`, then the provider's settings here (its key, ``<PREFIX>_BASE_URL`` ...):
        ConfigError before any work starts."""
        self.check_interval(provider, interval)
        provider_config(get_provider_class(provider), self.settings)

    def market_status(self, args) -> int:
        at = args.at or self.clock.now()
        print(json.dumps(self.calendars.get(args.exchange).status(at).as_dict(), indent=2))
        return cli.EXIT_OK

    def schedule(self, args, kind: str) -> int:
        name = getattr(args, f"schedule_{kind}_job")
        symbols = args.job_symbols or args.symbols
        self.check_interval(args.provider, args.interval)  # also rejects an unknown provider
        fallback = args.job_fallback_provider
        if fallback:
            self.check_interval(fallback, args.interval)
        define_job(self.calendars, self.clock.now(), name, JOB_SESSIONS[kind], symbols or (), args.job_interval,
                   exchange=args.exchange, provider=args.provider, bar_interval=args.interval,
                   fallback_provider=fallback)  # bad input: before any database  # fmt: skip
        replaced = self.scheduler().schedule_job(
            name, JOB_SESSIONS[kind], symbols or (), args.job_interval,
            exchange=args.exchange, provider=args.provider, bar_interval=args.interval, fallback_provider=fallback,
        )  # fmt: skip
        verb = "replaced existing job" if replaced else "scheduled new job"
        print(
            f"{verb} {name!r}: {JOB_SESSIONS[kind].value} session of {args.exchange}, every {args.job_interval:g} min, "
            f"in {describe_url(self.settings.database_url)}"
        )  # the service must read this same database
        for p in filter(None, (args.provider, fallback)):  # the service may run elsewhere, with its own settings
            try:
                provider_config(get_provider_class(p), self.settings)
            except ConfigError as exc:
                print(f"main.py: warning: job {name!r}: in this environment, {exc}; a --run-scheduled-jobs without it "
                      "records each fire as failed in etl_runs", file=sys.stderr)  # fmt: skip
        return cli.EXIT_OK

    def show_jobs(self) -> int:
        print(json.dumps(self.scheduler().get_scheduled_jobs(include_invalid=True), indent=2))
        return cli.EXIT_OK

    def remove_job(self, name: str) -> int:
        if self.scheduler().remove_job(name):
            print(f"removed job {name!r}")
            return cli.EXIT_OK
        print(f"main.py: error: no job named {name!r}", file=sys.stderr)
        return cli.EXIT_USAGE

    def run_jobs(self, api_host: str = "127.0.0.1", api_port: int | None = None, api_token: str | None = None, *,
                 cluster: bool = False, stalled_after_seconds: float = 30.0) -> int:  # fmt: skip
        """Run named jobs until a signal; optionally serve the API; tell systemd how it goes.

        ``cluster``: as a node of a cluster (scheduler/cluster.py): fires claim their slot and queue
        their symbols in chunks, which this node's workers and every other node's run. ConfigError
        on a database that is not PostgreSQL.
        """
        node = self._cluster_node("scheduler", stalled_after_seconds) if cluster else None
        # the absolute database, so a service and the CLI that schedules its jobs can be compared
        log.info("named jobs from database %s", describe_url(self.settings.database_url))
        self.start_alerts()
        scheduler = self.scheduler()
        api = None
        if api_port is not None:
            from api.status import SchedulerStatus

            api = self.start_api(SchedulerStatus(scheduler, clock=self.clock, budgets=self.budgets), api_host, api_port,
                                 api_token)  # fmt: skip
        if node is not None:
            scheduler.dispatch = node.dispatch
            node.start()
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
            if node is not None:
                node.close(self.shutdown_timeout_seconds + 3)
        return cli.EXIT_OK

    def _cluster_node(self, role: str, stalled_after_seconds: float):
        """This process as a cluster node (PostgreSQL only: ConfigError otherwise), listed in ``GET /status``.

        In a cluster ``--workers`` counts the chunks a node runs at once, and each chunk fetches its
        symbols one at a time: a node makes at most ``--workers`` requests at once, like one process.
        """
        from scheduler.cluster import ClusterNode, check_cluster_database, cluster_status

        check_cluster_database(self.settings.database_url)  # before any connection: bad input, exit 2
        concurrency, self.workers = self.workers, 1
        node = ClusterNode(self.engine, self.settings.database_url, self.pipeline, role=role, workers=concurrency,
                           stop=self.stop, shutdown_timeout_seconds=self.shutdown_timeout_seconds,
                           stalled_after_seconds=stalled_after_seconds, redact=self.redactor, clock=self.clock)  # fmt: skip
        self.status_extras.append(lambda: {"cluster": cluster_status(self.engine, stalled_after_seconds=stalled_after_seconds)})
        return node

    def run_worker(self, *, stalled_after_seconds: float = 30.0) -> int:
        """--worker: a fetch-only cluster node (no scheduler) until a signal; ConfigError unless PostgreSQL.

        Its loads are evaluated against the alert rules like a scheduler node's (alerts/service.py): the
        chunks a worker runs are loads no other node sees. The alert engine stops with the App (``close``),
        after the node has stopped: queued deliveries get their few seconds.
        """
        node = self._cluster_node("worker", stalled_after_seconds)
        log.info("cluster worker on database %s", describe_url(self.settings.database_url))
        self.start_alerts()  # before the node builds a pipeline (pipelines copy the listeners)
        node.start()
        self.notifier.ready(f"cluster worker: {node.workers} chunk(s) at once")
        try:
            while not self.stop.wait(2.0):
                self.notifier.watchdog()
        finally:
            node.close(self.shutdown_timeout_seconds + 3)
        return cli.EXIT_OK

    def show_cluster(self) -> int:
        """--show-cluster: nodes, last seen, chunks in flight and queue depths as JSON."""
        from scheduler.cluster import check_cluster_database, cluster_status

        check_cluster_database(self.settings.database_url)  # a SQLite file has no cluster: say so, exit 2
        print(json.dumps(cluster_status(self.engine), indent=2))
        return cli.EXIT_OK

    def service_database(self) -> tuple[str, str]:
        """(URL, where it comes from) of the database the unit's service will use.

        The unit runs in the checkout with ``EnvironmentFile=<checkout>/.env`` and nothing of
        this shell's environment: its ``DATABASE_URL`` is the one in that file, or the default
        SQLite file in the checkout. Raises ConfigError if that file cannot be read.
        """
        env_file = self.checkout / ".env"
        try:
            values = dotenv_values(env_file) if env_file.is_file() else {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {env_file}: {exc}", name="DATABASE_URL") from None
        url = (values.get("DATABASE_URL") or "").strip()
        source = f"DATABASE_URL in {env_file}" if url else f"the default: no DATABASE_URL in {env_file}"
        return absolute_sqlite_url(url or DEFAULT_DATABASE_URL, self.checkout), source

    def install_service(self, args) -> int:
        """Write (or with --dry-run print) the systemd unit for this checkout and interpreter.

        Says which database the service will use (password hidden) and warns when it is not
        the one this shell uses: jobs scheduled from here would never run.
        """
        checkout = self.checkout
        svc_args = ["--run-scheduled-jobs", "--shutdown-timeout", f"{args.shutdown_timeout:g}"]
        if args.api_port is not None:
            svc_args += ["--api-port", str(args.api_port), "--api-host", args.api_host]
        db_url, db_source = self.service_database()
        if getattr(args, "cluster", False):  # the service as a cluster node: PostgreSQL shared by every node
            from scheduler.cluster import check_cluster_database

            check_cluster_database(db_url)
            svc_args.append("--cluster")
        if args.rate_limit:  # --rate-limit applies to the service too (validated by cli)
            svc_args += ["--rate-limit", *(str(r) for r in parse_rates(args.rate_limit))]
        database = f"{describe_url(db_url)} ({db_source})"
        text = unit_file(checkout=checkout, args=svc_args, shutdown_timeout_seconds=args.shutdown_timeout, user=args.user,
                         database=database)  # fmt: skip
        print(f"the service will use the database {database}", file=sys.stderr)
        if _under_private_tmp(db_url):
            print("main.py: warning: the unit has PrivateTmp=yes: the service's /tmp and /var/tmp are its own, so a "
                  "SQLite file there is not the one this shell sees", file=sys.stderr)  # fmt: skip
        if not same_database(db_url, self.settings.database_url):
            print(f"main.py: warning: this shell uses the database {describe_url(self.settings.database_url)}, not the "
                  f"service's: jobs scheduled from here would never run; set DATABASE_URL in {checkout / '.env'}",
                  file=sys.stderr)  # fmt: skip
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

    # -- history: --backfill, --fill-gaps, --coverage ------------------------------------------

    def backfill(self, args) -> int:
        """--backfill: load [--start, --end) of --symbols chunk by chunk, resumably; prints a JSON summary."""
        start, end = self.history_window(args)
        self.check_interval(args.provider, args.interval)  # bad input fails before any database work
        runner = self._history_runner(args, "backfill", self._coverage_ledger(required=False))
        symbols = list(dict.fromkeys(args.symbols))
        plan = runner.plan(symbols, args.interval, start, end, refetch=args.refetch)
        header = {"mode": "backfill", "provider": args.provider, "interval": args.interval, "symbols": symbols,
                  "start": start.isoformat(), "end": end.isoformat(), "refetch": args.refetch}  # fmt: skip
        return self._run_history(runner, plan, args, header)

    def fill_gaps(self, args) -> int:
        """--fill-gaps: backfill exactly the ranges the coverage ledger finds missing (dates --start to --end)."""
        self.history_window(args)  # bad input fails before any database work
        self.check_interval(args.provider, args.interval)
        coverage = self._coverage_ledger(required=True)
        runner = self._history_runner(args, "fill_gaps", coverage)
        symbols = list(dict.fromkeys(args.symbols))
        ranges = coverage.missing_ranges(args.provider, symbols, args.interval, args.start, _last_date(args),
                                         exchange=args.exchange, sessions=tuple(args.sessions), recount=args.recount)  # fmt: skip
        plan = runner.plan_ranges(ranges, args.interval)
        header = {"mode": "fill_gaps", "provider": args.provider, "interval": args.interval, "symbols": symbols,
                  "start": args.start.isoformat(), "end": args.end.isoformat(), "exchange": args.exchange,
                  "sessions": list(args.sessions), "missing_ranges": len(ranges)}  # fmt: skip
        return self._run_history(runner, plan, args, header)

    def coverage(self, args) -> int:
        """--coverage: the completeness report (bars expected from the calendar vs loaded), and --coverage-plot."""
        self.history_window(args)
        self.check_interval(args.provider, args.interval)
        ledger = self._coverage_ledger(required=True)
        symbols = list(dict.fromkeys(args.symbols))
        rows = ledger.compute(args.provider, symbols, args.interval, args.start, _last_date(args), exchange=args.exchange,
                              sessions=tuple(args.sessions), recount=args.recount)  # fmt: skip
        if (args.format or "table") == "json":
            print(json.dumps([r.as_dict() for r in rows], indent=2, default=_iso))
        else:
            from db.coverage import render_table

            print(render_table(rows))
        if args.coverage_plot:
            from reports.coverage_plot import plot_coverage

            print(f"coverage heatmap written to {plot_coverage(rows, Path(args.coverage_plot))}", file=sys.stderr)
        return cli.EXIT_OK

    def history_window(self, args) -> tuple[datetime, datetime]:
        """[--start, --end) as UTC instants: a date is midnight in the --exchange's zone. ConfigError if empty."""
        tz = None

        def utc(value) -> datetime:
            nonlocal tz
            if isinstance(value, datetime):
                return value.astimezone(UTC)
            tz = tz or self.calendars.get(args.exchange).tz  # an unknown exchange is bad input
            return datetime.combine(value, time(0), tzinfo=tz).astimezone(UTC)

        start, end = utc(args.start), utc(args.end)
        if end <= start:
            raise ConfigError(f"--end ({end.isoformat()}) must be after --start ({start.isoformat()})", name="end")
        return start, end

    def _coverage_ledger(self, *, required: bool):
        """The coverage ledger (db/coverage.py), imported only when a history command runs."""
        try:
            from db.coverage import CoverageLedger

            if not hasattr(CoverageLedger, "record_no_data"):
                raise ImportError("db.coverage.CoverageLedger has no record_no_data yet")
        except ImportError as exc:
            if required:
                raise ConfigError(f"the coverage ledger (db/coverage.py) is not available: {exc}", name="coverage") from None
            log.warning("no_data windows are kept in backfill_chunks only: the coverage ledger is not available (%s)", exc)
            return None
        return CoverageLedger(self.engine, self.calendars, self.clock)

    def _history_runner(self, args, job: str, coverage) -> Backfill:
        interactive = sys.stderr.isatty() and self.settings.log_format != "json"
        return Backfill(
            self.pipeline(args.provider), ChunkStore(self.engine, self.clock.now), clock=self.clock, stop=self.stop,
            progress=make_progress(interactive=interactive, label=job), job_name=args.job_name or job, redact=self.redactor,
            record_no_data=coverage.record_no_data if coverage is not None else None,
        )  # fmt: skip

    def _run_history(self, runner: Backfill, plan: Plan, args, header: dict) -> int:
        mode = header["mode"]
        log.info("%s: %d chunk(s) of %s from %s into %s%s", mode, len(plan.chunks), " ".join(header["symbols"]), args.provider,
                 describe_url(self.settings.database_url),
                 f" ({plan.already_loaded} already loaded: skipped; --refetch fetches them again)" if plan.already_loaded
                 else "")  # fmt: skip
        result = runner.run(plan, args.interval)
        print(json.dumps({**header, **result.as_dict()}, indent=2))
        for symbol, error in result.failed_symbols.items():
            print(f"main.py: {mode}: symbol {symbol} failed: {error}", file=sys.stderr)
        if result.error is not None:
            log.error("database %s unavailable: %s", describe_url(self.settings.database_url), result.error)
            return cli.EXIT_UNAVAILABLE
        if result.chunks_pending:
            log.warning("%s stopped with %d chunk(s) pending: run the same command again to continue", mode,
                        result.chunks_pending)  # fmt: skip
        return cli.EXIT_CYCLE_FAILED if result.chunks_failed else cli.EXIT_OK

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


def _last_date(args) -> date:
    """The last session date of --start..--end for the coverage ledger (inclusive there): --end is excluded in
    every history mode, so --backfill, --coverage and --fill-gaps with the same dates cover the same days."""
    return args.end - timedelta(days=1)


def _iso(value) -> str:
    """JSON for dates and instants in reports (ISO 8601)."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def same_database(a: str, b: str) -> bool:
    """Whether two database URLs name the same database (``postgresql://`` = ``postgresql+psycopg2://``)."""

    def key(url: str):
        try:
            u = make_url(url)
        except Exception:  # noqa: BLE001 - an unparsable URL equals only itself
            return url
        backend = u.get_backend_name()
        port = u.port or (5432 if backend == "postgresql" else None)
        return backend, u.username, (u.host or "").lower(), port, u.database

    return key(a) == key(b)


def _under_private_tmp(url: str) -> bool:
    """Whether ``url`` is a SQLite file in /tmp or /var/tmp (private to a unit with PrivateTmp=yes)."""
    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: make_engine reports it
        return False
    path = Path(u.database or "")
    return u.get_backend_name() == "sqlite" and any(path.is_relative_to(d) for d in ("/tmp", "/var/tmp"))
