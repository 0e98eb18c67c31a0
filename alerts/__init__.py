"""Alerts: rules in ``alert_rules`` evaluated on every committed load and once a minute, firings recorded in
``alert_events`` and delivered to webhooks and email off the loading path.

- :mod:`alerts.grammar`: the condition language (``TSLA close > 800``), parsed by hand;
- :mod:`alerts.base`: rules, firings, channels (the contracts);
- :mod:`alerts.evaluate`: pure evaluation (values, crossings, de-duplication, staleness, error rates);
- :mod:`alerts.store`: the tables; :mod:`alerts.deliver`: webhook, SMTP, the bounded delivery queue;
- :mod:`alerts.service`: the listener and the minute checker; :mod:`alerts.commands`: the CLI commands.
"""

from alerts.base import Firing, Rule, RuleKind, redact_webhook
from alerts.deliver import Deliverer, DeliveryPolicy, SmtpConfig
from alerts.grammar import Condition, format_condition, parse_condition
from alerts.service import AlertService, start_alerts
from alerts.store import AlertStore

__all__ = ["Condition", "parse_condition", "format_condition", "Rule", "RuleKind", "Firing", "redact_webhook",
           "AlertStore", "Deliverer", "DeliveryPolicy", "SmtpConfig", "AlertService", "start_alerts"]  # fmt: skip
