"""Alerts in a cluster: a ``--worker`` node evaluates the loads it runs, and a crossing is told from the stored
bars, not from what one node happened to load before (two AlertService instances on one PostgreSQL)."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from test_alerts import Hook, Series, _args, events, pipeline, service

from alerts.base import Rule, RuleKind
from alerts.store import AlertStore
from app import App
from db.tables import alert_events
from etl.redact import Redactor
from models.run import RunStatus
from settings import Settings


def test_a_crossing_seen_by_one_node_is_told_from_the_stored_bars(pg_engine, replay, manual_clock):
    db = pg_engine
    with db.begin() as conn:
        conn.execute(sa.delete(alert_events))
        conn.exec_driver_sql("DELETE FROM alert_rules")
    hook = Hook()
    try:
        AlertStore(db).put(Rule("cross", RuleKind.CONDITION, webhook=hook.url, condition="TSLA close crosses_above 800"),
                           manual_clock.now())  # fmt: skip
        first, second = service(db, manual_clock), service(db, manual_clock)  # two nodes, one database
        series = Series(replay)
        # the series' loads alternate between the nodes (as a cluster's chunks do): 810 -> 790 -> 805 -> 820.
        # The crossing (790 -> 805) is on a load only the second node sees; it loaded 810 before, the
        # first node 790 (so from what each saw: no crossing on the second, a false 790 -> 820 on the first)
        for node, close in ((second, "810"), (first, "790"), (second, "805"), (first, "820")):
            series.closes.append(close)
            result = pipeline(db, series.provider(), manual_clock, [node]).run_cycle(["TSLA"], "5min", job_name="t")
            assert result.status is RunStatus.SUCCEEDED and result.rows_loaded == 1
        for node in (first, second):
            assert node.deliverer.drain(5)
            node.close()
    finally:
        hook.close()
    assert [b["text"].split(" (")[0] for b in hook.bodies] == ["cross: TSLA close crossed above 800: 790 -> 805"]
    assert [(r["delivery_status"], r["attempts"]) for r in events(db)] == [("delivered", 1)]


class FakeNode:
    """Stands in for scheduler.cluster.ClusterNode: on start it runs one chunk through the App's pipeline,
    as a worker node runs a chunk another node queued."""

    workers = 1

    def __init__(self, app: App) -> None:
        self.app = app

    def start(self) -> None:
        result = self.app.pipeline("demo").run_cycle(["IBM"], "5min", job_name="chunk")
        assert result is not None and result.rows_loaded > 0
        self.app.stop.set()  # then the worker's loop ends at once

    def close(self, timeout_seconds=None) -> None:
        pass


def test_a_worker_node_evaluates_and_delivers_the_alerts_of_the_chunks_it_runs(sqlite_url, monkeypatch):
    hook = Hook()
    app = App(Settings.from_env({}, database_url=sqlite_url), Redactor(), threading.Event())
    monkeypatch.setattr(app, "_cluster_node", lambda role, stalled: FakeNode(app))
    try:
        app.alerts(_args("--add-alert", "ibm-up", "--condition", "IBM close > 0", "--webhook", hook.url))
        assert app.run_worker() == 0
    finally:
        app.close()  # the alert engine stops with the App, after delivering what is queued
        hook.close()
    assert [b["alert"]["rule"] for b in hook.bodies] == ["ibm-up"]
    assert [r["delivery_status"] for r in AlertStore(app.engine).events()] == ["delivered"]
