"""The demo's progress lines, from `airflow dags test` output captured from real runs.

``airflow_dags_test_output.txt`` holds lines of Airflow 3.3's ``dags test`` output, unedited:
the demo's retrain_nightly run (the train task with its epoch lines), a mapped task of its
batch_score run, and a DAG whose task failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from brain_tumor.devtools.demo import DagTestProgress, format_duration

CAPTURED = Path(__file__).with_name("airflow_dags_test_output.txt")


def _shown(lines: list[str], now: float = 0.0) -> list[str]:
    progress = DagTestProgress()
    return [out for line in lines for out in progress.feed(line, now)]


def test_captured_output_becomes_task_epoch_and_run_lines():
    lines = CAPTURED.read_text().splitlines(keepends=True)
    assert _shown(lines) == [
        "  task find_new_exports started",
        "  task find_new_exports finished: success in 13.0s",
        "  task train started",
        "    classifier epoch 1/12: loss 0.7177, val_loss 0.7010, val_auc 0.5556",
        "    classifier epoch 2/12: loss 0.6678, val_loss 0.6579, val_auc 0.8333",
        "    segmenter epoch 1/12: loss 1.5546, val_loss 1.5716, val_dice_coefficient 0.0110",
        "    segmenter epoch 2/12: loss 1.3868, val_loss 1.4763, val_dice_coefficient 0.0131",
        "    segmenter epoch 12/12: loss 0.9660, val_loss 1.0470, val_dice_coefficient 0.0732",
        "  task train finished: success in 1m32s",
        "  DAG retrain_nightly finished: success in 2m43s",
        "  task score[0] started",
        "  task score[0] finished: success in 45.8s",
        "  DAG batch_score finished: success in 1m16s",
        "  task boom started",
        "  task boom finished: failed in 0.1s",
        "  DAG probe finished: failed in 9.2s",
    ]


def test_lines_without_a_time_stamp_take_the_clock_and_colors_are_ignored():
    progress = DagTestProgress()
    assert progress.feed("\x1b[32m[DAG TEST] starting task_id=gate map_index=-1\x1b[0m\n",
                         100.0) == ["  task gate started"]
    assert progress.feed("Task instance state updated new_state=skipped\n", 101.0) == []
    assert progress.feed("[DAG TEST] end task task_id=gate map_index=-1\n", 104.5) == \
        ["  task gate finished: skipped in 4.5s"]
    assert progress.feed("Epoch 3/10\n", 105.0) == ["    epoch 3/10"]
    assert progress.feed("[DAG TEST] end task task_id=other map_index=2\n", 106.0) == \
        ["  task other[2] finished: ended"]
    assert progress.feed("nothing to see\n", 107.0) == []


@pytest.mark.parametrize(("seconds", "text"), [(4.24, "4.2s"), (59.9, "59.9s"), (187, "3m07s"),
                                               (3720, "1h02m")])
def test_durations_read_for_people(seconds, text):
    assert format_duration(seconds) == text
