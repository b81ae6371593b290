"""The promotion gate: a candidate's headline metrics against floors and against the champion.

Pure functions, no I/O. ``run_gate`` returns a ``gate_result`` record listing every check with
its value, bound and outcome; ``explain`` turns the failed checks into one line each.

The champion's metrics handed to ``run_gate`` must be the champion re-evaluated on the
CANDIDATE's test patients (the same dataset version), not the champion's stored metrics: numbers
measured on different patients are not comparable, and a no-regression check on them is
meaningless.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from brain_tumor.evaluation.catalog import HEADLINE_KEYS, NO_REGRESSION, metric
from brain_tumor.settings import Settings
from brain_tumor.store.schemas import validate_record

#: absorbs float noise such as 0.90 - 0.02 == 0.8800000000000001
_EPS = 1e-9


@dataclass(frozen=True)
class GateConfig:
    """Floors, the optional false-positive ceiling and the allowed drop against the champion."""

    min_sensitivity: float
    min_roc_auc: float
    min_dice: float
    max_fp_per_patient: float | None
    tolerance: float

    @classmethod
    def from_settings(cls, settings: Settings) -> GateConfig:
        """The gate configured by the ``gate_*`` settings."""
        return cls(min_sensitivity=settings.gate_min_sensitivity,
                   min_roc_auc=settings.gate_min_roc_auc,
                   min_dice=settings.gate_min_dice,
                   max_fp_per_patient=settings.gate_max_fp_per_patient,
                   tolerance=settings.gate_tolerance)


def _value(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics[name]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {name!r} must be a number or None, received "
                         f"{type(value).__name__} {value!r:.60}")
    return float(value)


def _check_keys(metrics: Any, who: str) -> None:
    if not isinstance(metrics, dict):
        raise ValueError(f"{who} metrics must be a headline dict, received "
                         f"{type(metrics).__name__}")
    missing = [k for k in HEADLINE_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"{who} metrics lack {missing} (pass steps.headline(metrics)); "
                         f"received keys {sorted(metrics)}")


def _op(name: str) -> str:
    """The comparison a value of the metric must pass against its bound."""
    return ">=" if metric(name).higher_is_better else "<="


def _check(name: str, kind: str, metric_name: str, value: float | None, bound: float | None,
           note: str | None = None, **extra: Any) -> dict[str, Any]:
    op = _op(metric_name)
    if value is None:
        passed, note = False, note or f"{metric_name} is undefined on these patients"
    elif bound is None:
        passed = False
    elif op == ">=":
        passed = value >= bound - _EPS
    else:
        passed = value <= bound + _EPS
    return {"name": name, "kind": kind, "metric": metric_name, "value": value, "bound": bound,
            "op": op, "passed": passed, "note": note, **extra}


def run_gate(candidate: dict[str, Any], champion: dict[str, Any] | None, config: GateConfig, *,
             model_version: str, champion_version: str | None = None) -> dict[str, Any]:
    """Check a candidate's headline metrics; return a validated ``gate_result`` record.

    ``champion`` is the champion's headline metrics on the candidate's test patients (see the
    module docstring), or None for the first model, which faces the floors only.
    """
    _check_keys(candidate, "candidate")
    if champion is None and champion_version is not None:
        raise ValueError(f"champion_version {champion_version!r} given without champion metrics: "
                         "the no-regression checks would be skipped")
    limits = [("floor_sensitivity", "sensitivity", config.min_sensitivity),
              ("floor_roc_auc", "roc_auc", config.min_roc_auc),
              ("floor_dice", "dice_per_patient_mean", config.min_dice)]
    if config.max_fp_per_patient is not None:
        limits.append(("ceiling_fp_per_patient", "false_positive_slices_per_patient",
                       config.max_fp_per_patient))
    checks = [_check(name, "floor" if _op(m) == ">=" else "ceiling", m, _value(candidate, m),
                     bound) for name, m, bound in limits]
    if champion is not None:
        _check_keys(champion, "champion")
        for name in NO_REGRESSION:
            ref = _value(champion, name)
            sign = 1.0 if _op(name) == ">=" else -1.0
            bound = None if ref is None else ref - sign * config.tolerance
            note = None if ref is not None else (
                f"the champion's {name} is undefined on these patients: cannot compare")
            checks.append(_check(f"no_regression_{name}", "no_regression", name,
                                 _value(candidate, name), bound, note,
                                 champion_value=ref, tolerance=config.tolerance))
    result = {"model_version": model_version, "champion_version": champion_version,
              "passed": all(c["passed"] for c in checks), "checks": checks,
              "config": asdict(config)}
    return validate_record("gate_result", result)


def _fmt(value: float | None) -> str:
    if value is None:
        return "undefined"
    text = f"{value:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac:0<2}"


def explain(result: dict[str, Any]) -> str:
    """One human-readable line per failed check (or a one-line all-clear)."""
    lines = []
    for c in result["checks"]:
        if c["passed"]:
            continue
        name, value, bound = c["metric"], c["value"], c["bound"]
        if value is None or bound is None:
            lines.append(f"{name} {_fmt(value)}: fails {c['kind']} check ({c.get('note')})")
        elif c["kind"] == "floor":
            lines.append(f"{name} {_fmt(value)} < floor {_fmt(bound)}")
        elif c["kind"] == "ceiling":
            lines.append(f"{name} {_fmt(value)} > ceiling {_fmt(bound)}")
        else:
            worse, sign = ("<", "-") if c["op"] == ">=" else (">", "+")
            lines.append(f"{name} {_fmt(value)} {worse} champion "
                         f"{_fmt(c.get('champion_value'))} {sign} tolerance "
                         f"{_fmt(c.get('tolerance'))} = {_fmt(bound)}")
    if not lines:
        return f"passed: all {len(result['checks'])} checks"
    return "\n".join(lines)
