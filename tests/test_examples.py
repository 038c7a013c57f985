"""The example scripts run end to end (slow: they train two models on emulated hosts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "criteo" / "flat_vs_dmt.py"


@pytest.mark.slow
def test_flat_vs_dmt_example_writes_a_report(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--rows",
            "6000",
            "--towers",
            "2",
            "--ranks-per-host",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| flat |" in report and "| dmt dot c=4 |" in report
    assert (tmp_path / "report" / "curves.png").stat().st_size > 0
