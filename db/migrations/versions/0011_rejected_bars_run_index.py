"""rejected_bars: an index on run_id, so a cycle's rejections are found without reading the table

A cycle that fetches a symbol again (a retry pass after a transient load failure, a cluster chunk
retried on another node) sees the same bad records again; ``db.rejects.RejectStore.record`` looks up
what that run already recorded and stores each rejection once. Also what ``WHERE run_id = …``
queries of users need.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("rejected_bars_run_id", "rejected_bars", ["run_id"])


def downgrade() -> None:
    op.drop_index("rejected_bars_run_id", table_name="rejected_bars")
