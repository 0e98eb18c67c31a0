"""series_last_write: one row per series, its last write, so a live catch-up never reads ``bars`` by write time

The API catches its subscribers up after a gap (a LISTEN reconnect, an SSE client resuming from before
the replay buffer) with the series written since an instant (:func:`api.queries.bars_since`). It reads
them here (``WHERE written_at >= …``, through ``series_last_write_written_at``), then each series' newest
bar through the primary key of ``bars``. The loader keeps this table in the transaction that writes the
bars (:mod:`etl.load`): one row per series, however long its history, so an index on it costs a write
per series changed and nothing per bar (an index on ``bars.ingested_at`` made every re-load slower as the
table grew). Also the answer to "which series are fresh": ``SELECT … FROM series_last_write ORDER BY written_at``.

- ``newest_ts``: the newest bar start (``ts``) the loader has written in the series;
- ``written_at``: the last transaction that inserted or changed rows in it (its start, ``now()``, as
  ``bars.ingested_at``);
- ``rows_written``: how many rows that transaction inserted or changed in it.

Filled once from ``bars`` at upgrade: one pass over the table grouped by series (minutes on a very large
table, once), with ``written_at`` its newest ``ingested_at`` and ``rows_written`` the rows written then.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: Each series' newest bar start, its last write time and the rows of that write (rows with that very
#: ``ingested_at``). One scan of ``bars``, once, at upgrade.
_FILL = """
INSERT INTO series_last_write (provider, symbol, interval, newest_ts, written_at, rows_written)
SELECT provider, symbol, interval, max(ts), max(written_at), sum(CASE WHEN ingested_at = written_at THEN 1 ELSE 0 END)
FROM (SELECT provider, symbol, interval, ts, ingested_at,
             max(ingested_at) OVER (PARTITION BY provider, symbol, interval) AS written_at
      FROM bars) AS b
GROUP BY provider, symbol, interval
"""


def upgrade() -> None:
    op.create_table(
        "series_last_write",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("interval", sa.Text, primary_key=True),
        sa.Column("newest_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows_written", sa.Integer, nullable=False),
    )
    op.create_index("series_last_write_written_at", "series_last_write", ["written_at"])
    op.execute(_FILL)


def downgrade() -> None:
    op.drop_index("series_last_write_written_at", table_name="series_last_write")
    op.drop_table("series_last_write")
