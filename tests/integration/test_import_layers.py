"""The layers hold: no brain_tumor module imports Airflow, and the light stages need no TensorFlow.

Each check imports in a fresh interpreter, so what earlier tests imported cannot hide a leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: stages that the Airflow scheduler and light workers import: no Keras, no TensorFlow
LIGHT = ("brain_tumor.settings", "brain_tumor.steps", "brain_tumor.cli", "brain_tumor.store",
         "brain_tumor.ingest", "brain_tumor.scoring.batch", "brain_tumor.devtools.synth")
HEAVY = ("tensorflow", "keras", "jax", "torch")


def _imported_after(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_brain_tumor_module_imports_airflow() -> None:
    """Import every module of the package; not one airflow module may be loaded."""
    found = _imported_after(
        "import importlib, json, pkgutil, sys\n"
        "import brain_tumor\n"
        "found = pkgutil.walk_packages(brain_tumor.__path__, 'brain_tumor.')\n"
        "names = sorted(m.name for m in found)\n"
        "for name in names: importlib.import_module(name)\n"
        "print(json.dumps({'modules': names, 'airflow': sorted(m for m in sys.modules\n"
        "       if m == 'airflow' or m.startswith('airflow.'))}))\n")
    assert len(found["modules"]) > 30  # the walk really found the package
    assert "brain_tumor.scoring.contracts" in found["modules"]
    assert found["airflow"] == []


@pytest.mark.parametrize("module", LIGHT)
def test_light_stages_import_no_ml_framework(module: str) -> None:
    """The light stages and the facade load without TensorFlow, Keras or JAX."""
    found = _imported_after(
        f"import importlib, json, pkgutil, sys\n"
        f"mod = importlib.import_module({module!r})\n"
        f"for m in pkgutil.walk_packages(getattr(mod, '__path__', []), {module!r} + '.'):\n"
        f"    importlib.import_module(m.name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    assert found == []
