"""Coverage benchmark: the completeness ledger over 500 symbols x 250 session dates of 1-minute bars.

    python benchmarks/coverage_bench.py [--symbols 500] [--days 250] [--repeat 3] [--cold-repeat 1]
                                        [--datasets full p20 hole] [--reuse] [--setup-only]

The coverage computation runs before job fires: the target is under 5 s for 500 symbols x 250
XNYS session dates of regular-session 1-minute bars (2024-01-02 to 2024-12-27: 96,960 expected
bars a symbol, three early closes included; 48.48M in all). The bars are generated in SQL
(``generate_series`` over the calendar's regular sessions, in UTC across the DST switches) into a
scratch database, ``marketpoll_coverage_bench`` (created through BENCH_ADMIN_URL, default
``postgresql://postgres@127.0.0.1:5432/test``; ``--reuse`` keeps the one a previous run filled),
one provider name per data set:

- ``full``: every expected bar (48.48M rows at 500 symbols);
- ``p20``: each expected bar with probability 0.2 (9.7M rows): every day incomplete, so every
  day is counted again on every run, and a fifth of them need the second pass (first gap);
- ``hole``: every bar but the one at 12:00 New York, each day, for 100 symbols (9.67M rows):
  every day incomplete, with one hole (located by the sum of offsets).

To generate fast, ``bars`` is made UNLOGGED and its primary key built after the load, then
``VACUUM ANALYZE`` (what is measured is reading; autovacuum keeps an insert-only table
all-visible the same way). Prints, per data set, the wall time of
:meth:`db.coverage.CoverageLedger.compute` over the whole range (calendar, counting, the
``coverage`` upsert, the returned rows), the clock standing after the last date:

- cold: the ledger emptied first (every day counted; median of ``--cold-repeat``);
- warm: run again (median of ``--repeat``): complete days are settled and not counted;
- warm, last date at 12:00: the clock on the last date's noon, so that day is in progress and
  counted on each run while the rest is settled;
- floor: the reading alone, one index-only ``count(*)`` per (symbol, date) pair over the same bars on
  the same two connections (no grid check, no first missing bar, no ledger, no rows): what any
  exact cold count costs on this machine;
- job check: what runs after each named-job fire (:mod:`reports.coverage_status`): every symbol on
  the 2 latest session dates, the last at 12:00, with those two dates' ledger rows emptied first
  (cold) and again (warm).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _scratch import ADMIN, scratch_database  # noqa: E402

from clock import ManualClock  # noqa: E402
from db.coverage import CoverageLedger, session_dates  # noqa: E402
from db.engine import make_engine  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from scheduler.calendar import Calendars, Session  # noqa: E402

DB = "marketpoll_coverage_bench"
EXCHANGE = "XNYS"
REGULAR = frozenset({Session.REGULAR})
#: name -> (fraction of the symbols used, fraction of the bars present, a bar left out each day or None)
DATASETS = {"full": (1.0, 1.0, None), "p20": (1.0, 0.2, None), "hole": (0.2, 1.0, 150)}

_GENERATE = """
INSERT INTO bars (provider, symbol, interval, ts, open, high, low, close, volume)
SELECT %(provider)s, s.sym, '1min', d.lo + make_interval(mins => m.i), 100.25, 100.75, 99.75, 100.5, 1000
FROM unnest(%(symbols)s::text[]) AS s(sym)
CROSS JOIN unnest(%(lo)s::timestamptz[], %(n)s::int[]) AS d(lo, n)
CROSS JOIN LATERAL generate_series(0, d.n - 1) AS m(i)
WHERE (%(fill)s >= 1.0 OR random() < %(fill)s) AND m.i IS DISTINCT FROM %(skip)s
"""


def trading_days(calendars: Calendars, count: int) -> list[date]:
    cal = calendars.get(EXCHANGE)
    return session_dates(cal, date(2024, 1, 2), date(2025, 12, 31))[:count]


def symbols_of(n: int) -> list[str]:
    return [f"S{i:04d}" for i in range(n)]


def generate(url: str, calendars: Calendars, days: list[date], n_symbols: int, datasets: list[str]) -> None:
    """Fill ``bars`` with the data sets, two connections at a time (one per core)."""
    dsn = url.replace("postgresql+psycopg2", "postgresql")
    cal = calendars.get(EXCHANGE)
    lo, n = [], []
    for d in days:
        td = cal.trading_day(d)
        lo.append(td.open)
        n.append(int((td.close - td.open).total_seconds() // 60))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE bars DROP CONSTRAINT bars_pkey")
        cur.execute("ALTER TABLE bars SET UNLOGGED")
    jobs = []
    for name in datasets:
        share, fill, skip = DATASETS[name]
        syms = symbols_of(max(1, int(n_symbols * share)))
        half = len(syms) // 2 or 1
        jobs += [(name, part, fill, skip) for part in (syms[:half], syms[half:]) if part]

    def run(job_list) -> None:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT setseed(0.42)")
            for name, part, fill, skip in job_list:
                cur.execute(_GENERATE, {"provider": name, "symbols": part, "lo": lo, "n": n, "fill": fill, "skip": skip})
                conn.commit()

    t = time.perf_counter()
    threads = [threading.Thread(target=run, args=(jobs[i::2],)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(f"generated bars in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '2GB'")
        cur.execute("SET max_parallel_maintenance_workers = 2")
        cur.execute("ALTER TABLE bars ADD CONSTRAINT bars_pkey PRIMARY KEY (provider, symbol, interval, ts)")
        cur.execute("VACUUM (ANALYZE) bars")
        cur.execute("SELECT provider, count(*) FROM bars GROUP BY provider ORDER BY provider")
        counts = cur.fetchall()
    conn.close()
    print(f"primary key and VACUUM ANALYZE in {time.perf_counter() - t:.0f} s; rows: "
          + ", ".join(f"{p} {c:,}" for p, c in counts), flush=True)  # fmt: skip


_FLOOR = """
SELECT p.ord, c.n FROM unnest(%(si)s::int[], %(gi)s::int[]) WITH ORDINALITY AS p(si, gi, ord)
CROSS JOIN LATERAL (SELECT count(*) AS n FROM bars b WHERE b.provider = %(provider)s AND b.interval = '1min'
    AND b.symbol = (%(symbols)s::text[])[p.si]
    AND b.ts BETWEEN (%(lo)s::timestamptz[])[p.gi] AND (%(last)s::timestamptz[])[p.gi]) c
