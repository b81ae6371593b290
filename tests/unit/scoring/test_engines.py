"""Engine helpers: batches spanning studies, per-study inputs, precision settings."""

from __future__ import annotations

import numpy as np
import pytest

from brain_tumor.scoring.contracts import RawPrediction
from brain_tumor.scoring.engines import (
    batch_bounds,
    check_precision,
    compile_graph,
    openvino_config,
    split_studies,
    studies_input,
    study_input,
)


@pytest.mark.parametrize(("total", "size", "expected"), [
    (40, 32, [20, 20]),
    (32, 32, [32]),
    (33, 32, [16, 17]),
    (88, 32, [29, 30, 29]),
    (7, 32, [7]),
    (0, 32, []),
])
def test_batch_bounds_are_as_few_and_as_even_as_possible(total, size, expected):
    bounds = batch_bounds(total, size)

    assert [b - a for a, b in bounds] == expected
    assert all(b1[1] == b2[0] for b1, b2 in zip(bounds, bounds[1:], strict=False))
    assert sum(b - a for a, b in bounds) == total


def test_batch_bounds_refuse_a_bad_size():
    with pytest.raises(ValueError, match="received batch_size=0"):
        batch_bounds(10, 0)


def test_studies_input_normalizes_each_study_on_its_own():
    rng = np.random.default_rng(0)
    dark = [rng.integers(0, 40, (24, 24, 3), dtype=np.uint8) for _ in range(3)]
    bright = [rng.integers(100, 255, (30, 30, 3), dtype=np.uint8) for _ in range(2)]

    x = studies_input([dark, bright], 16, "volume_percentile")

    assert x.shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(x[:3], study_input(dark, 16, "volume_percentile"))
    np.testing.assert_array_equal(x[3:], study_input(bright, 16, "volume_percentile"))


def test_studies_input_refuses_an_empty_study():
    with pytest.raises(ValueError, match=r"received slice counts \[1, 0\]"):
        studies_input([[np.zeros((8, 8, 3), np.uint8)], []], 8, "none")


def test_split_studies_gives_each_study_its_rows():
    raw = RawPrediction(np.arange(5.0), np.arange(5.0)[:, None, None] * np.ones((5, 2, 2)),
                        np.arange(10.0).reshape(5, 2))

    parts = split_studies(raw, [2, 3])

    assert [p.prob.tolist() for p in parts] == [[0.0, 1.0], [2.0, 3.0, 4.0]]
    assert parts[1].maps[0, 0, 0] == 2.0 and parts[1].features.tolist()[0] == [4.0, 5.0]
    with pytest.raises(ValueError, match="do not add up to the 5"):
        split_studies(raw, [2, 2])


def test_precision_maps_to_openvino_and_onnxruntime_refuses_bf16(tmp_path):
    assert openvino_config(0)["INFERENCE_PRECISION_HINT"] == "f32"
    assert openvino_config(2, "bf16") == {"PERFORMANCE_HINT": "LATENCY",
                                          "INFERENCE_PRECISION_HINT": "bf16",
                                          "INFERENCE_NUM_THREADS": "2"}
    check_precision("openvino", "bf16")
    with pytest.raises(ValueError, match="onnxruntime runtime computes in float32 only"):
        check_precision("onnxruntime", "bf16")
    with pytest.raises(ValueError, match="received 'f16'"):
        openvino_config(0, "f16")
    with pytest.raises(ValueError, match="float32 only"):
        compile_graph(tmp_path / "absent.onnx", "onnxruntime", 0, "bf16")
