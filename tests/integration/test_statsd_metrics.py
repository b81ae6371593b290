"""The pipeline's StatsD metrics, read back from a real StatsD daemon on loopback.

The daemon is Etsy's StatsD (the npm ``statsd`` package, installed by ``scripts/statsd.sh``),
started with a free UDP port, a free management port, a flush interval of an hour and
``deleteIdleStats: false``, so what it received stays in memory; the tests read it through the
management interface (``gauges``, ``counters``, ``timers``). Without node or npm the tests fail
under CI=true and skip elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import free_port, stop_process, unavailable

from brain_tumor import steps, telemetry
from brain_tumor.evaluation.gate import GateConfig, run_gate
from brain_tumor.scoring.batch import BatchPlan
from brain_tumor.settings import SettingsError, load_settings
from brain_tumor.store.datasets import utc_now
from brain_tumor.telemetry import Metric, StatsdClient

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def free_udp_port() -> int:
    """A UDP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _js_object(text: str) -> dict[str, Any]:
    """A Node ``util.inspect`` dump of a flat object of numbers or number lists, as a dict."""
    text = text.replace("'", '"')
    text = re.sub(r"([{,]\s*)([A-Za-z_$][\w$]*)\s*:", r'\1"\2":', text)
    return json.loads(text)


class Statsd:
    """A running StatsD daemon: its UDP port, and its management interface to read it."""

    def __init__(self, port: int, mgmt_port: int) -> None:
        self.port, self.mgmt_port = port, mgmt_port

    def admin(self, command: str) -> str:
        """The answer of one management command (up to its END line)."""
        with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=10) as conn:
            conn.sendall(command.encode() + b"\n")
            data = b""
            while b"END" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode().split("END", 1)[0].strip()

    def read(self, kind: str, prefix: str) -> dict[str, Any]:
        """The daemon's gauges, counters or timers whose names start with prefix + '.'."""
        return {k[len(prefix) + 1:]: v for k, v in _js_object(self.admin(kind)).items()
                if k.startswith(prefix + ".")}


