"""Bring a database's schema to the newest migration (Alembic, run from code)."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from db.engine import describe_url, is_postgres, translate_db_errors

__all__ = ["upgrade", "current_revision", "head_revision"]

log = logging.getLogger(__name__)
_SCRIPTS = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x6D6B7470  # pg advisory lock id: two processes starting at once migrate one after the other


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    with translate_db_errors(f"reading schema version of {describe_url(str(engine.url))}"), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine) -> None:
    """Apply every pending migration in one transaction. Idempotent; safe to call at each start.

    Raises :class:`~errors.LoadError` when the database cannot be reached or a migration fails.
    """
    if current_revision(engine) == head_revision():
        return
    with translate_db_errors(f"migrating {describe_url(str(engine.url))}"), engine.begin() as conn:
        if is_postgres(engine):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        cfg = _config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    log.info("schema of %s is at revision %s", describe_url(str(engine.url)), head_revision())
