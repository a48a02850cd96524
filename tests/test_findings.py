"""The README's findings are generated from the committed reports' summary.json."""

import json
from pathlib import Path

from lab.cli import main
from lab.provenance import REPO
from lab.report.findings import BEGIN, END, findings_block, update_readme


def test_readme_findings_are_what_the_committed_reports_say():
    readme = REPO / "README.md"
    text = readme.read_text()
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == findings_block(REPO / "reports", REPO), (
        "README findings differ from reports/*/summary.json: run `lab findings`")
    assert not update_readme(readme, REPO / "reports", check=True)


def summary(study, objective, direction, settings, answer=None):
    out = {"study": study, "objective": objective, "direction": direction,
           "settings": [{"setting": k, "n": 3, "mean": v} for k, v in settings.items()]}
    if answer is not None:
        out["answer"] = answer
    return out


def write(root: Path, name: str, data: dict) -> None:
    (root / "reports" / name).mkdir(parents=True)
    (root / "reports" / name / "summary.json").write_text(json.dumps(data))


def test_generator_rounds_every_number_and_keeps_the_prose(tmp_path, capsys):
    write(tmp_path, "acc", summary("acc", "val/acc_token", "maximize",
                                   {"a": 0.55846, "b": 0.55896}))  # 55.8%, 55.9% (not 55.8%)
    write(tmp_path, "text", summary("text", "val/bpb", "minimize", {"x": 2.63348, "y": 2.7},
                                    answer=["**text**: levels off at x. Caveat: none."]))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Findings\n\nWritten by hand.\n\n{BEGIN}\nold numbers\n{END}\n\nAfter.\n")
    argv = ["findings", "--readme", str(readme)]
    assert main([*argv, "--check"]) == 1  # out of date
    assert main(argv) == 0
    text = readme.read_text()
    assert text.startswith("# Findings\n\nWritten by hand.\n\n") and text.endswith("\n\nAfter.\n")
    assert "old numbers" not in text
    lines = text[text.index(BEGIN):text.index(END)].splitlines()[1:]
    assert lines == [
        "- **acc** ([report](reports/acc/report.md); `val/acc_token`, higher is better; mean "
        "over 3 seeds): a 55.8%; b 55.9%. Best: b (55.9%).",
        "- **text** ([report](reports/text/report.md); `val/bpb`, lower is better; mean over 3 "
        "seeds): x 2.6335; y 2.7000. Best: x (2.6335).",
        "  - **text**: levels off at x. Caveat: none.",
    ]
    assert main([*argv, "--check"]) == 0
    capsys.readouterr()


def test_readme_without_markers_is_refused(tmp_path, capsys):
    write(tmp_path, "acc", summary("acc", "val/acc_token", "maximize", {"a": 0.5}))
    readme = tmp_path / "README.md"
    readme.write_text("# no block\n")
    assert main(["findings", "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert "has no findings block" in err and "Traceback" not in err
    assert readme.read_text() == "# no block\n"
