"""--stream in one process, --streaming-status and --stop-streaming from others (and other directories)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from support import ROOT

MAIN = [sys.executable, str(ROOT / "main.py")]


def base_env(**extra: str) -> dict[str, str]:
    """The test's environment without any stream-state setting of the developer's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("STREAM_STATE_FILE", "XDG_STATE_HOME", "DATABASE_URL")}
    return {**env, **extra}


def test_stream_status_and_stop_from_other_processes_in_other_directories(tmp_path, sqlite_url):
    env = base_env(DATABASE_URL=sqlite_url, XDG_STATE_HOME=str(tmp_path / "state"))
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()

    def cli(*args, cwd=elsewhere):
        return subprocess.run([*MAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)

    assert json.loads(cli("--streaming-status").stdout)["is_running"] is False
    stream = subprocess.Popen([*MAIN, "--stream", "--symbols", "IBM", "MSFT", "--stream-interval", "0.01"], cwd=here, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline, status = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            status = json.loads(cli("--streaming-status").stdout)  # from another directory than the stream's
            if status["is_running"] and status["last_cycle"]:
                break
            time.sleep(0.3)
        assert status["is_running"] and status["pid"] == stream.pid
        assert status["state_file"] == str(tmp_path / "state" / "marketpoll" / "stream.json")
        assert status["last_cycle"]["status"] == "succeeded" and status["symbols"] == ["IBM", "MSFT"]
        assert status["next_cycle"] is not None and status["started_at"]
        assert not (here / "marketpoll-stream.json").exists()  # nothing in the working directory
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
    after = json.loads(cli("--streaming-status", cwd=here).stdout)
    assert after["is_running"] is False and after["stopped_at"]
    assert "no streaming process" in cli("--stop-streaming").stdout


def test_stream_max_iterations_ends_by_itself_state_under_home(tmp_path, sqlite_url):
    home = tmp_path / "home"
    env = base_env(DATABASE_URL=sqlite_url, HOME=str(home))  # no XDG_STATE_HOME: ~/.local/state
    r = subprocess.run([*MAIN, "--stream", "--symbols", "IBM", "--stream-interval", "0.005", "--stream-max-iterations", "2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total_iterations"] == 2
    state_file = home / ".local" / "state" / "marketpoll" / "stream.json"
    state = json.loads(state_file.read_text())
    assert state["is_running"] is False and state["last_cycle"]["status"] == "succeeded"
    assert oct(state_file.parent.stat().st_mode & 0o777) == oct(0o700)  # a private state directory
    # STREAM_STATE_FILE still overrides the state directory
    env.update(STREAM_STATE_FILE="my-stream.json")
    r = subprocess.run([*MAIN, "--stream", "--symbols", "IBM", "--stream-interval", "0.005", "--stream-max-iterations", "1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "my-stream.json").read_text())["started_at"] != state["started_at"]
    assert json.loads(state_file.read_text()) == state  # untouched


def test_help_says_stream_runs_in_the_foreground(tmp_path):
    r = subprocess.run([*MAIN, "--help"], cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=60)
    text = " ".join(r.stdout.split())
    start = text.index("--stream poll")  # the option's entry, not the usage line
    assert r.returncode == 0 and "runs in the foreground" in text[start : text.index("--streaming-status", start)]