"""


def count_floor(engine, provider: str, syms: list[str], calendars: Calendars, days: list[date]) -> None:
    """The floor: count the pairs' bars through the primary key, two statements at once, nothing else."""
    cal = calendars.get(EXCHANGE)
    lo = [cal.trading_day(d).open for d in days]
    last = [cal.trading_day(d).close - timedelta(minutes=1) for d in days]
    half = (len(syms) + 1) // 2

    def run(part: list[int]) -> None:
        si = [i + 1 for i in part for _ in days]
        gi = [j + 1 for _ in part for j in range(len(days))]
        with engine.connect() as conn:
            conn.exec_driver_sql(_FLOOR, {"si": si, "gi": gi, "symbols": syms, "lo": lo, "last": last,
                                          "provider": provider}).fetchall()  # fmt: skip

    threads = [threading.Thread(target=run, args=(p,)) for p in (list(range(half)), list(range(half, len(syms)))) if p]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def job_check(ledger: CoverageLedger, engine, provider: str, syms: list[str], days: list[date], clock) -> tuple[float, float]:
    """(cold, warm) seconds of the after-fire check: the 2 latest dates, the last at 12:00 New York."""
    clock.set(datetime.combine(days[-1], datetime.min.time(), tzinfo=UTC) + timedelta(hours=17))
    out = []
    for empty in (True, False):
        if empty:
            with engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM coverage WHERE provider = %s AND session_date >= %s", (provider, days[-2]))
        t = time.perf_counter()
        ledger.compute(provider, syms, "1min", days[-2], days[-1], exchange=EXCHANGE, sessions=REGULAR)
        out.append(time.perf_counter() - t)
    return out[0], out[1]


