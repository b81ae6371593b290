"""The table of hostile inputs in docs/reliability.md names tests that exist, one row a kind."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
SECTION = "## Hostile inputs the suite exercises"
GOAL = 30  # kinds of hostile input the suite must exercise
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def catalogue(text: str) -> list[list[str]]:
    """The rows of the section's table, as lists of cells (header and rule left out)."""
    if SECTION not in text:
        raise ValueError(f"{SECTION!r} not found in the document")
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")]
            for line in body.splitlines() if line.startswith("| ")]
    return [row for row in rows[1:] if not row[0].startswith("---")]


def defines(source: str, name: str) -> bool:
    """Whether a Python source defines a test function of that name (at any indent)."""
    return re.search(rf"^\s*(async\s+)?def {re.escape(name)}\(", source, re.MULTILINE) is not None


def test_every_row_names_an_existing_test_and_a_reason():
    rows = catalogue(DOC.read_text())
    assert len(rows) >= GOAL, f"{len(rows)} kinds of hostile input, the goal is {GOAL}"
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
    sources: dict[str, str] = {}
    for number, what, where, reason, test in rows:
        assert what and where and reason, number
        refs = TEST_REF.findall(test)
        assert refs, f"row {number} names no test as `file::test`: {test!r}"
        for path, name in refs:
            if path not in sources:
                assert (REPO / path).is_file(), f"row {number}: {path} does not exist"
                sources[path] = (REPO / path).read_text()
            assert defines(sources[path], name), f"row {number}: {path} defines no {name}"


def test_the_stated_count_is_the_row_count():
    text = DOC.read_text()
    rows = catalogue(text)
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    stated = re.search(r"^(\d+) kinds\.", body, re.MULTILINE)
    assert stated and int(stated.group(1)) == len(rows)


def test_the_parser_sees_a_missing_test(tmp_path):
    text = (f"{SECTION}\n\n| # | input | refused by | reason | test |\n| --- | --- | --- | --- | "
            f"--- |\n| 1 | x | y | `z` | `tests/faults/test_hostile_catalogue.py::test_nope` |\n")
    [(_, _, _, _, test)] = catalogue(text)
    [(path, name)] = TEST_REF.findall(test)
    assert not defines((REPO / path).read_text(), name)
    assert defines((REPO / path).read_text(), "test_the_parser_sees_a_missing_test")
