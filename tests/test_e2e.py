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
    # Hops 1-4 in every batch: one loop solves the short chains only, two loops more of them.
    assert by["looped, loops=2"]["mean"] > by["looped, loops=1"]["mean"] + 0.05
    assert summary["verdicts"]["looped"].startswith(("Gains", "Inconclusive"))
    md = Path("reports/smoke/report.md").read_text()
    for section in ("## Results", "## Verdict", "## Accuracy by difficulty", "## Protocol",
                    "## Cost", "## Why it levels off", "## Environment"):
        assert section in md
    assert "**Largest hops solved**" in md.split("## What was compared")[0]  # the headline
