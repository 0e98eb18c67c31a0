"""The seed's DataStreamingService: continuous polling in a background thread, visible to
(and stoppable from) other processes through a small state file.

The state file (JSON, replaced atomically) holds the streaming process's pid, start time,
symbols, interval, last cycle and next cycle. It lives in the per-user state directory,
``$XDG_STATE_HOME/marketpoll/stream.json`` (default ``~/.local/state/marketpoll/``; the
``STREAM_STATE_FILE`` setting overrides it), so ``--streaming-status`` and
``--stop-streaming`` find it from any working directory. ``status`` reads it and checks
the pid is alive; ``stop`` sends that pid SIGTERM and waits for the graceful shutdown
(in-flight batches commit or roll back, the cycle is recorded as interrupted).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from clock import Clock
from models.run import CycleResult
from scheduler.polling import PollingConfig, PollingManager

__all__ = ["DataStreamingService", "read_state", "pid_alive"]

log = logging.getLogger(__name__)


#: A process that started this long after a row's ``started_at`` cannot have written it (the two clocks
#: are the kernel's boot-relative ticks and the database's wall clock: a whole second of slack each way).
_PID_REUSE_SLACK_SECONDS = 2.0


def _process_start(pid: int, stat: str) -> float | None:
    """Process ``pid``'s start, Unix seconds, from its ``/proc/<pid>/stat`` text (field 22: clock ticks since boot)."""
    try:
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def pid_alive(pid: int, started_before: datetime | None = None) -> bool:
    """True while process ``pid`` runs; an exited process not yet reaped (a zombie) counts as gone.

    ``started_before`` (aware): also False when the process now holding ``pid`` started after that instant
    (more than :data:`_PID_REUSE_SLACK_SECONDS` after): the pid was reused, by a process or a thread, after
    the one that wrote a row died. PIDs wrap at ``/proc/sys/kernel/pid_max`` (often 32768) and threads use
    them too, so a busy host or a reboot reuses them soon.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    try:
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except IndexError:
        return True
    if started_before is not None:
        start = _process_start(pid, stat)
        if start is not None and start > started_before.timestamp() + _PID_REUSE_SLACK_SECONDS:
            return False
    return True


def read_state(path: Path) -> dict | None:
    """The state in ``path``, or None when there is none (no file or directory yet, or not JSON)."""
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return state if isinstance(state, dict) else None


class DataStreamingService:
    """Runs :meth:`PollingManager.continuous_polling` in a thread and publishes its state."""

    def __init__(self, manager: PollingManager, state_file: Path, *, clock: Clock) -> None:
        self.manager = manager
        self.state_file = state_file
        self.clock = clock
        self.results: dict | None = None
        self._thread: threading.Thread | None = None
        self._state: dict = {}
        self._lock = threading.Lock()

    def _write(self, **changes) -> None:
        with self._lock:
            self._state.update(changes)
            tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
            tmp.write_text(json.dumps(self._state, indent=2, default=str))
            os.replace(tmp, self.state_file)  # readers never see half a file

    def _on_cycle(self, cycle: CycleResult) -> None:
        last = {"started_at": cycle.started_at.isoformat(), "status": cycle.status.value,
                "rows_loaded": cycle.rows_loaded, "failed_symbols": [o.symbol for o in cycle.failed]}  # fmt: skip
        self._write(last_cycle=last)

    def _on_wait(self, due: datetime) -> None:
        self._write(next_cycle_at=due.isoformat())

    def start_streaming(self, config: PollingConfig) -> None:
        """Start polling in a background thread (returns at once)."""
        self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the XDG state directory is private
        self._write(pid=os.getpid(), is_running=True, started_at=self.clock.now().isoformat(), symbols=list(config.symbols),
                    interval_minutes=config.interval_minutes, max_iterations=config.max_iterations,
                    last_cycle=None, next_cycle_at=None, stopped_at=None)  # fmt: skip

        def run() -> None:
            try:
                self.results = self.manager.continuous_polling(config, on_cycle=self._on_cycle, on_wait=self._on_wait)
            finally:
                self._write(is_running=False, stopped_at=self.clock.now().isoformat(), next_cycle_at=None)

        self._thread = threading.Thread(target=run, name="streaming")
        self._thread.start()

    def wait(self, tick: Callable[[], None] = lambda: None, every_seconds: float = 1.0) -> dict | None:
        """Block until the streaming thread ends, calling ``tick`` (systemd watchdog) meanwhile."""
        assert self._thread is not None
        while self._thread.is_alive():
            tick()
            self._thread.join(every_seconds)
        return self.results

    def get_streaming_status(self) -> dict:
        """Seed-compatible status of this process's streaming thread."""
        return {
            "is_running": bool(self._thread and self._thread.is_alive()),
            "stop_event_set": self.manager.stop.is_set(),
            "thread_alive": bool(self._thread and self._thread.is_alive()),
            "timestamp": self.clock.now().isoformat(),
        }

    @staticmethod
    def status(state_file: Path) -> dict:
        """Status of the streaming process that owns ``state_file`` (from any process)."""
        state = read_state(state_file) or {}
        pid = state.get("pid")
        running = bool(state.get("is_running") and pid and pid_alive(pid))
        return {"is_running": running, "pid": pid if running else None, "started_at": state.get("started_at"),
                "symbols": state.get("symbols"), "interval_minutes": state.get("interval_minutes"),
                "last_cycle": state.get("last_cycle"), "next_cycle": state.get("next_cycle_at") if running else None,
                "stopped_at": state.get("stopped_at"), "state_file": str(state_file)}  # fmt: skip

    @staticmethod
    def stop(state_file: Path, timeout_seconds: float) -> tuple[bool, str]:
        """SIGTERM the streaming process and wait for it; (stopped, message)."""
        st = DataStreamingService.status(state_file)
        if not st["is_running"]:
            return False, "no streaming process is running"
        pid = st["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if not pid_alive(pid):  # the process has exited: its graceful stop is complete
                return True, f"stopped streaming process {pid}"
            time.sleep(0.1)
        return False, f"streaming process {pid} did not stop within {timeout_seconds:g}s"
