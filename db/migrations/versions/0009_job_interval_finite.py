"""scheduled_jobs.interval_minutes: refuse NaN and infinity, not only values <= 0

``interval_minutes > 0`` (0002) lets 'NaN' through on PostgreSQL (NaN sorts above every number
there) and 'Infinity' on both databases; a job interval must be a finite number of minutes > 0
(``db.jobs.JobDefinition``: 1 second to a day; the range itself stays a rule of the code, checked
when a job is scheduled and when the scheduler loads the rows).

A database that already holds such a row (a hand edit) still migrates: the row is kept, a warning
names it, and the scheduler goes on skipping it as an invalid job until it is fixed with the CLI or
deleted; the constraint checks every later write (PostgreSQL: ``NOT VALID``; SQLite: the rebuilt
table's rows are copied with CHECK constraints off).

Revision ID: 0009
Revises: 0008
"""

import logging

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

log = logging.getLogger("db.migrate")

NAME = "scheduled_jobs_interval_check"
OLD_CHECK = "interval_minutes > 0"
#: PostgreSQL: float8 has NaN and +/-Infinity (and NaN = NaN holds there); -Infinity is <= 0.
PG_CHECK = "interval_minutes > 0 AND interval_minutes NOT IN ('NaN'::float8, 'Infinity'::float8)"
#: SQLite stores NaN as NULL (refused by NOT NULL); 9e999 is +Infinity; a text value is no number.
SQLITE_CHECK = "typeof(interval_minutes) IN ('real', 'integer') AND interval_minutes > 0 AND interval_minutes < 9e999"


def upgrade() -> None:
    conn = op.get_bind()
    postgres = conn.dialect.name == "postgresql"
    check = PG_CHECK if postgres else SQLITE_CHECK
    bad = [r[0] for r in conn.exec_driver_sql(f"SELECT name FROM scheduled_jobs WHERE NOT ({check}) ORDER BY name")]  # noqa: S608
    if bad:
        log.warning("scheduled_jobs: %d job(s) with an interval that is not a finite number > 0, kept and skipped by the "
                    "scheduler until fixed with the CLI or removed (--remove-job): %s", len(bad), ", ".join(bad))  # fmt: skip
    if postgres:
        op.drop_constraint(NAME, "scheduled_jobs", type_="check")
        op.execute(f"ALTER TABLE scheduled_jobs ADD CONSTRAINT {NAME} CHECK ({check}){' NOT VALID' if bad else ''}")
        return
    if bad:
        op.execute("PRAGMA ignore_check_constraints = ON")  # the rebuild copies the bad rows as they are
    try:
        with op.batch_alter_table("scheduled_jobs", recreate="always") as batch:
            batch.drop_constraint(NAME, type_="check")
            batch.create_check_constraint(NAME, check)
    finally:
        if bad:
            op.execute("PRAGMA ignore_check_constraints = OFF")


def downgrade() -> None:
    with op.batch_alter_table("scheduled_jobs", recreate="auto") as batch:
        batch.drop_constraint(NAME, type_="check")
        batch.create_check_constraint(NAME, OLD_CHECK)
