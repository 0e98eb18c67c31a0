"""scheduled_jobs: named jobs as plain rows (the CLI writes them, the running scheduler reads them)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduled_jobs",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("session", sa.Text, nullable=False),
        sa.Column("exchange", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("symbols", sa.Text, nullable=False),  # space-separated tickers
        sa.Column("interval_minutes", sa.Float, nullable=False),
        sa.Column("bar_interval", sa.Text, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("session IN ('pre', 'regular', 'post')", name="scheduled_jobs_session_check"),
        sa.CheckConstraint("interval_minutes > 0", name="scheduled_jobs_interval_check"),
    )


def downgrade() -> None:
    op.drop_table("scheduled_jobs")
