"""--stream in one process, --streaming-status and --stop-streaming from others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from support import ROOT

MAIN = [sys.executable, str(ROOT / "main.py")]


def test_stream_status_and_stop_from_other_processes(tmp_path, sqlite_url):
    env = {**os.environ, "DATABASE_URL": sqlite_url}

    def cli(*args):
        return subprocess.run([*MAIN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    assert json.loads(cli("--streaming-status").stdout)["is_running"] is False
    stream = subprocess.Popen([*MAIN, "--stream", "--symbols", "IBM", "MSFT", "--stream-interval", "0.01"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline, status = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            status = json.loads(cli("--streaming-status").stdout)
            if status["is_running"] and status["last_cycle"]:
                break
            time.sleep(0.3)
        assert status["is_running"] and status["pid"] == stream.pid
        assert status["last_cycle"]["status"] == "succeeded" and status["symbols"] == ["IBM", "MSFT"]
        assert status["next_cycle"] is not None and status["started_at"]
        second = cli("--stream", "--symbols", "IBM")
        assert second.returncode == 2 and "already running" in second.stderr
        stopped = cli("--stop-streaming")
        assert stopped.returncode == 0 and f"stopped streaming process {stream.pid}" in stopped.stdout
        assert stream.poll() is not None, "--stop-streaming returns only once the process has exited"
    finally:
        try:
            out, err = stream.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stream.kill()
            raise
    assert stream.returncode == 0, f"exit {stream.returncode}; stderr tail:\n{err[-3000:]}\nstdout tail:\n{out[-1500:]}"
    results = json.loads(out)
    assert results["interrupted"] is True and results["successful_cycles"] >= 1
    after = json.loads(cli("--streaming-status").stdout)
    assert after["is_running"] is False and after["stopped_at"]
    assert "no streaming process" in cli("--stop-streaming").stdout


def test_stream_max_iterations_ends_by_itself(tmp_path, sqlite_url):
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    r = subprocess.run([*MAIN, "--stream", "--symbols", "IBM", "--stream-interval", "0.005", "--stream-max-iterations", "2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total_iterations"] == 2
    state = json.loads((tmp_path / "marketpoll-stream.json").read_text())
    assert state["is_running"] is False and state["last_cycle"]["status"] == "succeeded"
