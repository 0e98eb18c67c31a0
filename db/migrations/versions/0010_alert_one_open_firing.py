"""alert_events: at most one open (not cleared) firing per (rule, subject), across every process

Each process that loads bars or serves the API evaluates the alert rules (staleness every minute,
conditions on its loads). Two such processes on one database (two pollers, or a cluster's nodes)
would both see a stale series and both send the alert. This partial unique index fences the firing:
the process whose INSERT lands sends it; the other finds the open firing and stays quiet
(``alerts.store.AlertStore.record_firing``).

A database that already holds several open firings of one (rule, subject) (the double sends this
prevents) keeps the newest open and marks the older ones cleared at their own ``fired_at``.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE alert_events SET cleared_at = fired_at WHERE cleared_at IS NULL AND id NOT IN "
        "(SELECT max(id) FROM alert_events WHERE cleared_at IS NULL GROUP BY rule_id, subject)"
    )
    op.create_index(
        "alert_events_one_open", "alert_events", ["rule_id", "subject"], unique=True,
        postgresql_where=sa.text("cleared_at IS NULL"), sqlite_where=sa.text("cleared_at IS NULL"),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("alert_events_one_open", table_name="alert_events")
