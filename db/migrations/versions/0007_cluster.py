"""cluster: etl_runs.scheduled_for (the job's fire slot) and node (host:pid); one run per slot;
cluster_nodes (heartbeats) and cluster_chunks (a cycle's symbol chunks, spread over nodes)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("etl_runs") as batch:
        batch.add_column(sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True))  # UTC fire slot
        batch.add_column(sa.Column("node", sa.Text, nullable=True))  # host:pid of the node that claimed it
    # a named job's fire slot is claimed by exactly one run, whichever node fires it
    op.create_index(
        "etl_runs_one_run_per_slot",
        "etl_runs",
        ["job_name", "scheduled_for"],
        unique=True,
        postgresql_where=sa.text("scheduled_for IS NOT NULL"),
        sqlite_where=sa.text("scheduled_for IS NOT NULL"),
    )
    # one row per node of a cluster (--run-scheduled-jobs --cluster, --worker), beating every few seconds
    op.create_table(
        "cluster_nodes",
        sa.Column("node", sa.Text, primary_key=True),  # host:pid
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("role", sa.Text, nullable=False),  # 'scheduler' (--cluster: scheduler + workers) or 'worker'
        sa.Column("workers", sa.Integer, nullable=False),  # chunks it runs at once
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),  # a graceful stop; NULL while running (or killed)
    )
    # a clustered cycle's chunks: no foreign key to etl_runs, so truncating the ledger never cascades
    op.create_table(
        "cluster_chunks",
        sa.Column("run_id", sa.Integer, primary_key=True),  # etl_runs.id of the cycle
        sa.Column("chunk_no", sa.Integer, primary_key=True),  # 0, 1, ... in symbol order
        sa.Column("job_name", sa.Text, nullable=False),
        sa.Column("symbols", sa.Text, nullable=False),  # space-separated
        sa.Column("status", sa.Text, nullable=False),  # queued, doing, done
        sa.Column("node", sa.Text),  # host:pid that runs (or ran) it
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("job_id", sa.BigInteger),  # procrastinate_jobs.id
        sa.Column("outcomes", sa.JSON),  # per symbol: counts, error, ... (when done)
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("cluster_chunks_status", "cluster_chunks", ["status"])


def downgrade() -> None:
    op.drop_index("cluster_chunks_status", "cluster_chunks")
    op.drop_table("cluster_chunks")
    op.drop_table("cluster_nodes")
    op.drop_index("etl_runs_one_run_per_slot", "etl_runs")
    with op.batch_alter_table("etl_runs") as batch:
        batch.drop_column("node")
        batch.drop_column("scheduled_for")
