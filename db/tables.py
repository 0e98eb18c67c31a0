"""Table definitions used by queries (the migrations in ``db/migrations`` create them).

- ``bars``: one row per (provider, symbol, interval, ts); ``ts`` is the bar *start*,
  ``timestamptz`` in UTC; prices and volume ``numeric`` (the provider's decimal text,
  kept exactly on PostgreSQL); ``ingested_at`` is when this version of the row was written.
- ``series_last_write``: one row per series, its last write (newest ``ts``, when, rows), kept by the loader.
- ``etl_runs``: the ledger, one row per cycle.
- ``scheduled_jobs``: named jobs, one row each (not pickles: readable, editable, portable).
- ``rejected_bars``: the audit trail of records that never became bars (raw timestamp, reason, excerpt).
- ``corporate_actions``: splits and dividends per (provider, symbol, ex_date, kind).
- ``series_preference``: which provider is a series' primary (rank 0) when a fallback serves it too.
- ``alert_rules`` / ``alert_events``: alert rules (``alerts/``) and every firing with its delivery status.
- ``latest_bars`` (view): the newest bar per (provider, symbol, interval).
- ``bars_preferred`` (view): one row per (symbol, interval, ts), the preferred provider's.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["metadata", "bars", "series_last_write", "etl_runs", "scheduled_jobs", "rejected_bars", "corporate_actions",
           "series_preference", "cluster_nodes", "cluster_chunks", "backfill_chunks", "no_data_ranges", "coverage",
           "latest_bars", "BAR_KEY", "BAR_VALUES", "alert_rules", "alert_events"]  # fmt: skip

metadata = sa.MetaData()

BAR_KEY = ("provider", "symbol", "interval", "ts")
BAR_VALUES = ("open", "high", "low", "close", "volume")

bars = sa.Table(
    "bars",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("interval", sa.Text, primary_key=True),
    sa.Column("ts", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("open", sa.Numeric, nullable=False),
    sa.Column("high", sa.Numeric, nullable=False),
    sa.Column("low", sa.Numeric, nullable=False),
    sa.Column("close", sa.Numeric, nullable=False),
    sa.Column("volume", sa.Numeric, nullable=True),  # NULL: the market reports no volume (an index)
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("adj_close", sa.Numeric, nullable=True),  # split/dividend-adjusted close, when the provider sends one
)

#: one row per series the loader has written (0012): ``newest_ts`` the newest bar start written, ``written_at``
#: the last transaction that inserted or changed rows in it (its start, as ``bars.ingested_at``) and
#: ``rows_written`` how many it did; what a live catch-up reads (the series written since) and "which are fresh"
series_last_write = sa.Table(
    "series_last_write",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("interval", sa.Text, primary_key=True),
    sa.Column("newest_ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rows_written", sa.Integer, nullable=False),
    sa.Index("series_last_write_written_at", "written_at"),
)

etl_runs = sa.Table(
    "etl_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_name", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("interval", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("symbols_requested", sa.Integer, nullable=False, server_default="0"),
    sa.Column("symbols_succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("symbols_failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed_symbols", sa.Text),
    sa.Column("rows_fetched", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_loaded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_rejected", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error_summary", sa.Text),
    sa.Column("pid", sa.Integer),
    sa.Column("host", sa.Text),
    sa.Column("served_by", sa.Text),  # "SYMBOL=provider ..." for the symbols a fallback provider served
    sa.Column("scheduled_for", sa.DateTime(timezone=True)),  # a named job's fire slot (UTC): one run per slot
    sa.Column("node", sa.Text),  # host:pid of the node that claimed the slot
    sa.Index(
        "etl_runs_one_run_per_slot",
        "job_name",
        "scheduled_for",
        unique=True,
        postgresql_where=sa.text("scheduled_for IS NOT NULL"),
        sqlite_where=sa.text("scheduled_for IS NOT NULL"),
    ),
)

#: nodes of a cluster (``--run-scheduled-jobs --cluster``, ``--worker``): one row each, ``last_seen`` beats (UTC)
cluster_nodes = sa.Table(
    "cluster_nodes",
    metadata,
    sa.Column("node", sa.Text, primary_key=True),  # host:pid
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("role", sa.Text, nullable=False),  # 'scheduler' or 'worker'
    sa.Column("workers", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("stopped_at", sa.DateTime(timezone=True)),
)

#: a clustered cycle's symbol chunks (see scheduler/cluster.py); ``run_id`` is its ``etl_runs.id``
cluster_chunks = sa.Table(
    "cluster_chunks",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("chunk_no", sa.Integer, primary_key=True),
    sa.Column("job_name", sa.Text, nullable=False),
    sa.Column("symbols", sa.Text, nullable=False),  # space-separated
    sa.Column("status", sa.Text, nullable=False),  # queued, doing, done
    sa.Column("node", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("job_id", sa.BigInteger),
    sa.Column("outcomes", sa.JSON),
    sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

corporate_actions = sa.Table(
    "corporate_actions",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("ex_date", sa.Date, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),  # split | dividend
    sa.Column("ratio", sa.Numeric),
    sa.Column("amount", sa.Numeric),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
)

series_preference = sa.Table(
    "series_preference",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("interval", sa.Text, primary_key=True),
    sa.Column("rank", sa.Integer, nullable=False),  # 0 = the series' primary provider
)

rejected_bars = sa.Table(
    "rejected_bars",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("interval", sa.Text, nullable=False),
    sa.Column("raw_ts", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("excerpt", sa.Text),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("rejected_bars_run_id", "run_id"),  # a cycle's rejections (0011)
)

scheduled_jobs = sa.Table(
    "scheduled_jobs",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("session", sa.Text, nullable=False),
    sa.Column("exchange", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("symbols", sa.Text, nullable=False),
    sa.Column("interval_minutes", sa.Float, nullable=False),
    sa.Column("bar_interval", sa.Text, nullable=False),
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("fallback_provider", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

latest_bars = sa.Table(
    "latest_bars",
    sa.MetaData(),  # a view: kept out of ``metadata`` so nothing tries to CREATE TABLE it
    *(sa.Column(c.name, c.type) for c in bars.columns),
)

backfill_chunks = sa.Table(
    "backfill_chunks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("interval", sa.Text, nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # pending | done | no_data | failed
    sa.Column("rows_fetched", sa.Integer, nullable=False),
    sa.Column("rows_loaded", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

no_data_ranges = sa.Table(
    "no_data_ranges",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("interval", sa.Text, primary_key=True),
    sa.Column("range_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("range_end", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
)

coverage = sa.Table(
    "coverage",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("interval", sa.Text, primary_key=True),
    sa.Column("session_date", sa.Date, primary_key=True),
    sa.Column("sessions", sa.Text, primary_key=True),
    sa.Column("expected", sa.Integer, nullable=False),
    sa.Column("loaded", sa.Integer, nullable=False),
    sa.Column("no_data", sa.Integer, nullable=False),
    sa.Column("missing", sa.Integer, nullable=False),
    sa.Column("first_missing", sa.DateTime(timezone=True)),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
)

#: alert rules (``--add-alert``, see alerts/base.py Rule); ``webhook`` holds a token: never shown whole
alert_rules = sa.Table(
    "alert_rules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # condition | stale | error_rate
    sa.Column("condition", sa.Text),
    sa.Column("subject", sa.Text),
    sa.Column("threshold", sa.Float),
    sa.Column("exchange", sa.Text),
    sa.Column("sessions", sa.Text),
    sa.Column("webhook", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("name", name="alert_rules_name_key"),
    sa.CheckConstraint("kind IN ('condition', 'stale', 'error_rate')", name="alert_rules_kind_check"),
)

#: every firing of an alert rule and its delivery (``fired_at``/``cleared_at``/``delivered_at`` UTC)
alert_events = sa.Table(
    "alert_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule_id", sa.Integer, nullable=False),
    sa.Column("rule_name", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("value", sa.Numeric),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cleared_at", sa.DateTime(timezone=True)),
    sa.Column("delivery_status", sa.Text, nullable=False),  # pending | delivered | failed | dropped
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint(
        "delivery_status IN ('pending', 'delivered', 'failed', 'dropped')", name="alert_events_delivery_status_check"
    ),
    sa.Index("alert_events_rule_subject", "rule_id", "subject", "id"),
    # at most one open firing per (rule, subject): two processes evaluating one rule send it once (0010)
    sa.Index(
        "alert_events_one_open",
        "rule_id",
        "subject",
        unique=True,
        postgresql_where=sa.text("cleared_at IS NULL"),
        sqlite_where=sa.text("cleared_at IS NULL"),
    ),  # fmt: skip
)
