"""Study storage: SQLite by default, PostgreSQL/MySQL across machines, or a journal file.

On SQLite, whose UPDATE is not conditional, workers on one machine serialise state changes
(the queue pop, the failing of a stale trial) through a file lock beside the database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import filelock

from lab.errors import LabError
from lab.provenance import normalize_url, scrub
from lab.provenance import redact_url as redact_url  # re-exported: the storage API
from lab.study.outage import RetryingStorage, StorageUnavailable, call_with_retry

HEARTBEAT_S, GRACE_S = 10, 60
# Set when `lab sweep` writes its storage URL to a worker's stdin: a password in it then
# shows in no process list and in no process environment.
STORAGE_ENV = "LAB_STORAGE_ON_STDIN"
PARENT_ENV = "LAB_SWEEP_PID"  # the `lab sweep` process a worker must not outlive


def file_lock(path: str) -> filelock.FileLock:
    """An exclusive lock on `path`, re-entrant within a process (one object per path)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(path, is_singleton=True)


class LockedRDBStorage:
    """Mixin: serialise state changes of local workers through a file lock.

    SQLite has no row locks: two processes can both read a WAITING trial and both set it
    RUNNING. Holding an exclusive file lock around the read-check-write makes the queue pop
    (and the failing of a stale trial) atomic for every worker on this machine.
    """

    lock_path: str

    def set_trial_state_values(self, trial_id, state, values=None):
        with file_lock(self.lock_path):
            return super().set_trial_state_values(trial_id, state, values)


@contextlib.contextmanager
def queue_lock(url: str, storage=None, study_name: str = ""):
    """Serialise the queue step (reading which pairs are missing, enqueueing them) across
    every process on the study: the file lock for this machine's processes, and on
    PostgreSQL (an advisory lock) or MySQL (GET_LOCK) a lock held in the database, since
    sweeps on other machines share the study and a local file cannot stop them."""
    with file_lock(lock_path_for(url)):
        engine = getattr(storage, "engine", None)
        dialect = getattr(getattr(engine, "dialect", None), "name", "")
        if dialect not in ("postgresql", "mysql"):
            yield
            return
        from sqlalchemy import text

        digest = hashlib.sha256(f"lab-queue:{study_name}".encode()).digest()
        if dialect == "postgresql":
            key = int.from_bytes(digest[:8], "big", signed=True)
            take, params = "SELECT pg_advisory_lock(:k)", {"k": key}
            give = "SELECT pg_advisory_unlock(:k)"
        else:
            take, params = "SELECT GET_LOCK(:k, 3600)", {"k": f"lab-queue-{digest.hex()[:40]}"}
            give = "SELECT RELEASE_LOCK(:k)"
        with engine.connect() as conn:
            conn.execute(text(take), params)
            conn.commit()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    conn.execute(text(give), params)
                    conn.commit()

def lock_path_for(url: str) -> str:
    """The file lock of a storage: beside a SQLite database; for a server, in this user's
    private folder, named by a hash of the URL without its password (a name that says
    nothing about the password, in a folder no one else can list)."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):] + ".lock"
    h = hashlib.sha256(f"lab-lock\0{redact_url(url)}".encode()).hexdigest()[:16]
    return str(private_dir() / f"lab-study-{h}.lock")


def private_dir() -> Path:
    """`<temp dir>/lab-<uid>`, readable by this user only (mode 700), for lock files."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    d = Path(tempfile.gettempdir()) / f"lab-{uid}"
    d.mkdir(mode=0o700, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != uid):
        raise LabError(f"'{d}' is not a folder of this user's; remove it, or set TMPDIR to a "
                       "folder of yours, and run again.")
    if st.st_mode & 0o077:
        d.chmod(0o700)
    return d

