"""more providers: nullable volume (indices), adj_close, corporate_actions, fallback bookkeeping, bars_preferred

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# One row per (symbol, interval, ts): the row of the provider with the best (lowest) rank for that
# series in series_preference (the primary of a job with a fallback), else any provider's, by name.
_PREFERRED = """
CREATE VIEW bars_preferred AS
SELECT provider, symbol, interval, ts, open, high, low, close, volume, adj_close, ingested_at FROM (
    SELECT b.*, row_number() OVER (
        PARTITION BY b.symbol, b.interval, b.ts ORDER BY coalesce(p.rank, 1000000), b.provider
    ) AS pick
    FROM bars b LEFT JOIN series_preference p
      ON p.provider = b.provider AND p.symbol = b.symbol AND p.interval = b.interval
) ranked WHERE pick = 1
"""


def upgrade() -> None:
    op.execute("DROP VIEW latest_bars")  # it lists b.*, and SQLite rebuilds bars below: recreated after
    with op.batch_alter_table("bars") as batch:
        batch.alter_column("volume", existing_type=sa.Numeric, nullable=True)  # indices have no volume
        batch.add_column(sa.Column("adj_close", sa.Numeric, nullable=True))  # split/dividend-adjusted close, when sent
    op.create_table(
        "corporate_actions",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ex_date", sa.Date, nullable=False),  # the exchange's local date
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("ratio", sa.Numeric),  # split: new shares per old share
        sa.Column("amount", sa.Numeric),  # dividend: cash per share
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider", "symbol", "ex_date", "kind", name="corporate_actions_pkey"),
        sa.CheckConstraint("kind IN ('split', 'dividend')", name="corporate_actions_kind_check"),
    )
    op.create_table(
        "series_preference",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("interval", sa.Text, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),  # 0 = the primary provider of the series
        sa.PrimaryKeyConstraint("provider", "symbol", "interval", name="series_preference_pkey"),
    )
    with op.batch_alter_table("etl_runs") as batch:
        batch.add_column(sa.Column("served_by", sa.Text))  # "SYMBOL=provider ..." for symbols a fallback served
    with op.batch_alter_table("scheduled_jobs") as batch:
        batch.add_column(sa.Column("fallback_provider", sa.Text))  # serves a symbol the provider fails terminally
    op.execute(
        """
        CREATE VIEW latest_bars AS
        SELECT b.* FROM bars b
        JOIN (SELECT provider, symbol, interval, max(ts) AS ts FROM bars GROUP BY provider, symbol, interval) m
          ON b.provider = m.provider AND b.symbol = m.symbol AND b.interval = m.interval AND b.ts = m.ts
        """
    )
    op.execute(_PREFERRED)


def downgrade() -> None:
    op.execute("DROP VIEW bars_preferred")
    op.execute("DROP VIEW latest_bars")
    with op.batch_alter_table("scheduled_jobs") as batch:
        batch.drop_column("fallback_provider")
    with op.batch_alter_table("etl_runs") as batch:
        batch.drop_column("served_by")
    op.drop_table("series_preference")
    op.drop_table("corporate_actions")
    with op.batch_alter_table("bars") as batch:
        batch.drop_column("adj_close")
        batch.alter_column("volume", existing_type=sa.Numeric, nullable=False)
    op.execute(
        "CREATE VIEW latest_bars AS SELECT b.* FROM bars b JOIN (SELECT provider, symbol, interval, max(ts) AS ts FROM bars "
        "GROUP BY provider, symbol, interval) m ON b.provider = m.provider AND b.symbol = m.symbol "
        "AND b.interval = m.interval AND b.ts = m.ts"
    )