@pytest.fixture(scope="module")
def statsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Statsd]:
    """Etsy's StatsD on loopback, installed when missing (scripts/statsd.sh)."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        unavailable("node and npm are needed for the StatsD daemon (Debian: nodejs npm)")
    proc = subprocess.run([str(REPO / "scripts" / "statsd.sh")], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        unavailable(f"scripts/statsd.sh failed (rc {proc.returncode}): {proc.stderr[-1500:]}")
    stats_js = Path(proc.stdout.strip().splitlines()[-1])
    work = tmp_path_factory.mktemp("statsd")
    daemon = Statsd(free_udp_port(), free_port())
    config = {"port": daemon.port, "address": "127.0.0.1", "mgmt_address": "127.0.0.1",
              "mgmt_port": daemon.mgmt_port, "flushInterval": 3_600_000,
              "deleteIdleStats": False, "backends": ["./backends/console"]}
    (work / "config.js").write_text(f"({json.dumps(config)})\n")
    log = (work / "statsd.log").open("wb")
    server = subprocess.Popen([node, str(stats_js), str(work / "config.js")],
                              cwd=stats_js.parent, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(daemon, server, work / "statsd.log")
        yield daemon
    finally:
        stop_process(server)
        log.close()


def _wait_until_up(daemon: Statsd, server: subprocess.Popen, log: Path) -> None:
    """Send a probe counter until the management interface shows it (UDP and TCP are up)."""
    probe = f"probe_{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"statsd exited with {server.returncode}: {log.read_text()[-2000:]}")
        StatsdClient("127.0.0.1", daemon.port, probe).send([Metric("up", 1, "c")])
        try:
            if daemon.read("counters", probe).get("up"):
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"statsd did not answer within {START_TIMEOUT_S}s: {log.read_text()[-2000:]}")


def _eventually(read: Callable[[], dict[str, Any]],
                done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """read() once done(it) holds, or after 10 s (UDP: the daemon handles a line a moment
    after the send returns)."""
    deadline = time.monotonic() + 10
    found = read()
    while not done(found) and time.monotonic() < deadline:
        time.sleep(0.1)
        found = read()
    return found


def _has(*names: str) -> Callable[[dict[str, Any]], bool]:
    return lambda found: set(names) <= set(found)


@pytest.fixture
def metric_settings(make_settings, statsd: Statsd):
    """Settings with S3 on moto and metrics to the daemon, under a prefix of their own."""
    return make_settings(statsd_host="127.0.0.1", statsd_port=statsd.port,
                         statsd_prefix=f"bt_{uuid.uuid4().hex[:8]}")


def _scored(study_id: str, tumor: bool, slices: int) -> dict[str, Any]:
    return {"study_id": study_id, "status": "scored", "tumor_present": tumor, "slices": slices,
            "max_probability": 0.9 if tumor else 0.1,
            "timings": {"read_s": 0.5, "model_s": 1.0, "write_s": 0.5}}


def test_finish_batch_sends_the_batch_figures(metric_settings, statsd):
    plan = BatchPlan("m-20260101T000000Z-abc", ["s1", "s2", "s3", "s4", "s5"]).as_dict()
    results = [_scored("s1", True, 20), _scored("s2", True, 20), _scored("s3", False, 20),
               {"study_id": "s4", "status": "quarantined", "reason": "bad_slice",
                "detail": "not a TIFF"}]  # s5 reported nothing: failed
    summary = steps.finish_batch(metric_settings, plan, results, "scheduled__1", utc_now())
    assert (summary["studies_scored"], summary["studies_quarantined"],
            summary["studies_failed"]) == (3, 1, 1)
    prefix = metric_settings.statsd_prefix
    counters = _eventually(lambda: statsd.read("counters", prefix),
                           _has("scoring.studies_scored", "scoring.studies_quarantined",
                                "scoring.studies_failed"))
    assert counters == {"scoring.studies_scored": 3, "scoring.studies_quarantined": 1,
                        "scoring.studies_failed": 1}
    gauges = _eventually(lambda: statsd.read("gauges", prefix),
                         _has("scoring.tumor_positive_share", "scoring.slices_per_second"))
    assert gauges["scoring.tumor_positive_share"] == pytest.approx(2 / 3)
    assert gauges["scoring.slices_per_second"] == pytest.approx(10.0)  # 60 slices in 6 s

    # a second batch adds to the counters and replaces the gauges
    steps.finish_batch(metric_settings, plan, [_scored(s, False, 10) for s in plan["study_ids"]],
                       "scheduled__2", utc_now())
    counters = _eventually(lambda: statsd.read("counters", prefix),
                           lambda found: found["scoring.studies_scored"] > 3)
    assert counters["scoring.studies_scored"] == 8
    assert counters["scoring.studies_failed"] == 1
    assert statsd.read("gauges", prefix)["scoring.tumor_positive_share"] == 0


def test_gate_checks_and_training_duration(metric_settings, statsd):
    candidate = {"roc_auc": 0.93, "sensitivity": 0.75, "specificity": 0.9,
                 "dice_per_patient_mean": 0.6, "dice_per_patient_median": 0.62,
                 "detection_rate": 0.9, "false_positive_slices_per_patient": 1.5, "ece": 0.04}
    result = run_gate(candidate, None, GateConfig.from_settings(metric_settings),
                      model_version="m-20260101T000000Z-abc")
    assert not result["passed"]  # sensitivity 0.75 < floor 0.80
    assert telemetry.report_gate(metric_settings, result) == 1 + 3 * len(result["checks"])
    assert telemetry.report_training(metric_settings, 12.5) == 1
    prefix = metric_settings.statsd_prefix
    gauges = _eventually(lambda: statsd.read("gauges", prefix),
                         _has("gate.passed", "gate.floor_dice.passed"))
    assert gauges["gate.passed"] == 0
    assert gauges["gate.floor_sensitivity.value"] == pytest.approx(0.75)
    assert gauges["gate.floor_sensitivity.bound"] == pytest.approx(0.80)
    assert gauges["gate.floor_sensitivity.passed"] == 0
    assert gauges["gate.floor_roc_auc.value"] == pytest.approx(0.93)
    assert gauges["gate.floor_roc_auc.passed"] == 1
    assert gauges["gate.floor_dice.value"] == pytest.approx(0.6)
    timers = _eventually(lambda: statsd.read("timers", prefix), _has("training.duration"))
    assert timers == {"training.duration": [12500]}


def test_a_negative_gauge_is_set_not_subtracted(statsd):
    prefix = f"bt_{uuid.uuid4().hex[:8]}"
    client = StatsdClient("127.0.0.1", statsd.port, prefix)
    assert client.send([Metric("level", 5, "g")]) == 1
    _eventually(lambda: statsd.read("gauges", prefix), _has("level"))
    assert client.send([Metric("level", -0.25, "g")]) == 2  # "level:0|g" then the value
    gauges = _eventually(lambda: statsd.read("gauges", prefix), lambda g: g["level"] not in (5, 0))
    assert gauges["level"] == -0.25


def test_metrics_never_raise(make_settings, caplog):
    caplog.set_level(logging.DEBUG, logger="brain_tumor.telemetry")
    summary = {"studies_scored": 1, "studies_quarantined": 0, "studies_failed": 0,
               "tumors_found": 1, "slices_scored": 4, "seconds": {"model_s": 2.0}}
    off = make_settings()
    assert off.statsd_host is None and telemetry.client(off) is None
    assert telemetry.report_batch(off, summary) == 0
    nowhere = make_settings(statsd_host="no-such-host.invalid")
    assert telemetry.report_batch(nowhere, summary) == 0
    assert "not sent" in caplog.text
    broken = make_settings(statsd_host="127.0.0.1", statsd_port=free_udp_port())
    assert telemetry.report_batch(broken, {"studies_scored": "many"}) == 0
    assert "batch metrics not built" in caplog.text
    # nobody listens on that port: UDP sends go out all the same
    assert telemetry.report_batch(broken, summary) == 5


def test_metric_lines_and_settings():
    assert telemetry.format_lines("bt", Metric("scoring.studies_scored", 3, "c")) == \
        ["bt.scoring.studies_scored:3|c"]
    assert telemetry.format_lines("", Metric("gate.floor dice/x", 0.5, "g")) == \
        ["gate.floor_dice_x:0.5|g"]
    assert telemetry.format_lines("bt", Metric("training.duration", 1500.0, "ms")) == \
        ["bt.training.duration:1500|ms"]
    with pytest.raises(ValueError, match="received 'h'"):
        telemetry.format_lines("bt", Metric("x", 1, "h"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="received nan"):
        telemetry.format_lines("bt", Metric("x", float("nan"), "g"))
    defaults = load_settings(env={})
    assert (defaults.statsd_host, defaults.statsd_port, defaults.statsd_prefix) == \
        (None, 8125, "brain_tumor")
    env = load_settings(env={"BRAIN_TUMOR_STATSD_HOST": "statsd-exporter",
                             "BRAIN_TUMOR_STATSD_PORT": "9125"})
    assert (env.statsd_host, env.statsd_port) == ("statsd-exporter", 9125)
    with pytest.raises(SettingsError, match="statsd_prefix"):
        load_settings(env={"BRAIN_TUMOR_STATSD_PREFIX": "brain tumor"})


def _mapping_regex(mapping: dict[str, Any]) -> re.Pattern:
    """A mapping's match as a regex (glob: ``*`` is one dot-free part of the name)."""
    if mapping.get("match_type") == "regex":
        return re.compile(mapping["match"])
    return re.compile(".".join("[^.]*" if part == "*" else re.escape(part)
                               for part in mapping["match"].split(".")))


