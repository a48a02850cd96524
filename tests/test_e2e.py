"""End to end on the shipped smoke study: minutes, so marked slow (make test-all runs it)."""

import json
from pathlib import Path

import pytest

from lab.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_smoke_study_learns_and_reports_a_verdict():
    assert main(["sweep", str(ROOT / "ablations" / "smoke.yaml")]) == 0
    summary = json.loads(Path("reports/smoke/summary.json").read_text())
    by = {s["setting"]: s for s in summary["settings"]}
    # One loop cannot do the two doublings 4 hops need; two loops can.
    assert by["looped, loops=1"]["mean"] < 0.7 < 0.95 < by["looped, loops=2"]["mean"]
    assert summary["verdicts"]["looped"].startswith("Gains level off at 2 loops")
    md = Path("reports/smoke/report.md").read_text()
    for section in ("## Results", "## Verdict", "## Cost", "## Why it levels off", "## Environment"):
        assert section in md
