"""The Redactor shared between threads: secrets added (each minute's alert reload) while others redact."""

from __future__ import annotations

import sys
import threading

from etl.redact import MASK, Redactor


def test_redacting_while_secrets_are_added_never_raises():
    redactor = Redactor([f"EARLYSECRET{n:04d}" for n in range(200)])  # a set this size takes a while to walk
    errors: list[BaseException] = []
    go = threading.Event()
    adding_done = threading.Event()

    def redact() -> None:
        go.wait(5)
        try:
            while not adding_done.is_set():
                assert "EARLYSECRET0007" not in redactor("GET /x?q=EARLYSECRET0007 failed")
        except BaseException as exc:  # noqa: BLE001 - the failure is reported by the main thread
            errors.append(exc)

    def add() -> None:
        go.wait(5)
        try:
            for n in range(3000):
                redactor.add(f"LATESECRET{n:05d}")
        finally:
            adding_done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows within the bound
    try:
        threads = [threading.Thread(target=redact) for _ in range(3)] + [threading.Thread(target=add)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert redactor("LATESECRET02999 and EARLYSECRET0199") == f"{MASK} and {MASK}"


def test_a_secret_containing_another_is_masked_whole():
    redactor = Redactor(["ABCDEF", "ABCDEFGHIJ"])
    assert redactor("token ABCDEFGHIJ") == f"token {MASK}"
    redactor.add("ABCDEF")  # again: kept once
    assert redactor("ABCDEF") == MASK
