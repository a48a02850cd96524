"""What a committed report was made from: the study as an Optuna journal beside the report.

At the end of a sweep, ``write_journal`` copies the study and its tuning studies
(``<study>/tune/<setting>``), with every trial, parameter, intermediate value and user
attribute, into ``reports/<study>/study.jsonl``: Optuna's journal format (one JSON operation
per line, read by ``optuna.load_study``, ``JournalFileBackend`` and optuna-dashboard), small
and text, so it can be committed with the report. The lines are written in one go and
without the writer's random worker id, so the same study gives the same file.

When a study's own storage does not exist (a fresh clone has no ``studies/``),
:func:`lab.study.identity.load_existing_study` reads the study from this file instead
(:func:`read_journal`): into memory, never writing the committed file back.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalStorage

from lab.study.storage import silence_optuna

JOURNAL_NAME = "study.jsonl"
WORKER_ID = "lab-journal"  # in place of the writer's random id: the same study, the same file


def report_folder(study_name: str) -> Path:
    """reports/<study>: where a study's report, its exports and its journal go."""
    return Path("reports") / study_name


def journal_path(study_name: str) -> Path:
    """reports/<study>/study.jsonl: beside the study's report."""
    return report_folder(study_name) / JOURNAL_NAME


class MemoryJournal(BaseJournalBackend):
    """Journal operations held in memory: what is appended is never written anywhere."""

    def __init__(self, logs: list[dict[str, Any]] | None = None):
        self.logs = list(logs or [])

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        yield from self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs.extend(logs)


def study_names(storage, study: str) -> list[str]:
    """The study and its tuning studies, in that order."""
    import optuna

    tune = sorted(n for n in optuna.get_all_study_names(storage) if n.startswith(f"{study}/tune/"))
    return [study, *tune]


def write_journal(storage, study: str, path: Path | None = None) -> Path:
    """Copy `study` and its tuning studies from `storage` into a journal file (atomically)."""
    import optuna

    silence_optuna()
    backend = MemoryJournal()
    target = JournalStorage(backend)
    for name in study_names(storage, study):
        optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=target)
    lines = []
    for log in backend.logs:
        if "worker_id" in log:
            log = {**log, "worker_id": WORKER_ID}
        lines.append(json.dumps(log, separators=(",", ":")) + "\n")
    path = path or journal_path(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_journal(path: Path) -> JournalStorage:
    """A journal file as a storage in memory (the file is read once and never written)."""
    logs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return JournalStorage(MemoryJournal(logs))
