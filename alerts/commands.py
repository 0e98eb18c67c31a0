"""The alert commands behind main.py's flags: ``--add-alert``, ``--show-alerts``, ``--remove-alert``.

Each returns an exit status; bad input raises :class:`~errors.ConfigError` (main.py: one line, exit 2).
``check_args`` is the command line's cross-flag validation (which flags go together), used by cli.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from alerts.base import Rule, RuleKind, check_alert_name, check_email, check_webhook
from alerts.grammar import format_condition, parse_condition
from alerts.store import AlertStore
from db import describe_url
from errors import ConfigError
from scheduler.calendar import Session

__all__ = ["run", "check_args", "rule_from_args", "ALERT_FLAGS"]

#: Flags that only mean something with ``--add-alert`` (argparse dest -> flag).
ALERT_FLAGS = {"condition": "--condition", "stale": "--stale", "after": "--after", "error_rate": "--error-rate",
               "above": "--above", "webhook": "--webhook", "email": "--email"}  # fmt: skip


def check_args(args: argparse.Namespace) -> str | None:
    """The first misuse of the alert flags as one line (``argument --after: ...``), or None if they fit."""
    given = [dest for dest in ALERT_FLAGS if getattr(args, dest, None) not in (None, [])]
    if not getattr(args, "add_alert", None):
        return f"argument {ALERT_FLAGS[given[0]]}: only with --add-alert" if given else None
    kinds = [f for f in ("condition", "stale", "error_rate") if f in given]
    if len(kinds) != 1:
        which = " and ".join(ALERT_FLAGS[k] for k in kinds) if kinds else "none of them"
        return f"argument --add-alert: give exactly one of --condition, --stale or --error-rate (got {which})"
    if "stale" in kinds and args.after is None:
        return "argument --after: required with --stale (minutes without a new bar)"
    if "after" in given and "stale" not in kinds:
        return "argument --after: only with --stale"
    if "error_rate" in kinds and args.above is None:
        return "argument --above: required with --error-rate (a share, e.g. 0.2)"
    if "above" in given and "error_rate" not in kinds:
        return "argument --above: only with --error-rate"
    if not args.webhook and not args.email:
        return "argument --add-alert: give --webhook URL and/or --email ADDRESS"
    return None


def rule_from_args(args: argparse.Namespace, store: AlertStore | None = None) -> Rule:
    """The rule ``--add-alert`` describes. A ``--stale`` subject naming a scheduled job (in ``store``) is that
    job; otherwise it must be a symbol, watched in ``--sessions`` of ``--exchange``. ConfigError if bad."""
    name = check_alert_name(args.add_alert)
    common = {"name": name, "webhook": check_webhook(args.webhook) if args.webhook else None,
              "emails": tuple(dict.fromkeys(check_email(e) for e in args.email or ()))}  # fmt: skip
    if args.condition is not None:
        text = args.condition if isinstance(args.condition, str) else format_condition(args.condition)
        return Rule(kind=RuleKind.CONDITION, condition=format_condition(parse_condition(text)), **common)
    if args.stale is not None:
        subject = args.stale.strip()
        if store is not None and store.job(subject) is not None:
            return Rule(kind=RuleKind.STALE, subject=subject, threshold=args.after, **common)
        return Rule(kind=RuleKind.STALE, subject=Rule.symbol_subject(subject), threshold=args.after,
                    exchange=args.exchange, sessions=tuple(args.sessions or ("regular",)), **common)  # fmt: skip
    return Rule(kind=RuleKind.ERROR_RATE, subject=args.error_rate, threshold=args.above, **common)


def run(app, args: argparse.Namespace) -> int:
    """Dispatch one alert command for ``app`` (engine, clock, calendars, settings)."""
    if args.add_alert:
        return _add(app, args)
    if args.show_alerts:
        return _show(app)
    return _remove(app, args.remove_alert)


def _add(app, args) -> int:
    rule = rule_from_args(args)  # bad input fails before any database work
    store = AlertStore(app.engine)
    if rule.kind is RuleKind.STALE:
        rule = rule_from_args(args, store)  # now knowing whether the subject is a job
        if rule.exchange:  # a symbol: its exchange must exist and have those sessions
            app.calendars.get(rule.exchange).next_window(app.clock.now(), frozenset(Session(s) for s in rule.sessions))
    stored, replaced = store.put(rule, app.clock.now())
    channels = [c for c in (stored.as_dict()["webhook"], ", ".join(stored.emails)) if c]
    print(f"{'replaced existing' if replaced else 'added'} alert {stored.name!r}: {stored.describe()} -> {'; '.join(channels)} "
          f"(in {describe_url(app.settings.database_url)}; the polling modes, --stream, --run-scheduled-jobs "
          "and --worker evaluate it)")  # fmt: skip
    if stored.emails and not (app.settings.env.get("SMTP_URL") or "").strip():
        print("main.py: warning: SMTP_URL is not set here: the process that evaluates this alert needs it to send email",
              file=sys.stderr)  # fmt: skip
    return 0


def _show(app) -> int:
    store = AlertStore(app.engine)
    rules, invalid = store.load()
    firing = {f.rule_id for f in store.open_firings()}
    last: dict[str, dict] = {}
    for event in store.events(limit=1000):
        last.setdefault(event["rule_name"], event)
    out = []
    for rule in rules:
        item = rule.as_dict()
        ev = last.get(rule.name)
        item["last_fired_at"] = ev["fired_at"].isoformat() if ev and ev["rule_id"] == rule.id else None
        item["last_value"] = str(ev["value"]) if ev and ev["rule_id"] == rule.id and ev["value"] is not None else None
        item["last_delivery"] = ev["delivery_status"] if ev and ev["rule_id"] == rule.id else None
        item["firing"] = rule.id in firing  # fired and not yet cleared (on some series)
        out.append(item)
    out += [{"name": bad.name, "error": bad.error} for bad in invalid]
    print(json.dumps(out, indent=2))
    return 0


def _remove(app, name: str) -> int:
    if AlertStore(app.engine).remove(check_alert_name(name)):
        print(f"removed alert {name!r}")
        return 0
    raise ConfigError(f"no alert named {name!r} (see --show-alerts)", name="alert", value=name)
