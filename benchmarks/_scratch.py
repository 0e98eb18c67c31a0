"""A scratch PostgreSQL database for a benchmark (created through BENCH_ADMIN_URL, dropped first)."""

from __future__ import annotations

import os

import psycopg2

ADMIN = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def scratch_database(name: str) -> str:
    """(Re)create database ``name`` and return its SQLAlchemy URL (psycopg2 driver)."""
    admin = psycopg2.connect(ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    dsn = psycopg2.extensions.parse_dsn(ADMIN)
    return f"postgresql+psycopg2://{dsn.get('user', 'postgres')}@{dsn.get('host', '127.0.0.1')}:{dsn.get('port', 5432)}/{name}"
