"""The git record of a run: a report the lab wrote is not an uncommitted change of its code."""

import subprocess

import lab.provenance as prov


def git(cwd, *args):
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


def test_changed_reports_do_not_make_the_tree_dirty(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "report.md").write_text("old\n")
    (tmp_path / "model.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(prov, "REPO", tmp_path)
    info = prov.git_info.__wrapped__
    assert info()["dirty"] is False
    (tmp_path / "reports" / "report.md").write_text("new\n")  # a study wrote its report
    assert info()["dirty"] is False
    (tmp_path / "model.py").write_text("x = 2\n")  # the code changed
    assert info()["dirty"] is True
