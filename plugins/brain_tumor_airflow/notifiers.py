"""Where alerts go: Airflow notifiers (SMTP, Slack, Apprise) chosen by settings.

The ``alert_*`` settings (``brain_tumor.settings``) are read when an alert is raised, never when a
DAG is parsed:

- ``BRAIN_TUMOR_ALERT_NOTIFIERS``: comma list of ``smtp``, ``slack``, ``apprise``; unset or
  empty: the log line is the whole alert.
- ``BRAIN_TUMOR_ALERT_SMTP_CONN_ID`` (``smtp_default``), ``BRAIN_TUMOR_ALERT_EMAIL_TO`` (comma
  list, required by ``smtp``), ``BRAIN_TUMOR_ALERT_EMAIL_FROM`` (default: the connection's
  ``from_email`` extra): ``SmtpNotifier`` of apache-airflow-providers-smtp.
- ``BRAIN_TUMOR_ALERT_SLACK_CONN_ID`` (``slack_api_default``), ``BRAIN_TUMOR_ALERT_SLACK_CHANNEL``
  (``#brain-tumor-alerts``): ``SlackNotifier`` of apache-airflow-providers-slack.
- ``BRAIN_TUMOR_ALERT_APPRISE_CONN_ID`` (``apprise_default``): ``AppriseNotifier`` of
  apache-airflow-providers-apprise.

The servers, tokens and passwords are Airflow connections (``AIRFLOW_CONN_<ID>`` or a secrets
backend) that the DAG processor (DAG failure callbacks) and the workers (task callbacks) can read.
The alert's text reaches a notifier through its context (``brain_tumor_alert``): the templates it
renders are fixed, so run ids and error messages are never read as Jinja.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

NOTIFIERS = ("smtp", "slack", "apprise")
CONTEXT_KEY = "brain_tumor_alert"
NOTICE = "Research use only — not for diagnosis."
PREFIX = "BRAIN_TUMOR_ALERT_"


def _default(name: str) -> Any:
    """The default of a setting (one definition: ``brain_tumor.settings.Settings``)."""
    from brain_tumor.settings import Settings

    return Settings.model_fields[name].default


@dataclass(frozen=True)
class AlertConfig:
    """The alert settings: which notifiers, and what each one needs."""

    notifiers: tuple[str, ...] = ()
    smtp_conn_id: str = _default("alert_smtp_conn_id")
    email_to: tuple[str, ...] = ()
    email_from: str | None = None
    slack_conn_id: str = _default("alert_slack_conn_id")
    slack_channel: str = _default("alert_slack_channel")
    apprise_conn_id: str = _default("alert_apprise_conn_id")


def _items(raw: str | None) -> tuple[str, ...]:
    """The non-empty, stripped items of a comma list, in order, without repeats."""
    return tuple(dict.fromkeys(item.strip() for item in (raw or "").split(",") if item.strip()))


def load_alert_config(env: Mapping[str, str] | None = None) -> AlertConfig:
    """The alert settings from the project's settings (default: this process's environment)."""
    from brain_tumor.settings import load_settings

    settings = load_settings(env=os.environ if env is None else env)
    raw = settings.alert_notifiers
    notifiers = tuple(dict.fromkeys(name.lower() for name in _items(raw)))
    unknown = [name for name in notifiers if name not in NOTIFIERS]
    if unknown:
        raise ValueError(f"{PREFIX}NOTIFIERS takes a comma list of {', '.join(NOTIFIERS)}; "
                         f"received {raw!r}")
    config = AlertConfig(
        notifiers=notifiers,
        smtp_conn_id=settings.alert_smtp_conn_id,
        email_to=_items(settings.alert_email_to),
        email_from=(settings.alert_email_from or "").strip() or None,
        slack_conn_id=settings.alert_slack_conn_id,
        slack_channel=settings.alert_slack_channel,
        apprise_conn_id=settings.alert_apprise_conn_id,
    )
    if "smtp" in notifiers and not config.email_to:
        raise ValueError(f"the smtp notifier needs {PREFIX}EMAIL_TO (comma list of addresses); "
                         f"received {settings.alert_email_to!r}")
    return config


def _show(value: Any) -> str:
    """A detail as text: lists joined by commas, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def compose(alert: dict[str, Any]) -> dict[str, str]:
    """Subject, plain text and HTML of an alert: what happened, where, and the notice."""
    what = alert["kind"].replace("_", " ")
    dag_id, run_id = alert.get("dag_id") or "unknown DAG", alert.get("run_id")
    subject = f"[brain-tumor] {what}: {dag_id}" + (f" run {run_id}" if run_id else "")
    fields = [("What", what), ("DAG", alert.get("dag_id")), ("Run", alert.get("run_id")),
              ("Link", alert.get("link")), ("At", alert.get("at")),
              *((key, value) for key, value in (alert.get("details") or {}).items()
                if value not in (None, "", [], {}))]
    text = "\n".join([alert["message"], "",
                      *(f"{name}: {_show(value)}" for name, value in fields), "", NOTICE])

    def cell(name: str, value: Any) -> str:
        if name == "Link" and value:
            return f'<a href="{html.escape(str(value))}">{html.escape(str(value))}</a>'
        return html.escape(_show(value))

    rows = "".join(f"<tr><th align=\"left\">{html.escape(str(name))}</th>"
                   f"<td>{cell(name, value)}</td></tr>" for name, value in fields)
    body = (f"<p>{html.escape(alert['message'])}</p><table>{rows}</table>"
            f"<p><em>{html.escape(NOTICE)}</em></p>")
    return {"subject": subject, "text": text, "html": body}


