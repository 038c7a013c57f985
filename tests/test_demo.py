"""`dmt demo` end to end: generate, partition, train flat and DMT on 2x2 emulated hosts, report."""

from __future__ import annotations

import json

import pytest

from dmt.cli import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--rows", "20000", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "| flat DLRM |" in out and "| DMT (TP towers, dot c=4) |" in out
    flat = json.loads((work / "flat/metrics.json").read_text())
    dmt = json.loads((work / "dmt/metrics.json").read_text())
    assert flat["world_size"] == dmt["world_size"] == 4
    # compressed towers must send fewer bytes across hosts than the flat model
    assert dmt["cross_host_bytes_per_sample"] < flat["cross_host_bytes_per_sample"]
    report = (work / "report/report.md").read_text()
    assert "curves.png" in report and (work / "report/curves.png").stat().st_size > 0
    assert (work / "plan.json").is_file() and (work / "towers.png").is_file()
