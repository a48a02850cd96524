"""The fixed cost of a sweep, kept low: what a command imports before it works (reading a
study needs neither torch nor Lightning, and `lab sweep` starts its workers without
Lightning, which each worker imports once, in parallel), and how a study's SQLite file
commits (write-ahead log: a trial commits some 50 times)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def loaded(*modules: str) -> dict[str, bool]:
    """Which heavy packages a fresh interpreter holds after importing `modules`."""
    code = (f"import sys\nfor m in {list(modules)!r}: __import__(m)\n"
            "import json; print(json.dumps({p: p in sys.modules for p in "
            "('torch', 'lightning', 'matplotlib', 'scipy')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return json.loads(out.stdout)


@pytest.mark.parametrize("modules,absent", [
    (("lab.cli", "lab.report.export", "lab.study.run", "lab.study.identity", "lab.study.journal"),
     ("torch", "lightning", "matplotlib", "scipy")),
    (("lab.report.write", "lab.report.compare", "lab.study.dashboard"), ("torch", "lightning")),
])
def test_reading_a_study_imports_no_torch_or_lightning(modules, absent):
    got = loaded(*modules)
    assert not any(got[p] for p in absent), got


def test_sqlite_study_commits_to_a_write_ahead_log(tmp_path):
    import sqlite3

    import optuna

    from lab.study.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=False)
    optuna.create_study(study_name="s", storage=storage).ask().set_user_attr("k", 1)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    # The journal mode is a property of the file: another program sees it too.
    assert sqlite3.connect(tmp_path / "s.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)
