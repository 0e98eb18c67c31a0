"""Load benchmark: 1,000,000 bars through marketpoll's load path vs a raw psycopg2 COPY.

    python benchmarks/load_bench.py [--rows 1000000] [--symbols 1000] [--repeat 3]

Uses a scratch database (``marketpoll_bench``, created through BENCH_ADMIN_URL, default
``postgresql://postgres@127.0.0.1:5432/test``) holding ``bars`` (migrated) and ``bars_raw``
(an identical table). Prints rows/s (median of --repeat runs) for:

- raw COPY: psycopg2 ``copy_expert`` of the same bars into the empty ``bars_raw``; the text
  is built from the Bar objects inside the timing (same input as ours), and shown again
  with the text prebuilt (the database's floor);
- ours, empty table: :class:`etl.load.PostgresBarLoader`, three ways: one ``load`` for the
  whole set; ``load_many`` of 8 symbol batches at a time (what a cycle with 8 workers
  does: one transaction per group of arrived batches); one ``load`` (transaction) per symbol;
- ours, re-load: the same bars again, every one a conflict (raw COPY cannot do this: it fails on the key),
  by the loader that loaded them (it remembers what it committed: see :class:`etl.load.SeriesMemory`)
  and by a fresh loader (a restarted process: every bar compared with what is stored).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _scratch import scratch_database  # noqa: E402

from db.engine import make_engine  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.tables import BAR_KEY, BAR_VALUES  # noqa: E402
from etl.load import PostgresBarLoader, copy_text  # noqa: E402
from models.bar import Bar  # noqa: E402

DB = "marketpoll_bench"
COLS = ", ".join((*BAR_KEY, *BAR_VALUES, "adj_close"))  # the columns of copy_text, in its order


def make_bars(rows: int, symbols: int) -> list[list[Bar]]:
    per = rows // symbols
    t0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    stamps = [t0 + timedelta(minutes=5 * i) for i in range(per)]
    out = []
    for s in range(symbols):
        sym = f"S{s:05d}"
        batch = []
        for i, ts in enumerate(stamps):
            p = 100 + (s % 50) + (i % 97) / 100
            batch.append(
                Bar("bench", sym, "5min", ts, f"{p:.4f}", f"{p + 0.5:.4f}", f"{p - 0.5:.4f}", f"{p + 0.1:.4f}", str(1000 + i))
            )
        out.append(batch)
    return out


def setup() -> str:
    url = scratch_database(DB)
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE bars_raw (LIKE bars INCLUDING ALL)")
    engine.dispose()
    return url


def truncate(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE bars, bars_raw")
        cur.execute("CHECKPOINT")
    conn.commit()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--symbols", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    url = setup()
    engine = make_engine(url)
    batches = make_bars(args.rows, args.symbols)
    flat = [b for batch in batches for b in batch]
    n = len(flat)
    conn = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    prebuilt = copy_text(flat)

    def raw_copy(text_source):
        def run():
            with conn.cursor() as cur:
                cur.copy_expert(f"COPY bars_raw ({COLS}) FROM STDIN", io.StringIO(text_source()))
            conn.commit()

        return run

    def per_symbol(loader):
        for batch in batches:
            loader.load(batch)

    def groups_of_8(loader):
        for i in range(0, len(batches), 8):
            loader.load_many(batches[i : i + 8])

    def one(loader):
        loader.load(flat)

    modes = {"ours_sym": per_symbol, "ours_g8": groups_of_8, "ours_one": one}
    keys = ["raw", "raw_prebuilt"] + [k + suffix for k in modes for suffix in ("", "_reload", "_fresh")]
    results: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(args.repeat):
        truncate(conn)
        results["raw"].append(timed(raw_copy(lambda: copy_text(flat))))
        truncate(conn)
        results["raw_prebuilt"].append(timed(raw_copy(lambda: prebuilt)))
        for key, run in modes.items():
            truncate(conn)
            loader = PostgresBarLoader(engine)
            results[key].append(timed(lambda: run(loader)))  # noqa: B023 - called at once
            results[key + "_reload"].append(timed(lambda: run(loader)))  # noqa: B023
            results[key + "_fresh"].append(timed(lambda: run(PostgresBarLoader(engine))))  # noqa: B023
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM bars")
        assert cur.fetchone()[0] == n, "every bar loaded exactly once"
    conn.close()
    engine.dispose()

    rate = {k: n / statistics.median(v) for k, v in results.items()}
    print(f"{n:,} bars ({args.symbols} symbols x {n // args.symbols}), median of {args.repeat} runs, rows/s")
    print(f"  raw COPY (text built from the bars)        {rate['raw']:>12,.0f}")
    print(f"  raw COPY (text prebuilt)                   {rate['raw_prebuilt']:>12,.0f}")
    for label, key in (("one load", "ours_one"), ("groups of 8", "ours_g8"), ("per-symbol loads", "ours_sym")):
        print(
            f"  ours, {label:<17} empty table      {rate[key]:>12,.0f}   {rate[key] / rate['raw']:.2f}x raw  "
            f"({rate[key] / rate['raw_prebuilt']:.2f}x prebuilt)"
        )
        for suffix, what in (("_reload", "re-load"), ("_fresh", "re-load, fresh")):
            r = rate[key + suffix]
            print(f"  ours, {label:<17} {what:<16} {r:>12,.0f}   {r / rate['raw']:.2f}x raw  "
                  f"({r / rate['raw_prebuilt']:.2f}x prebuilt)")  # fmt: skip
    print("targets: >= 0.75x raw COPY on an empty table, >= 0.70x on a re-load")


if __name__ == "__main__":
    main()
