"""`lab dashboard`: optuna-dashboard on the exact storage and study a sweep used.

The ablation file and its overrides resolve the storage URL and study name the same way
`lab sweep` does (``NAME-<hash>`` for config overrides, ``storage=``/``study=`` as given), so
the dashboard opens the study the sweep wrote, whatever the storage (on a fresh clone, the
journal beside its report, in memory). It binds 127.0.0.1 by default (optuna-dashboard has no
authentication).
"""

from __future__ import annotations

from lab.errors import LabError
from lab.study.identity import existing_storage, load_existing_study
from lab.study.spec import load_ablation


def study_url(host: str, port: int, study_id: int) -> str:
    return f"http://{host}:{port}/dashboard/studies/{study_id}"


def run_dashboard(path: str, overrides: list[str] | None = None, host: str = "127.0.0.1",
                  port: int = 8080, announce=print) -> int:
    """Serve optuna-dashboard on the study's storage until interrupted."""
    try:
        import optuna_dashboard
    except ImportError:
        raise LabError(
            "optuna-dashboard is not installed. `make setup` installs it (the dashboard extra: "
            "pip install -e '.[dashboard]')."
        ) from None
    abl = load_ablation(path, overrides or [])
    load_existing_study(abl)  # a clear error when the study or its storage does not exist
    storage, where = existing_storage(abl)  # or the journal beside its report
    study_id = storage.get_study_id_from_name(abl.study)
    announce(f"optuna-dashboard: study '{abl.study}' in {where}\n"
             f"  {study_url(host, port, study_id)}  (Ctrl-C to stop)")
    optuna_dashboard.run_server(storage, host=host, port=port)
    return 0
