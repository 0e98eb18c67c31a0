"""Fan-out benchmark: 100 SSE + 100 WebSocket clients while cycles load 500 symbols into PostgreSQL.

    python benchmarks/fanout_bench.py                       # 500 symbols, 100 + 100 clients, 5 cycles
    python benchmarks/fanout_bench.py --symbols 500 --sse 100 --ws 100 --cycles 5 --every 2

A cycle is the steady state of a poller: each symbol's compact reply (its 100 newest 1-minute bars,
one of them new) is loaded by :class:`etl.load.PostgresBarLoader` in groups of ``--batch`` symbols
per transaction, as the pipeline does; each transaction NOTIFYs its series. The API server
(:class:`api.ApiServer`, its LISTEN connection, the hub, ``GET /events``, ``WS /ws``) runs in the
loading process, as with ``--api-port`` (``--api-process``: in a process of its own, to show what the
shared GIL costs); the clients run in another process (asyncio: raw HTTP/1.0 SSE streams, and lean
RFC 6455 WebSocket clients, or ``--ws-client websockets``, in the ``prices`` room, so each gets a
``bar`` and a ``price_update`` per symbol).

Measured:

- latency from each transaction's commit (the time its ``load_many`` returned) to each client's
  receipt of each bar event (SSE events; WebSocket ``bar`` messages), p50 / p99 / max, and the
  worst client's p99;
- load throughput (symbols loaded per second, a cycle's load time) and CPU per cycle (the whole
  loading process; its threads other than the loader's) without NOTIFY, with NOTIFY and no API
  server, with the API server and no subscriber, with the subscribers, then with no API server
  again (drift check); the cost is with subscribers vs the mean of the two "NOTIFY, no API".

Targets (issue 10): p50 < 50 ms, p99 < 250 ms, throughput cost < 10 %. Uses a scratch database
``marketpoll_fanout_bench`` (created through BENCH_ADMIN_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _scratch import scratch_database  # noqa: E402

DB = "marketpoll_fanout_bench"
T0 = datetime(2024, 3, 11, 13, 30, tzinfo=UTC)


def bars_for(symbols: list[str], newest_minute: int):
    from models.bar import Bar

    out = []
    for s in symbols:
        batch = []
        for m in range(newest_minute - 99, newest_minute + 1):
            p = 100 + (m % 37) / 10
            batch.append(Bar("demo", s, "1min", T0 + timedelta(minutes=m), f"{p:.4f}", f"{p + 0.5:.4f}", f"{p - 0.5:.4f}",
                             f"{p + 0.1:.4f}", str(1000 + m)))  # fmt: skip
        out.append(batch)
    return out


def run_cycle(loader, symbols: list[str], minute: int, batch: int, commits: dict | None) -> float:
    """Load one cycle; returns its load seconds; records each series' commit time (``time.time()``) in ``commits``."""
    batches = bars_for(symbols, minute)
    t0 = time.perf_counter()
    for i in range(0, len(batches), batch):
        group = batches[i : i + batch]
        results = loader.load_many(group)
        done = time.time()
        assert all(isinstance(r, int) for r in results), results
        if commits is not None:
            ts = (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
            for b in group:
                commits[(b[0].symbol, ts)] = done
    return time.perf_counter() - t0


# -- the clients' process -------------------------------------------------------------------------


def _events(receipts: list) -> int:
    return sum(raw.count(b"\r\ndata: ") if isinstance(raw, bytes) else 1 for _, raw in receipts)


def clients_main(port: int, n_sse: int, n_ws: int, conn, ws_client: str = "raw", nice: int = 0) -> None:
    if nice:  # on a shared machine, the clients (elsewhere in real life) yield the cores to the server measured
        import os

        os.nice(nice)
    asyncio.run(_clients(port, n_sse, n_ws, conn, ws_client))


async def _raw_ws(port: int, room: str):
    """A lean WebSocket client (RFC 6455 over asyncio streams): handshake, join ``room``; returns (reader, writer, send).

    Lean so that the clients' own CPU, on the same cores, takes as little as it can from the server measured."""
    import base64
    import os

    r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(f"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())  # fmt: skip
    status = await r.readline()
    assert b" 101 " in status, status
    while (await r.readline()).strip():
        pass

    def send(opcode: int, data: bytes) -> None:  # client frames are masked (a zero mask: the same bytes)
        assert len(data) < 126
        w.write(bytes((0x80 | opcode, 0x80 | len(data))) + b"\0\0\0\0" + data)

    send(0x1, json.dumps({"type": "join_room", "room": room}).encode())
    return r, w, send


def _frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The complete frames at the start of ``buf`` (server frames: unmasked) and the bytes they take."""
    out, i, n = [], 0, len(buf)
    while n - i >= 2:
        b1 = buf[i + 1] & 0x7F
        head = 2 if b1 < 126 else 4 if b1 == 126 else 10
        if n - i < head:
            break
        size = b1 if b1 < 126 else int.from_bytes(buf[i + 2 : i + head], "big")
        if n - i < head + size:
            break
        out.append((buf[i] & 0x0F, bytes(buf[i + head : i + head + size])))
        i += head + size
    return out, i


async def _clients(port: int, n_sse: int, n_ws: int, conn, ws_client: str) -> None:
    receipts: list[list[tuple[float, bytes | str]]] = [[] for _ in range(n_sse + n_ws)]
    ready = asyncio.Semaphore(0)

    async def sse(k: int) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        w.write(b"GET /events HTTP/1.0\r\nHost: bench\r\n\r\n")
        await w.drain()
        while (await r.readline()).strip():
            pass
        ready.release()
        out = receipts[k]
        rest = b""
        while chunk := await r.read(1 << 16):  # timestamp each chunk; split it into events later
            rest += chunk
            cut = rest.rfind(b"\r\n\r\n")
            if cut >= 0:
                out.append((time.time(), rest[: cut + 4]))
                rest = rest[cut + 4 :]

    async def ws_raw(k: int) -> None:
        r, w, send = await _raw_ws(port, "prices")
        buf, joined, out = bytearray(), False, receipts[k]
        while chunk := await r.read(1 << 16):
            at = time.time()
            buf += chunk
            frames, used = _frames(buf)
            del buf[:used]
            for opcode, data in frames:
                if opcode == 0x9:
                    send(0xA, data)
                elif opcode == 0x8:
                    return
                elif not joined:  # the snapshot, then "joined"
                    joined = data.startswith(b'{"type":"joined"')
                    if joined:
                        ready.release()
                elif data.startswith(b'{"type":"bar"'):
                    out.append((at, data.decode()))

    async def ws(k: int) -> None:
        import websockets

        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", compression=None, max_queue=None) as c:
            await c.send(json.dumps({"type": "join_room", "room": "prices"}))
            async for msg in c:  # the snapshot, then "joined"
                if msg.startswith('{"type":"joined"'):
                    break
            ready.release()
            out = receipts[k]
            async for msg in c:
                if msg.startswith('{"type":"bar"'):
                    out.append((time.time(), msg))

    tasks = [asyncio.create_task(sse(k)) for k in range(n_sse)]
    for k in range(n_ws):
        tasks.append(asyncio.create_task((ws_raw if ws_client == "raw" else ws)(n_sse + k)))
        await asyncio.sleep(0.005)
    for _ in range(n_sse + n_ws):
        await ready.acquire()
    conn.send("ready")
    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    commits, expected = await loop.run_in_executor(None, conn.recv)  # after the last cycle
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_events(r) < expected for r in receipts):
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    cpu = time.process_time() - cpu0
    per_client, counts = [], []
    for r in receipts:
        lat = []
        for at, raw in r:
            if isinstance(raw, bytes):  # SSE: whole events, "data: " lines
                texts = [line[6:].decode() for line in raw.split(b"\r\n") if line.startswith(b"data: ")]
            else:
                texts = [raw]
            for text in texts:
                data = json.loads(text)
                data = data["data"] if "type" in data else data
                c = commits.get((data["symbol"], data["ts"]))
                if c is not None:
                    lat.append(at - c)
        per_client.append(lat)
        counts.append(len(lat))
    conn.send((per_client, counts, cpu))


def api_main(url: str, symbols: list[str], conn) -> None:
    """``--api-process``: the API server in a process of its own (its own GIL), LISTENing like the in-process one."""
    from api import ApiServer, PollingStatus
    from clock import SystemClock
    from db import make_engine

    engine = make_engine(url)
    status = PollingStatus(mode="bench", job_name="bench", provider="demo", symbols=tuple(symbols), interval="1min",
                           clock=SystemClock(), engine=engine)  # fmt: skip
    api = ApiServer(status, engine=engine, clock=SystemClock())
    conn.send(api.port)
    conn.recv()  # stop
    stats = api.ctx.status()["live"]
    api.close()
    conn.send((stats, time.process_time()))


class _Remote:
    """The API server of ``--api-process``, as the benchmark uses it."""

    def __init__(self, url: str, symbols: list[str]) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.proc = multiprocessing.get_context("spawn").Process(target=api_main, args=(url, symbols, child))
        self.proc.start()
        self.port = self.conn.recv()
        self.cpu = float("nan")

    def close(self) -> dict:
        self.conn.send("stop")
        stats, self.cpu = self.conn.recv()
        self.proc.join(timeout=30)
        return stats


# -- the loading process ----------------------------------------------------------------------------


def main_thread_cpu() -> float:
    """CPU seconds of this process's main thread (the loader) so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        import os
        import threading

        with open(f"/proc/self/task/{threading.main_thread().native_id}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--sse", type=int, default=100)
    ap.add_argument("--ws", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--every", type=float, default=2.0, help="seconds from one cycle's start to the next's")
    ap.add_argument("--batch", type=int, default=10, help="symbols per load transaction")
    ap.add_argument("--ws-client", choices=("raw", "websockets"), default="raw",
                    help="the WebSocket clients: a lean RFC 6455 reader (default) or the websockets library")  # fmt: skip
    ap.add_argument("--client-nice", type=int, default=0,
                    help="niceness of the clients' process (0: an equal share of the cores; 19: only what the loading "
                         "process and the database leave idle, which delays the clients' receipts)")  # fmt: skip
    ap.add_argument("--api-process", action="store_true",
                    help="run the API server in a process of its own instead of a thread of the loading process "
                         "(not how marketpoll runs it: shows what the shared GIL costs)")  # fmt: skip
    args = ap.parse_args()

    import etl.load
    from api import ApiServer, PollingStatus
    from clock import SystemClock
    from db import make_engine, upgrade
    from etl.load import PostgresBarLoader

    url = scratch_database(DB)
    engine = make_engine(url)
    upgrade(engine)
    symbols = [f"S{i:04d}" for i in range(args.symbols)]
    loader = PostgresBarLoader(engine)
    minute = 200
    run_cycle(loader, symbols, minute, args.batch, None)  # the history, and the loader's memory
    minute += 1
    run_cycle(loader, symbols, minute, args.batch, None)  # warm: the steady state from here on

    cpu_of: dict[int, tuple[float, float]] = {}  # id(phase's times) -> CPU s per cycle: (whole process, other threads)

    def cycles(commits: dict | None) -> list[float]:
        nonlocal minute
        times = []
        cpu0, main0 = time.process_time(), main_thread_cpu()
        for _ in range(args.cycles):
            start = time.perf_counter()
            minute += 1
            times.append(run_cycle(loader, symbols, minute, args.batch, commits))
            time.sleep(max(0.0, args.every - (time.perf_counter() - start)))
        cpu = time.process_time() - cpu0
        cpu_of[id(times)] = (cpu / args.cycles, (cpu - (main_thread_cpu() - main0)) / args.cycles)
        return times

    notify = etl.load._notify_statements
    etl.load._notify_statements = lambda *a: []  # the loads without their NOTIFY: what NOTIFY itself costs
    quiet = cycles(None)
    etl.load._notify_statements = notify
    base1 = cycles(None)

    status = PollingStatus(mode="bench", job_name="bench", provider="demo", symbols=tuple(symbols), interval="1min",
                           clock=SystemClock(), engine=engine)  # fmt: skip
    api = _Remote(url, symbols) if args.api_process else ApiServer(status, engine=engine, clock=SystemClock())
    idle = cycles(None)  # the API server and its LISTEN connection, no subscriber
    parent, child = multiprocessing.Pipe()
    client_args = (api.port, args.sse, args.ws, child, args.ws_client, args.client_nice)
    proc = multiprocessing.get_context("spawn").Process(target=clients_main, args=client_args)
    proc.start()
    got = parent.recv() if parent.poll(120) else None
    assert got == "ready", f"clients did not connect: {got!r}"
    time.sleep(1.0)
    commits: dict = {}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    loaded = cycles(commits)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    parent.send((commits, args.cycles * args.symbols))
    per_client, counts, client_cpu = parent.recv()
    proc.join(timeout=30)
    if args.api_process:
        stats = api.close()
    else:
        stats = api.ctx.status()["live"]
        api.close()
    base2 = cycles(None)
    engine.dispose()

    def rate(times: list[float]) -> float:
        return args.symbols / statistics.median(times)

    all_lat = [x for c in per_client for x in c]
    sse_lat = [x for c in per_client[: args.sse] for x in c]
    ws_lat = [x for c in per_client[args.sse :] for x in c]
    expected = args.cycles * args.symbols
    base = (rate(base1) + rate(base2)) / 2
    cost = 1 - rate(loaded) / base
    ms = 1000.0
    print(f"fan-out: {args.symbols} symbols x {args.cycles} cycles (one new bar each, {args.batch} symbols per transaction), "
          f"{args.sse} SSE + {args.ws} WebSocket clients ({args.ws_client}, nice {args.client_nice}), "
          f"API {'in a process of its own' if args.api_process else 'in the loading process'}")  # fmt: skip
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'worst client p99':>17} {'received':>12}")
    for name, lat, group in (("commit -> receipt, all", all_lat, per_client), ("  SSE", sse_lat, per_client[: args.sse]),
                             ("  WebSocket (bar)", ws_lat, per_client[args.sse :])):  # fmt: skip
        worst = max((pct(c, 99) for c in group if c), default=float("nan"))
        got = sum(len(c) for c in group)
        print(f"{name:28} {pct(lat, 50) * ms:8.1f} {pct(lat, 99) * ms:8.1f} {max(lat, default=float('nan')) * ms:8.1f} "
              f"{worst * ms:17.1f} {got:>6}/{expected * len(group):<6}")  # fmt: skip
    print(f"{'load throughput':36} {'symbols/s':>10} {'cycle s (median)':>17} {'CPU s/cycle: process':>21} {'API threads':>12}")
    phases = (("no NOTIFY, no API", quiet), ("NOTIFY, no API (before)", base1), ("NOTIFY, API, no subscriber", idle),
              (f"NOTIFY, API, {args.sse + args.ws} subscribers", loaded), ("NOTIFY, no API (after)", base2))  # fmt: skip
    for name, times in phases:
        print(
            f"{name:36} {rate(times):10.0f} {statistics.median(times):17.3f} {cpu_of[id(times)][0]:21.3f} "
            f"{cpu_of[id(times)][1]:12.3f}"
        )
    print(f"cost of NOTIFY (no API vs no NOTIFY): {(1 - base / rate(quiet)) * 100:.1f} %; "
          f"of the API with no subscriber: {(1 - rate(idle) / base) * 100:.1f} %")  # fmt: skip
    print(f"throughput cost with subscribers (vs NOTIFY, no API): {cost * 100:.1f} %  (target < 10 %); "
          f"vs the API with no subscriber: {(1 - rate(loaded) / rate(idle)) * 100:.1f} %")  # fmt: skip
    where = "loader" if args.api_process else "loader + API"
    print(f"CPU over the {wall:.1f} s of the cycles with subscribers: loading process ({where}) {cpu:.1f} s, "
          f"client process {client_cpu:.1f} s, on {multiprocessing.cpu_count()} cores"
          + (f"; the API process {api.cpu:.1f} s over its whole life" if args.api_process else ""))  # fmt: skip
    print(
        f"targets: p50 {'ok' if pct(all_lat, 50) < 0.05 else 'MISSED'} (< 50 ms), "
        f"p99 {'ok' if pct(all_lat, 99) < 0.25 else 'MISSED'} (< 250 ms), throughput {'ok' if cost < 0.10 else 'MISSED'}"
    )
    print(f"hub: published {stats['published']}, dropped slow subscribers {stats['dropped_slow_subscribers']}, "
          f"WebSocket clients dropped {stats['ws_dropped_slow_clients']}; clients short of events: "
          f"{sum(1 for c in counts if c < expected)}")  # fmt: skip


if __name__ == "__main__":
    main()
