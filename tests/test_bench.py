"""The benchmark's machinery at tiny sizes: shape of the results, no timing assertions."""

import json

import pytest
import torch

from lab.bench import REGISTRY, SECTIONS, interleave, render, run_bench, summary


def _stats(node, path=""):
    """Every {median, min, max} summary inside a results tree, with its path."""
    if isinstance(node, dict):
        if {"median", "min", "max"} <= set(node):
            yield path, node
        for k, v in node.items():
            yield from _stats(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _stats(v, f"{path}[{i}]")


def test_summary_and_interleave_order():
    calls = []
    out = interleave({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert calls == ["a", "b"] * 3
    assert out == {"a": [1.0] * 3, "b": [2.0] * 3}
    s = summary([3.0, 1.0, 2.0])
    assert (s["min"], s["median"], s["max"], s["n"]) == (1.0, 2.0, 3.0, 3)


def test_registry_renders_every_section_in_order():
    assert SECTIONS == ("harness", "utilisation", "looping", "data", "sweep", "compile", "gpu")
    for name, section in REGISTRY.items():
        assert callable(section.run), name
        assert section.render({"error": "boom"})[:3] == [section.TITLE, "", "This section failed: `boom`"]
    results = {"command": "lab bench", "quick": True, "total_time_s": 0.0, "section_time_s": {},
               "machine": {"cpu": "x", "cores": 1, "torch": "t", "lightning": "l", "python": "p"}}
    report = render(results)
    at = [report.index(section.TITLE) for section in REGISTRY.values()]
    assert at == sorted(at) and report.count("This section failed: `not run`") == len(SECTIONS)


@pytest.mark.slow  # every section at its quick size (half a minute); make bench is the real run
def test_quick_bench_writes_all_sections(tmp_path):
    out = tmp_path / "bench"
    rc = run_bench(quick=True, out_dir=out)
    res = json.loads((out / "results.json").read_text())
    errors = {k: res[k]["error"] for k in SECTIONS if "error" in res.get(k, {})}
    assert rc == 0, errors
    assert set(SECTIONS) <= set(res) and set(res["section_time_s"]) == set(SECTIONS)
    assert res["quick"] and res["command"] == f"lab bench --quick --out {out}"
    assert res["machine"]["threads"] == 1 and res["machine"]["cpu"]

    found = list(_stats(res))
    assert len(found) > 20
    for path, s in found:
        assert s["min"] <= s["median"] <= s["max"], path
        assert s["n"] == len(s["values"]) >= 1, path

    h = res["harness"]
    assert set(h["configs"]) == {"default", "large"}
    for c in h["configs"].values():
        assert c["ratio"] == pytest.approx(c["lab_step_s"]["median"] / c["plain_step_s"]["median"])
        assert c["overhead_s"] == pytest.approx(c["lab_step_s"]["median"] - c["plain_step_s"]["median"])
        assert c["lab_step_s"]["n"] == c["plain_step_s"]["n"] == c["reps"]
        assert set(c["plain_phases_s"]) >= {"data", "forward", "backward", "optimizer", "total"}
        assert set(c["lab_phases_s"]) >= {"loop+data", "forward", "backward", "clip+optimizer", "total"}
        assert c["lab_phases_s"]["total"]["n"] == c["reps"]
    assert h["met"] == (h["ratio_default"] <= h["target"])

    u = res["utilisation"]
    for label, c in u["configs"].items():
        assert c["train_flops_per_step"] > 0
        step = h["configs"][label]["lab_step_s"]["median"]
        assert c["achieved_flop_s_lab"] == pytest.approx(c["train_flops_per_step"] / step)
        assert c["fraction_of_square_lab"] == pytest.approx(c["achieved_flop_s_lab"] / u["square"]["flop_s"])
        assert {s["layer"] for s in c["gemm"]["shapes"]} == {"qkv", "proj", "fc", "out", "head"}

    lp = res["looping"]
    assert lp["orders"]["looped"] == [0] * lp["loops"]
    assert lp["orders"]["unrolled"] == list(range(lp["loops"]))
    assert lp["ratio"] == pytest.approx(lp["step_s"]["looped"]["median"] / lp["step_s"]["unrolled"]["median"])

    d = res["data"]
    assert set(d["tasks"]) == {"pointer", "induction", "word"}
    for t in d["tasks"].values():
        assert t["share"] == pytest.approx(t["sample_s"]["median"] / t["step_s"]["median"])

    sw = res["sweep"]
    assert set(sw["runs"]) == {"1x2", "2x1"}
    for r in sw["runs"].values():
        assert r["trials"] == 3 and r["trials_per_hour"] > 0  # tiny, one seed: 4 settings, one twin
    assert sw["speedup_2x1"] == pytest.approx(
        sw["runs"]["2x1"]["trials_per_hour"] / sw["runs"]["1x2"]["trials_per_hour"])

    c = res["compile"]
    if "error" not in c:
        assert c["speedup"] == pytest.approx(c["eager_step_s"]["median"] / c["compiled_step_s"]["median"])

    if torch.cuda.is_available():
        assert res["gpu"]["ran"] and (out / "gpu.md").exists()
    else:
        assert res["gpu"] == {"skipped": "no CUDA device is visible: the GPU section needs one"}
        assert not (out / "gpu.md").exists()  # written only when the section ran on a GPU

    report = (out / "report.md").read_text()
    for title in ("## 1. Harness overhead", "## 2. Utilisation", "## 3. Looping overhead",
                  "## 4. Data share", "## 5. Sweep throughput", "## 6. Compilation", "## 7. GPU"):
        assert title in report
    assert "failed" not in report