def silence_optuna() -> None:
    """Optuna marks heartbeats and the brute-force sampler experimental; say it once, here."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

def open_storage(url: str, heartbeat: bool = True, wait: bool = False):
    """The Optuna storage of `url`. A server storage rides out an outage once open (see
    lab.study.outage); with `wait`, also at the first connection (a worker, whose sweep
    had the storage open)."""
    import optuna

    silence_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if url.startswith("journal:///") or url.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len("journal:///"):] if url.startswith("journal:///") else url
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise LabError(
            f"storage '{url}' is not a storage URL; use sqlite:///path.db, "
            "postgresql://user:pass@host/db, mysql://..., or journal:///path.log."
        )
    url = normalize_url(url)  # a password with a bare '@' stays out of the host
    engine_kwargs: dict[str, Any] = {}
    bases: tuple = (LockedRDBStorage, RDBStorage)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.name.startswith("file:") and not str(path).startswith("file:"):  # a URI
            path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}} \
            if url.startswith("postgresql") else {"pool_pre_ping": True}
        bases = (RetryingStorage, *bases)
    cls = type("LabRDBStorage", bases, {"lock_path": lock_path_for(url), "lab_url": url})
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
    try:
        with quiet_optuna():
            if wait and RetryingStorage in bases:
                return call_with_retry(lambda: create_storage(cls, url, engine_kwargs, kwargs), url)
            storage = create_storage(cls, url, engine_kwargs, kwargs)
            if url.startswith("sqlite:///"):
                sqlite_write_ahead(storage.engine)
            return storage
    except StorageUnavailable:
        raise
    except ImportError as e:
        raise LabError(
            f"storage '{redact_url(url)}' needs a database driver that is not installed ({e}). "
            'For PostgreSQL: pip install "psycopg[binary]" (the postgres extra of the lab).'
        ) from None
    except Exception as e:  # sqlalchemy errors: bad URL, unreachable server, bad credentials
        problem = storage_problem(e, url)
        if problem is not None:
            raise problem from None
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = scrub(msg, url)
        raise LabError(
            f"cannot open storage '{redact_url(url)}': {msg}. Check the URL "
            "(sqlite:///studies/NAME.db, postgresql://user:pass@host:5432/db) and that the "
            "server is reachable."
        ) from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)

def sqlite_write_ahead(engine) -> None:
    """Write-ahead logging, synchronous=NORMAL, on every connection to a study's SQLite file.

    A commit then no longer waits for the disk twice (19 ms -> 1.3 ms per commit here, and a
    trial commits some 50 times). A crash of a process loses nothing; a power cut can lose the
    last commits, never the file's consistency (a lost trial is run again on resume). The
    journal mode is stored in the file; a read-only file keeps its own."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def on_connect(conn, _record):
        cur = conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    engine.dispose()  # connections made while Optuna set up its tables get the pragmas too
    with engine.connect():
        pass  # connect now: a read-only or corrupt file fails here, with its clear message


def storage_problem(e: BaseException, url: str) -> LabError | None:
    """A storage failure (corrupt or read-only database) as one clear message, or None if `e`
    is not one. The database driver's error is searched along the exception's causes."""
    texts, seen = [], e
    while seen is not None and len(texts) < 6:
        texts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    text = " ".join(texts).lower()
    where = redact_url(url)
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
    if any(m in text for m in ("malformed", "not a database", "file is encrypted",
                               "database corrupt", "disk i/o error")):
        recover = (f" or recover what is readable: sqlite3 {path} .recover | sqlite3 "
                   f"{path}.recovered && mv {path}.recovered {path}" if path else "")
        return LabError(f"storage '{where}' is corrupt ({_first_line(e, text)}). Restore it "
                        f"from a backup,{recover or ' or repair it with the database tools'}; "
                        "then run the same command again.")
    if any(m in text for m in ("readonly database", "read-only", "read only",
                               "attempt to write", "permission denied")):
        return LabError(f"storage '{where}' is read-only ({_first_line(e, text)}): the lab "
                        "writes to its study (and SQLite a journal file beside the database). "
                        "Make the file and its folder writable, or copy it somewhere writable "
                        "and give storage=sqlite:///COPY.db.")
    return None


def _first_line(e: BaseException, text: str) -> str:
    for m in ("database disk image is malformed", "file is not a database",
              "attempt to write a readonly database", "disk i/o error"):
        if m in text:
            return m
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@contextlib.contextmanager
def storage_errors(url: str):
    """Turn a corrupt or read-only storage into a LabError (exit 2, with the way out)."""
    try:
        yield
    except LabError:
        raise
    except Exception as e:
        problem = storage_problem(e, url)
        if problem is None:
            raise
        raise problem from None


def create_storage(cls, url: str, engine_kwargs: dict, kwargs: dict, attempts: int = 6):
    """Create the storage, retrying when another process creates the same tables right now.

    Several machines starting on a fresh database race to create Optuna's schema; the losers
    see "already exists" / unique-violation errors, and a second try finds the tables.
    """
    import random

    for attempt in range(attempts):
        try:
            return cls(url, engine_kwargs=engine_kwargs, **kwargs)
        except ImportError:
            raise
        except Exception as e:
            text = str(e).lower()
            racing = any(m in text for m in ("already exists", "duplicate key", "uniqueviolation",
                                             "database is locked"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield


def trial_id(storage, study, number: int) -> int:
    """The storage's id of trial `number` of `study`, through the public storage API."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)
