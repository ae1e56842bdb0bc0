"""Reliability beyond the fault matrix of tests/test_faults.py: commands that take `--set`
check the folder of the overridden grid."""

from __future__ import annotations

import pytest

from test_runner import kdbench, write_grid  # noqa: F401 (kdbench is a helper)


@pytest.mark.slow
def test_verify_with_set_checks_the_overridden_grids_folder(tmp_path):
    grid = write_grid(tmp_path, epochs=2, seeds=(0,), methods=("kd",))
    trained = kdbench("run", grid, "--device", "cpu", "--set", "schedule.epochs=1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr + trained.stdout
    with_set = kdbench("verify", grid, "--set", "schedule.epochs=1", cwd=tmp_path)
    assert with_set.returncode == 0, with_set.stderr
    assert with_set.stdout.strip().splitlines()[-1] == "verified 2 run folders: no problems"
    without = kdbench("verify", grid, cwd=tmp_path)
    assert without.stdout.strip().splitlines()[-1] == "verified 0 run folders: no problems"
