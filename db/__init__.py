"""Database: engine and error translation, tables, migrations, the etl_runs ledger."""

from db.engine import describe_url, make_engine
from db.ledger import RunLedger
from db.migrate import upgrade
from db.rejects import RejectStore

__all__ = ["make_engine", "describe_url", "upgrade", "RunLedger", "RejectStore"]
