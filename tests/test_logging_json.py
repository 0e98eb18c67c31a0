"""--log-format json: every line on stderr is a JSON object with a level and a message (real processes).

The one exception, by design: the usage error ``main.py: error: ...`` (exit 2) stays one plain line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ALPHA_VANTAGE", "DATABASE_URL", "LOG_"))}


def _run(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "--log-format", "json"], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def json_records(stderr: str, *, plain_allowed: tuple[str, ...] = ()) -> list[dict]:
    """Every stderr line as a record (each must be a JSON object with a level and a message), but
    lines in ``plain_allowed``."""
    records = []
    for line in stderr.splitlines():
        if line in plain_allowed:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"plain line on stderr in JSON mode: {line!r}\n--- stderr:\n{stderr}") from None
        assert isinstance(rec, dict) and {"level", "message"} <= rec.keys(), line
        records.append(rec)
    return records


def test_polling_with_a_failing_symbol_logs_only_json(tmp_path):
    r = _run(tmp_path, "--continuous-poll", "--symbols", "IBM", "INVALIDX", "--poll-interval", "0.01",
             "--poll-max-iterations", "2")  # fmt: skip
    assert r.returncode == 1, r.stderr  # a partial cycle
    records = json_records(r.stderr)
    assert json.loads(r.stdout)["failures_total"] == 2  # the result on stdout is untouched
    summaries = [rec for rec in records if rec["logger"] == "marketpoll.stderr"]
    assert [rec["level"] for rec in summaries] == ["ERROR", "ERROR"]
    assert summaries[0]["message"].startswith("cycle 1: symbol INVALIDX failed: demo: invalid call or symbol 'INVALIDX'")


def test_backfill_with_a_failing_symbol_logs_only_json(tmp_path):
    r = _run(tmp_path, "--backfill", "--provider", "demo", "--symbols", "IBM", "INVALIDX", "--interval", "1day",
             "--start", "2024-01-01", "--end", "2024-03-01")  # fmt: skip
    assert r.returncode == 1, r.stderr
    records = json_records(r.stderr)
    assert json.loads(r.stdout)["mode"] == "backfill"
    failed = [rec for rec in records if rec["message"].startswith("backfill: symbol INVALIDX failed")]
    assert len(failed) == 1 and failed[0]["level"] == "ERROR", records
    assert any(rec["logger"] == "etl.history" for rec in records)  # the progress lines are records too


def test_the_usage_error_stays_one_plain_line(tmp_path):
    r = _run(tmp_path, "--remove-job", "nosuch")
    assert r.returncode == 2
    usage = "main.py: error: no job named 'nosuch'"
    assert r.stderr.splitlines().count(usage) == 1
    assert json_records(r.stderr, plain_allowed=(usage,))  # the rest (the migration's line) is JSON


def test_the_scheduler_and_its_api_log_only_json(tmp_path):
    sched = _run(tmp_path, "--schedule-market-job", "fast", "--job-symbols", "IBM", "--job-interval", "0.02",
                 "--exchange", "24/7")  # fmt: skip
    assert sched.returncode == 0, sched.stderr
    json_records(sched.stderr)
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--run-scheduled-jobs", "--api-port", "0",
                             "--log-format", "json", "--log-level", "DEBUG"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    cycled = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "cycle job=fast" in line:
                cycled.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert cycled.wait(60), "\n".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reader.join(10)
    assert proc.returncode == 0, "\n".join(lines)
    records = json_records("\n".join(lines))
    assert {"scheduler.jobs", "etl.pipeline", "scheduler.shutdown"} <= {rec["logger"] for rec in records}


def test_warnings_thread_crashes_and_stray_prints_become_records(tmp_path):
    # configure_logging itself, in a real interpreter: what a library might put on stderr
    code = textwrap.dedent(f"""
        import sys, threading, warnings
        sys.path.insert(0, {str(ROOT)!r})
        import logs
        from etl.redact import Redactor
        logs.configure_logging("INFO", Redactor(["s3cret-value"]), "json")
        warnings.warn("a library warning")
        print("main.py: warning: something to know", file=sys.stderr)
        print("a stray line with s3cret-value in it", file=sys.stderr)
        t = threading.Thread(target=lambda: 1 / 0, name="worker-1")
        t.start(); t.join()
        sys.stderr.write("no newline at exit")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    records = json_records(r.stderr)
    by_message = {rec["message"].strip(): rec for rec in records}
    assert "s3cret-value" not in r.stderr
    assert by_message["something to know"]["level"] == "WARNING"
    assert by_message["a stray line with *** in it"]["level"] == "INFO"
    assert by_message["no newline at exit"]["logger"] == "marketpoll.stderr"
    warned = [rec for rec in records if rec["logger"] == "py.warnings"]
    assert len(warned) == 1 and "a library warning" in warned[0]["message"] and warned[0]["level"] == "WARNING"
    crash = [rec for rec in records if "worker-1" in rec["message"]]
    assert len(crash) == 1 and "ZeroDivisionError" in crash[0]["exc_info"]


def test_text_mode_after_json_mode_gives_back_the_real_stderr(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import logs
        from etl.redact import Redactor
        real = sys.stderr
        logs.configure_logging("INFO", Redactor(), "json")
        assert sys.stderr is not real
        logs.configure_logging("INFO", Redactor(), "json")  # configured twice: still one layer
        assert sys.stderr.raw is real
        logs.configure_logging("INFO", Redactor(), "text")
        assert sys.stderr is real
        print("plain again", file=sys.stderr)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "plain again\n", r.stderr


def test_a_thread_crash_in_text_mode_is_logged_redacted(tmp_path):
    code = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        import logs
        from etl.redact import Redactor
        logs.configure_logging("INFO", Redactor(["s3cret-value"]), "text")
        def boom():
            raise RuntimeError("GET https://api.example.test/q?apikey=s3cret-value failed")
        t = threading.Thread(target=boom, name="worker-2")
        t.start(); t.join()
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "s3cret-value" not in r.stderr
    assert "CRITICAL marketpoll: uncaught exception in thread worker-2" in r.stderr and "RuntimeError" in r.stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_log_call_survives_a_stderr_that_is_gone(tmp_path, fmt):
    """The reader of stderr exited (`... 2>&1 | head`, a lost journal stream): logging must not raise into
    the caller (in JSON mode its error report used to come back through the wrapper: RecursionError)."""
    code = textwrap.dedent(f"""
        import logging, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        r, w = os.pipe()
        os.close(r)
        sys.stderr = os.fdopen(w, "w", buffering=1)
        import logs
        from etl.redact import Redactor
        logs.configure_logging("INFO", Redactor(), {fmt!r})
        for _ in range(3):
            logging.getLogger("x").warning("hello")
        print("survived", flush=True)
        os._exit(0)  # not Python's exit: flushing the dead stderr at shutdown would make it 120
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "survived", (r.stdout[-500:], r.stderr[-2000:])
