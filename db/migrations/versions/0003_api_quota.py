"""api_quota: requests used per provider API key per UTC day (daily quotas survive restarts)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_quota",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),  # a hash of the API key, never the key
        sa.Column("day", sa.Date, nullable=False),  # UTC date
        sa.Column("used", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("provider", "key_id", "day", name="api_quota_pkey"),
    )


def downgrade() -> None:
    op.drop_table("api_quota")
