"""Daily request quotas kept in the database, so a restart does not reset them."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from db.engine import translate_db_errors

__all__ = ["QuotaStore"]

_TAKE = sa.text(
    "INSERT INTO api_quota (provider, key_id, day, used) VALUES (:provider, :key_id, :day, 1) "
    "ON CONFLICT (provider, key_id, day) DO UPDATE SET used = api_quota.used + 1 WHERE api_quota.used < :limit "
    "RETURNING used"
)


class QuotaStore:
    """Atomic take-one-request counters per (provider, key id, UTC day); safe across threads and processes."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def take(self, provider: str, key_id: str, day: date, limit: int) -> bool:
        """Count one request; False (and nothing counted) when ``limit`` is already used up."""
        if limit < 1:
            return False
        with translate_db_errors("updating api_quota"), self.engine.begin() as conn:
            return conn.execute(_TAKE, {"provider": provider, "key_id": key_id, "day": day, "limit": limit}).first() is not None

    def used(self, provider: str, key_id: str, day: date) -> int:
        q = sa.text("SELECT used FROM api_quota WHERE provider = :p AND key_id = :k AND day = :d")
        with translate_db_errors("reading api_quota"), self.engine.connect() as conn:
            return conn.execute(q, {"p": provider, "k": key_id, "d": day}).scalar() or 0
