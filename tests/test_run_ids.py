"""Run ids never change across upgrades: a finished run must never be trained again.

`tests/fixtures/pinned_grids/` holds copies of the shipped grids (as they were when pinned)
and a grid using every feature that reaches a run config; `run_ids.json` holds their run
ids and teacher training ids. The shipped grids may change on purpose; these copies don't.
"""

import json
import sys
from pathlib import Path

import pytest

PINNED = Path(__file__).parent / "fixtures" / "pinned_grids"
sys.path.insert(0, str(PINNED))
from make_pins import pins  # noqa: E402

EXPECTED = json.loads((PINNED / "run_ids.json").read_text())


@pytest.mark.parametrize("grid_file", sorted(EXPECTED))
def test_run_ids_of_the_pinned_grids_are_unchanged(grid_file):
    assert pins()[grid_file] == EXPECTED[grid_file]
