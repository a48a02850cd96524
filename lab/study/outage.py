"""Riding out a database outage: storage calls retried with backoff for a bounded time.

A PostgreSQL (or MySQL) server that restarts, fails over or drops its connections for a few
seconds must not end a sweep of many hours. Every call of a server storage (the sweep's, its
workers', the heartbeat thread's) that fails because the connection is gone is retried with
exponential backoff (0.5 s doubling to 5 s) for up to ``LAB_STORAGE_RETRY_S`` seconds. The
default, 40 s, stays under the heartbeat grace period (60 s) less two heartbeat intervals, so
that no worker takes a trial whose worker is only waiting for the database for a dead one and
runs its pair a second time. Past the window the call raises :class:`StorageUnavailable`, the
process gives up at once on every later call, and the sweep stops its workers and exits 1
with one message. Nothing is lost: a call that failed wrote nothing, so a trial cut short
stays RUNNING in the database, with its worker gone, and the next start re-queues it (it
resumes from its checkpoint); queued trials stay queued.

Only errors of the connection are retried (SQLAlchemy's OperationalError and InterfaceError,
or a connection it invalidated); a wrong query, a constraint or a corrupt database fails at
once as before. The first connection of ``lab sweep`` is not retried either: a storage that
was never reachable is more likely a wrong URL than an outage. SQLite and journal files are
local and are not retried.
"""

from __future__ import annotations

import os
import time

from lab.errors import LabError
from lab.provenance import redact_url, scrub

RETRY_ENV = "LAB_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 40.0
EXIT_STORAGE_LOST = 75  # a worker that lost the storage (EX_TEMPFAIL); the sweep says why
# Every storage call a sweep makes: Optuna's BaseStorage and heartbeat API, and the calls its
# cache (which wraps every RDB storage of a study) makes on the storage beneath it.
RETRIED_CALLS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials",
    "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", "check_trial_is_updatable", "record_heartbeat",
    "_get_stale_trial_ids", "_get_trials", "_create_new_trial", "_set_trial_param",
    "_get_best_trial_id",
)
# Once set, no call waits any more: the process gave up, or it is stopping (Ctrl-C, SIGTERM)
# and its bookkeeping must not hang on a database that is gone.
state = {"gave_up": False, "stopping": False}


class StorageUnavailable(LabError):
    """The storage's server stayed unreachable for longer than the retry window."""

    exit_code = 1


def retry_window() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S)))
    except ValueError:
        raise LabError(f"{RETRY_ENV}={os.environ[RETRY_ENV]!r} is not a number of seconds "
                       f"(default {DEFAULT_RETRY_S:g}).") from None


def start_retrying() -> None:
    """A new command in this process (say a second sweep from a notebook) retries afresh;
    a retry window that is not a number is refused now, not during an outage."""
    retry_window()
    state.update(gave_up=False, stopping=False)


def stop_retrying() -> None:
    """Called when the process is being stopped: storage calls fail at once from now on."""
    state["stopping"] = True


def is_transient(e: BaseException) -> bool:
    """Whether `e` (or an exception it was raised from) says the connection to the database
    server is gone: the server stopped, restarted, or is not reachable right now."""
    from sqlalchemy import exc

    if isinstance(e, StorageUnavailable):  # a nested call that already gave up
        return False
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, exc.OperationalError | exc.InterfaceError) or (
                isinstance(seen, exc.DBAPIError) and seen.connection_invalidated):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unavailable(url: str, waited: float, e: BaseException) -> StorageUnavailable:
    seen: BaseException | None = e
    while seen is not None and getattr(seen, "orig", None) is None:  # the driver's own error
        seen = seen.__cause__ or seen.__context__
    text = str(seen.orig if seen is not None else e).strip()  # type: ignore[attr-defined]
    detail = scrub(text.splitlines()[0] if text else type(e).__name__, url)
    return StorageUnavailable(
        f"storage '{redact_url(url)}' has been unreachable for {waited:.0f} s ({detail}). "
        "Nothing is lost: completed trials are stored, the others stay queued or are "
        "re-queued, and each resumes from its last checkpoint. Run the same command again "
        f"once the database is back (the wait is set by {RETRY_ENV}, now {retry_window():g} s)."
    )


def call_with_retry(call, url: str, quiet: bool = False):
    """`call()`, retried while it fails because the server is unreachable, for up to the
    retry window; then StorageUnavailable (or None when `quiet`: a heartbeat that cannot be
    written is skipped, the trial's own calls notice the outage)."""
    t0 = time.monotonic()
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as e:
            if not is_transient(e):
                raise
            waited = time.monotonic() - t0
            if state["gave_up"] or state["stopping"] or waited + delay > retry_window():
                if quiet:
                    return None
                state["gave_up"] = True
                raise unavailable(url, waited, e) from None
        time.sleep(delay)
        delay = min(2 * delay, 5.0)


class RetryingStorage:
    """Mixin for Optuna's RDBStorage: every call in RETRIED_CALLS rides out an outage."""

    lab_url: str


def _retried(name: str):
    def method(self, *args, **kwargs):
        call = getattr(super(RetryingStorage, self), name)
        return call_with_retry(lambda: call(*args, **kwargs), self.lab_url,
                               quiet=name == "record_heartbeat")

    method.__name__ = name
    return method


for _name in RETRIED_CALLS:
    setattr(RetryingStorage, _name, _retried(_name))
