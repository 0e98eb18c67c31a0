"""bars, etl_runs and the latest_bars view

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bars",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("interval", sa.Text, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open", sa.Numeric, nullable=False),
        sa.Column("high", sa.Numeric, nullable=False),
        sa.Column("low", sa.Numeric, nullable=False),
        sa.Column("close", sa.Numeric, nullable=False),
        sa.Column("volume", sa.Numeric, nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("provider", "symbol", "interval", "ts", name="bars_pkey"),
    )
    op.create_table(
        "etl_runs",
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
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')", name="etl_runs_status_check"
        ),
    )
    op.create_index("etl_runs_job_started_idx", "etl_runs", ["job_name", "started_at"])
    # The newest bar per series; portable SQL (PostgreSQL and SQLite), served by the primary key.
    op.execute(
        """
        CREATE VIEW latest_bars AS
        SELECT b.* FROM bars b
        JOIN (SELECT provider, symbol, interval, max(ts) AS ts FROM bars GROUP BY provider, symbol, interval) m
          ON b.provider = m.provider AND b.symbol = m.symbol AND b.interval = m.interval AND b.ts = m.ts
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW latest_bars")
    op.drop_table("etl_runs")
    op.drop_table("bars")
