"""history: backfill_chunks (resumable backfill), no_data_ranges, coverage (the completeness ledger)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # one row per window of a backfill: a rerun continues with the chunks not yet done
    op.create_table(
        "backfill_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("interval", sa.Text, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),  # UTC, inclusive
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),  # UTC, exclusive
        sa.Column("status", sa.Text, nullable=False),  # pending | done | no_data | failed
        sa.Column("rows_fetched", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_loaded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("provider", "symbol", "interval", "window_start", "window_end", name="backfill_chunks_window_key"),
        sa.CheckConstraint("status IN ('pending', 'done', 'no_data', 'failed')", name="backfill_chunks_status_check"),
    )
    # windows a provider said hold no data: their bars count as no_data, not missing, and are not fetched forever
    op.create_table(
        "no_data_ranges",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("interval", sa.Text, nullable=False),
        sa.Column("range_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("range_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider", "symbol", "interval", "range_start", "range_end", name="no_data_ranges_pkey"),
    )
    # the completeness ledger: per series and session date, bars expected from the calendar vs loaded
    op.create_table(
        "coverage",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("interval", sa.Text, nullable=False),
        sa.Column("session_date", sa.Date, nullable=False),  # the exchange's local trading date
        sa.Column("sessions", sa.Text, nullable=False),  # e.g. "regular" or "pre regular post"
        sa.Column("expected", sa.Integer, nullable=False),
        sa.Column("loaded", sa.Integer, nullable=False),
        sa.Column("no_data", sa.Integer, nullable=False, server_default="0"),
        sa.Column("missing", sa.Integer, nullable=False),
        sa.Column("first_missing", sa.DateTime(timezone=True)),  # UTC start of the first missing bar
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider", "symbol", "interval", "session_date", "sessions", name="coverage_pkey"),
    )


def downgrade() -> None:
    op.drop_table("coverage")
    op.drop_table("no_data_ranges")
    op.drop_table("backfill_chunks")
