"""bars: an index on ingested_at, so a live catch-up reads only the rows written since

The API catches its subscribers up from ``bars`` after a gap (a LISTEN reconnect, an SSE client
resuming from before the replay buffer): ``WHERE ingested_at >= …`` (:func:`api.queries.bars_since`).
Without this index each of those reads the whole table.

A plain ``CREATE INDEX`` (migrations run in one transaction, where ``CONCURRENTLY`` cannot): on a
large table it holds off writes to ``bars`` while it builds.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("bars_ingested_at", "bars", ["ingested_at"])


def downgrade() -> None:
    op.drop_index("bars_ingested_at", table_name="bars")