def _field(name: str) -> str:
    """A template that renders one field of the composed alert from the context."""
    return "{{ " + CONTEXT_KEY + "." + name + " }}"


def build_notifier(name: str, config: AlertConfig) -> Any:
    """The Airflow notifier called ``name``, its templates reading the alert from the context."""
    if name == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        return SmtpNotifier(to=list(config.email_to), from_email=config.email_from,
                            smtp_conn_id=config.smtp_conn_id, subject=_field("subject"),
                            html_content=_field("html"))
    if name == "slack":
        try:
            from airflow.providers.slack.notifications.slack import SlackNotifier
        except ImportError as exc:
            raise ValueError("the slack notifier needs apache-airflow-providers-slack "
                             f"installed: {exc}") from exc
        return SlackNotifier(slack_conn_id=config.slack_conn_id, channel=config.slack_channel,
                             text=_field("text"))
    if name == "apprise":
        try:
            from airflow.providers.apprise.notifications.apprise import AppriseNotifier
        except ImportError as exc:
            raise ValueError("the apprise notifier needs apache-airflow-providers-apprise "
                             f"installed: {exc}") from exc
        return AppriseNotifier(apprise_conn_id=config.apprise_conn_id, title=_field("subject"),
                               body=_field("text"))
    raise ValueError(f"unknown notifier {name!r} (known: {', '.join(NOTIFIERS)})")


def deliver(alert: dict[str, Any], context: Any = None,
            env: Mapping[str, str] | None = None) -> list[str]:
    """Hand the alert to each configured notifier; the names that took it (failures are logged)."""
    kind = alert.get("kind")
    try:
        config = load_alert_config(env)
    except ValueError:
        log.exception("brain-tumor alert [%s]: the alert notifiers are misconfigured", kind)
        return []
    if not config.notifiers:
        return []
    base = dict(context) if isinstance(context, Mapping) else {}
    base[CONTEXT_KEY] = compose(alert)
    delivered = []
    for name in config.notifiers:
        try:
            build_notifier(name, config)(dict(base))
        except Exception:  # an alert must never take the pipeline down with it
            log.exception("brain-tumor alert [%s]: the %s notifier failed", kind, name)
        else:
            delivered.append(name)
    return delivered