def test_the_exporter_mapping_and_dashboard_cover_every_metric():
    """Each name the pipeline sends has a mapping in docker/monitoring/statsd-mapping.yaml, and
    the Grafana dashboard queries only metrics that mapping defines."""
    import yaml

    monitoring = REPO / "docker" / "monitoring"
    mappings = yaml.safe_load((monitoring / "statsd-mapping.yaml").read_text())["mappings"]
    gate = run_gate({"roc_auc": 0.9, "sensitivity": 0.9, "specificity": 0.9,
                     "dice_per_patient_mean": 0.6, "dice_per_patient_median": 0.6,
                     "detection_rate": 0.9, "false_positive_slices_per_patient": 1.0,
                     "ece": 0.05},
                    {"roc_auc": 0.9, "sensitivity": 0.9, "specificity": 0.9,
                     "dice_per_patient_mean": 0.6, "dice_per_patient_median": 0.6,
                     "detection_rate": 0.9, "false_positive_slices_per_patient": 1.0,
                     "ece": 0.05},
                    GateConfig.from_settings(load_settings(env={}, gate_max_fp_per_patient=2)),
                    model_version="m-2", champion_version="m-1")
    summary = {"studies_scored": 2, "studies_quarantined": 1, "studies_failed": 0,
               "tumors_found": 1, "slices_scored": 8, "seconds": {"model_s": 2.0}}
    metrics = [*telemetry.batch_metrics(summary), *telemetry.gate_metrics(gate),
               *telemetry.training_metrics(60.0)]
    names = {f"brain_tumor.{m.name}" for m in metrics}
    assert len(names) == 6 + 1 + 3 * 7  # 4 floors/ceilings + 3 no-regression checks
    first_match = {name: next((m["name"] for m in mappings
                               if _mapping_regex(m).fullmatch(name)), None) for name in names}
    assert None not in first_match.values(), sorted(n for n, m in first_match.items() if not m)
    assert first_match["brain_tumor.gate.passed"] == "brain_tumor_gate_passed"
    assert first_match["brain_tumor.gate.floor_dice.passed"] == "brain_tumor_gate_check_passed"
    assert first_match["brain_tumor.scoring.studies_failed"] == \
        "brain_tumor_scoring_studies_total"

    defined = {m["name"] for m in mappings}
    defined |= {f"{n}_{suffix}" for n in defined for suffix in ("bucket", "sum", "count")}
    dashboard = json.loads((monitoring / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\b(?:brain_tumor|airflow)_[a-z_]+", target["expr"])}
    assert queried and queried <= defined, sorted(queried - defined)
    assert {"brain_tumor_scoring_studies_total", "brain_tumor_gate_check_value"} <= queried


def test_the_settings_command_describes_each_setting(capsys, monkeypatch):
    from brain_tumor.cli import main

    for name in [n for n in os.environ if n.startswith("BRAIN_TUMOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BRAIN_TUMOR_STATSD_HOST", "statsd-exporter")
    monkeypatch.setenv("BRAIN_TUMOR_S3_ACCESS_KEY_ID", "AKIA-test")
    monkeypatch.setenv("BRAIN_TUMOR_S3_SECRET_ACCESS_KEY", "s3cr3t-value")
    assert main(["settings"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "statsd-exporter" in lines["BRAIN_TUMOR_STATSD_HOST"]
    assert "# StatsD server (UDP)" in lines["BRAIN_TUMOR_STATSD_HOST"]
    assert lines["BRAIN_TUMOR_STATSD_PORT"].split()[1:3] == ["8125", "#"]
    secret = lines["BRAIN_TUMOR_S3_SECRET_ACCESS_KEY"]
    assert secret.split()[1] == "***" and "# Secret of the access key." in secret
    assert main(["--json", "settings"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["statsd_host"] == "statsd-exporter" and data["s3_secret_access_key"] == "***"
    assert "s3cr3t-value" not in out
