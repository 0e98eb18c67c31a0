"""alerts: alert_rules (conditions, staleness, error rates) and alert_events (every firing and its delivery)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # one row per rule, managed by --add-alert / --remove-alert
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),  # condition | stale | error_rate
        sa.Column("condition", sa.Text),  # kind condition: "TSLA close > 800" (canonical)
        sa.Column("subject", sa.Text),  # kind stale: a job or a symbol; kind error_rate: a job
        sa.Column("threshold", sa.Float),  # stale: minutes; error_rate: failed share 0..1
        sa.Column("exchange", sa.Text),  # stale on a symbol: its exchange calendar
        sa.Column("sessions", sa.Text),  # stale on a symbol: "pre regular post" (space-separated)
        sa.Column("webhook", sa.Text),  # a secret (its path holds the token): shown redacted
        sa.Column("email", sa.Text),  # comma-separated addresses
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", name="alert_rules_name_key"),
        sa.CheckConstraint("kind IN ('condition', 'stale', 'error_rate')", name="alert_rules_kind_check"),
    )
    # one row per firing; rule_id is not a foreign key, so the history outlives a removed rule
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule_id", sa.Integer, nullable=False),
        sa.Column("rule_name", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),  # "provider SYMBOL interval", a symbol or a job
        sa.Column("value", sa.Numeric),  # the field's value, minutes since the newest bar, or the failed share
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),  # UTC
        sa.Column("cleared_at", sa.DateTime(timezone=True)),  # when the condition stopped holding (re-armed)
        sa.Column("delivery_status", sa.Text, nullable=False),  # pending | delivered | failed | dropped
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # requests made, every channel
        sa.Column("error", sa.Text),  # redacted: which channel failed and why
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "delivery_status IN ('pending', 'delivered', 'failed', 'dropped')", name="alert_events_delivery_status_check"
        ),
    )
    op.create_index("alert_events_rule_subject", "alert_events", ["rule_id", "subject", "id"])


def downgrade() -> None:
    op.drop_index("alert_events_rule_subject", "alert_events")
    op.drop_table("alert_events")
    op.drop_table("alert_rules")
