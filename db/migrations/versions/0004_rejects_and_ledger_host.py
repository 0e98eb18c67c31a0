"""rejected_bars (the audit trail of bars that never landed), etl_runs.host and the 'abandoned' status

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OLD_STATUSES = "('running', 'succeeded', 'partial', 'failed', 'interrupted')"
_NEW_STATUSES = "('running', 'succeeded', 'partial', 'failed', 'interrupted', 'abandoned')"


def upgrade() -> None:
    op.create_table(
        "rejected_bars",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer),  # etl_runs.id of the cycle that saw it (NULL outside a cycle)
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("interval", sa.Text, nullable=False),
        sa.Column("raw_ts", sa.Text, nullable=False),  # the record's timestamp as the provider wrote it
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("excerpt", sa.Text),  # the record as received, truncated
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("rejected_bars_series_idx", "rejected_bars", ["provider", "symbol", "interval", "seen_at"])
    # host next to pid: a row left 'running' is only declared abandoned by a process on the same host
    with op.batch_alter_table("etl_runs", recreate="auto") as batch:
        batch.add_column(sa.Column("host", sa.Text))
        batch.drop_constraint("etl_runs_status_check", type_="check")
        batch.create_check_constraint("etl_runs_status_check", f"status IN {_NEW_STATUSES}")


def downgrade() -> None:
    with op.batch_alter_table("etl_runs", recreate="auto") as batch:
        batch.drop_constraint("etl_runs_status_check", type_="check")
        batch.create_check_constraint("etl_runs_status_check", f"status IN {_OLD_STATUSES}")
        batch.drop_column("host")
    op.drop_index("rejected_bars_series_idx", table_name="rejected_bars")
    op.drop_table("rejected_bars")