def setup(reuse: bool) -> tuple[str, bool]:
    """The scratch database's URL, and whether it already holds the data (``--reuse``)."""
    if reuse:
        dsn = psycopg2.extensions.parse_dsn(ADMIN)
        try:
            conn = psycopg2.connect(**{**dsn, "dbname": DB})
        except psycopg2.OperationalError:
            pass
        else:
            with conn.cursor() as cur:
                cur.execute("SELECT exists(SELECT 1 FROM bars)")
                full = cur.fetchone()[0]
            conn.close()
            if full:
                return f"postgresql+psycopg2://{dsn.get('user', 'postgres')}@{dsn.get('host', '127.0.0.1')}:" \
                       f"{dsn.get('port', 5432)}/{DB}", True  # fmt: skip
    url = scratch_database(DB)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--days", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=3, help="warm runs")
    ap.add_argument("--cold-repeat", type=int, default=1, help="cold runs (the ledger emptied before each)")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--reuse", action="store_true", help="keep the scratch database a previous run filled")
    ap.add_argument("--setup-only", action="store_true")
    args = ap.parse_args()

    calendars = Calendars()
    days = trading_days(calendars, args.days)
    url, filled = setup(args.reuse)
    if not filled:
        generate(url, calendars, days, args.symbols, args.datasets)
    if args.setup_only:
        return
    engine = make_engine(url)
    clock = ManualClock(datetime.combine(days[-1] + timedelta(days=2), datetime.min.time(), tzinfo=UTC))
    ledger = CoverageLedger(engine, calendars, clock)
    print(f"{EXCHANGE} regular session, 1min, {days[0]} .. {days[-1]} ({len(days)} session dates); "
          f"cold: median of {args.cold_repeat} (ledger emptied first), warm: median of {args.repeat}", flush=True)  # fmt: skip
    for name in args.datasets:
        share, _, _ = DATASETS[name]
        syms = symbols_of(max(1, int(args.symbols * share)))

        def run() -> list:
            return ledger.compute(name, syms, "1min", days[0], days[-1], exchange=EXCHANGE, sessions=REGULAR)  # noqa: B023

        cold, warm = [], []
        for _ in range(args.cold_repeat):
            with engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM coverage WHERE provider = %s", (name,))
            t = time.perf_counter()
            rows = run()
            cold.append(time.perf_counter() - t)
        for _ in range(args.repeat):
            t = time.perf_counter()
            rows = run()
            warm.append(time.perf_counter() - t)
        expected = sum(r.expected for r in rows)
        loaded = sum(r.loaded for r in rows)
        after = clock.now()
        clock.set(datetime.combine(days[-1], datetime.min.time(), tzinfo=UTC) + timedelta(hours=17))  # 12:00 New York
        live = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            run()
            live.append(time.perf_counter() - t)
        clock.set(after)
        floor = []
        for _ in range(args.cold_repeat):
            t = time.perf_counter()
            count_floor(engine, name, syms, calendars, days)
            floor.append(time.perf_counter() - t)
        job = job_check(ledger, engine, name, syms, days, clock)
        clock.set(after)
        print(f"  {name:<5} {len(syms):>4} symbols x {len(days)} dates = {len(rows):>7,} ledger rows, {expected:>11,} bars "
              f"expected, {loaded:>11,} loaded", flush=True)  # fmt: skip
        print(f"        cold {statistics.median(cold):6.2f} s ({', '.join(f'{x:.2f}' for x in cold)}); "
              f"warm {statistics.median(warm):6.2f} s ({', '.join(f'{x:.2f}' for x in warm)}); "
              f"warm, last date at 12:00 {statistics.median(live):6.2f} s ({', '.join(f'{x:.2f}' for x in live)})",
              flush=True)  # fmt: skip
        ratio = statistics.median(cold) / statistics.median(floor)
        print(f"        floor {statistics.median(floor):5.2f} s (cold / floor {ratio:.2f}); "
              f"job check, 2 dates: cold {job[0]:.2f} s, warm {job[1]:.2f} s", flush=True)  # fmt: skip
    engine.dispose()
    print("target: under 5 s for 500 symbols x 250 session dates of 1-minute bars")


if __name__ == "__main__":
    main()
