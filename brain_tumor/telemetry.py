"""The pipeline's figures as StatsD metrics: plain UDP lines, the channel Airflow's own use.

Off unless ``statsd_host`` is set. A line is ``<prefix>.<name>:<value>|<kind>`` with kind ``g``
(gauge), ``c`` (counter) or ``ms`` (timing). Sending never raises: metrics are a side channel,
and a failure to send (no such host, a full buffer) is logged at debug level and dropped.

Names, under the prefix (default ``brain_tumor``):

- ``scoring.studies_scored|quarantined|failed`` (c): studies of each scoring batch
- ``scoring.tumor_positive_share`` (g): share of a batch's scored studies with a tumor
- ``scoring.slices_per_second`` (g): slices scored per second of read + model + write time
- ``scoring.studies_out_of_distribution`` (c): scored studies flagged out of distribution
- ``scoring.drift.ood_score_psi|probability_psi`` (g): a batch's drift against the validation
  slices (population stability index), when the batch summary has it
- ``gate.<check>.value|bound|passed`` (g): each gate check of a candidate; ``gate.passed`` (g)
- ``training.duration`` (ms): one training run, end to end
"""

from __future__ import annotations

import logging
import math
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

from brain_tumor.settings import Settings

log = logging.getLogger(__name__)

Kind = Literal["g", "c", "ms"]
KINDS = ("g", "c", "ms")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Metric(NamedTuple):
    """One figure to send: its name under the prefix, its value and its StatsD kind."""

    name: str
    value: float
    kind: Kind


def clean_name(name: str) -> str:
    """A metric name StatsD servers accept: characters other than letters, digits, '_.-' become
    '_'."""
    return _UNSAFE.sub("_", name).strip(".")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_lines(prefix: str, metric: Metric) -> list[str]:
    """The StatsD lines of one metric (a negative gauge is set to 0 first: StatsD reads a signed
    gauge value as a change)."""
    if metric.kind not in KINDS:
        raise ValueError(f"metric kind must be one of {KINDS}, received {metric.kind!r}")
    value = float(metric.value)
    if not math.isfinite(value):
        raise ValueError(f"metric {metric.name!r} needs a finite value, received {value!r}")
    name = clean_name(f"{prefix}.{metric.name}" if prefix else metric.name)
    if not name:
        raise ValueError(f"metric name is empty, received {metric.name!r}")
    line = f"{name}:{_number(value)}|{metric.kind}"
    if metric.kind == "g" and value < 0:
        return [f"{name}:0|g", line]
    return [line]


def batch_metrics(summary: Mapping[str, Any]) -> list[Metric]:
    """The figures of one scoring batch summary (``batch_summary`` record)."""
    scored = int(summary["studies_scored"])
    metrics = [Metric("scoring.studies_scored", scored, "c"),
               Metric("scoring.studies_quarantined", int(summary["studies_quarantined"]), "c"),
               Metric("scoring.studies_failed", int(summary["studies_failed"]), "c")]
    if summary.get("studies_out_of_distribution"):  # a counter: nothing to add when none
        metrics.append(Metric("scoring.studies_out_of_distribution",
                              int(summary["studies_out_of_distribution"]), "c"))
    for name, found in ((summary.get("drift") or {}).items()):
        if isinstance(found, Mapping) and found.get("psi") is not None:
            metrics.append(Metric(f"scoring.drift.{name}_psi", float(found["psi"]), "g"))
    if scored:
        metrics.append(Metric("scoring.tumor_positive_share",
                              int(summary["tumors_found"]) / scored, "g"))
    busy_s = sum(float(v) for v in (summary.get("seconds") or {}).values())
    if summary.get("slices_scored") and busy_s > 0:
        metrics.append(Metric("scoring.slices_per_second",
                              round(int(summary["slices_scored"]) / busy_s, 3), "g"))
    return metrics


def gate_metrics(result: Mapping[str, Any]) -> list[Metric]:
    """Each check of a gate result (``gate_result`` record): value, bound and 1/0 passed."""
    metrics = [Metric("gate.passed", int(bool(result["passed"])), "g")]
    for check in result["checks"]:
        for field in ("value", "bound"):
            if check.get(field) is not None:
                metrics.append(Metric(f"gate.{check['name']}.{field}", check[field], "g"))
        metrics.append(Metric(f"gate.{check['name']}.passed", int(bool(check["passed"])), "g"))
    return metrics


def training_metrics(seconds: float) -> list[Metric]:
    """The duration of one training run."""
    return [Metric("training.duration", round(seconds * 1000.0, 1), "ms")]


class StatsdClient:
    """Sends metrics as StatsD lines over UDP, one datagram per line."""

    def __init__(self, host: str, port: int, prefix: str = "") -> None:
        self.host, self.port, self.prefix = host, port, prefix

    def send(self, metrics: Iterable[Metric]) -> int:
        """Send the metrics; returns how many lines went out. Never raises."""
        sent = 0
        try:
            lines = [line for m in metrics for line in format_lines(self.prefix, m)]
            if not lines:
                return 0
            family, _, _, _, address = socket.getaddrinfo(self.host, self.port,
                                                          type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                for line in lines:
                    sock.sendto(line.encode("ascii"), address)
                    sent += 1
        except Exception as exc:  # metrics never stop the pipeline
            log.debug("StatsD metrics to %s:%s not sent (%d sent before): %s: %s", self.host,
                      self.port, sent, type(exc).__name__, exc)
        return sent


def client(settings: Settings) -> StatsdClient | None:
    """The StatsD client of the settings; None when ``statsd_host`` is unset."""
    if not settings.statsd_host:
        return None
    return StatsdClient(settings.statsd_host, settings.statsd_port, settings.statsd_prefix)


def emit(settings: Settings, metrics: Iterable[Metric]) -> int:
    """Send metrics to the settings' StatsD server, if any; returns the lines sent. Never
    raises."""
    statsd = client(settings)
    return 0 if statsd is None else statsd.send(metrics)


def _report(settings: Settings, what: str, build: Callable[[], list[Metric]]) -> int:
    statsd = client(settings)
    if statsd is None:
        return 0
    try:
        metrics = build()
    except Exception as exc:  # metrics never stop the pipeline
        log.debug("%s metrics not built: %s: %s", what, type(exc).__name__, exc)
        return 0
    return statsd.send(metrics)


def report_batch(settings: Settings, summary: Mapping[str, Any]) -> int:
    """Send the figures of a scoring batch summary; returns the lines sent. Never raises."""
    return _report(settings, "batch", lambda: batch_metrics(summary))


def report_gate(settings: Settings, result: Mapping[str, Any]) -> int:
    """Send each check of a gate result; returns the lines sent. Never raises."""
    return _report(settings, "gate", lambda: gate_metrics(result))


def report_training(settings: Settings, seconds: float) -> int:
    """Send the duration of a training run; returns the lines sent. Never raises."""
    return _report(settings, "training", lambda: training_metrics(seconds))
