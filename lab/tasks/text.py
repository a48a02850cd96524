"""Byte-level causal language modelling on any folder of files (default: the Python stdlib).

Tokens are bytes (``vocab_size = 256``, no special tokens). A sequence is a random window of
``seq_len + 1`` consecutive bytes of one file: ``x = bytes[i : i + T]``, ``y = bytes[i + 1 :
i + T + 1]`` (next-byte prediction at every position, causal). Windows never cross a file
boundary: a window start is drawn uniformly over all valid starts of the split (so every
byte is about equally likely to be seen), and files shorter than ``T + 1`` bytes give none.
Non-UTF-8 bytes are fine.

Corpus (``path``, default: the running interpreter's standard library source,
``sysconfig.get_paths()["stdlib"]``): one or more directories or files, walked in sorted
order. Files are kept when they match one of ``include`` and none of ``exclude``; by default
every file of a folder you name (``*``), and ``*.py`` for the stdlib. Patterns are
``fnmatch`` globs on the path relative to its root, gitignore-like: a pattern without ``/``
matches any path component (``*.py``, ``tests``, ``__init__.py``); a pattern with ``/`` is
anchored at the root and matches the path or one of its leading directories
(``test/data``, ``/email``). Directories named in :data:`SKIP_DIRS`
(``__pycache__``, ``site-packages``, ``.git``, ...) are never entered. Binary files (a NUL
byte in their first 8 KiB) and special files (FIFOs, devices) are skipped and counted in
:meth:`TextTask.provenance`.

Splits are by whole file (:mod:`lab.tasks.splits`): ``train``, ``val``, ``tune`` and ``ood``
(``ood_path``, or files matching ``ood_holdout``, or for the stdlib whole packages and their
tests, :data:`STDLIB_OOD`, about 6% of the bytes; else hash-chosen top-level directories or
files holding about ``ood_fraction`` of the bytes).

The corpus is read once into one contiguous ``uint8`` file per split, cached under
``cache_dir`` (default ``$LAB_CACHE/text``, or ``~/.cache/lab/text``) in a directory keyed
by a hash of the roots, the patterns, the split settings and every file's (relative path,
size, mtime_ns): changing, adding or removing a file builds a new cache entry (old entries
are left in place). The cache holds a content hash of the corpus for provenance. Splits are
memory-mapped, and a batch is gathered with one vectorised index.

``chance`` is the accuracy of the best input-independent guess: the frequency of the most
common byte in the train split. The loss is in nats per byte; :func:`bits_per_byte` turns it
into bits per byte (``tokens_are_bytes = True`` tells the harness to report it). Reports
from different Python versions use different stdlib corpora and are not comparable.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import platform
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lab.errors import ConfigError
from lab.tasks.base import SPLITS, Task, windows
from lab.tasks.files import open_regular
from lab.tasks.splits import assign_splits

CACHE_VERSION = 3  # 2: a tune split; 3: hash-chosen OOD by bytes, every file by default
# Directories below a root that are never entered.
SKIP_DIRS = frozenset({
    "__pycache__", "site-packages", "dist-packages", ".git", ".hg", ".svn", ".tox", ".venv",
    "node_modules",
})
# The stdlib's default OOD split: whole packages and their tests (~6% of the bytes of 3.11).
STDLIB_OOD = (
    "/email", "/json", "/xml", "/xmlrpc", "/sqlite3",
    "test/test_email", "test/test_json", "test/test_xml*", "test/test_sqlite3",
    "test/test_minidom.py", "test/test_sax.py", "test/test_pyexpat.py",
)
BINARY_PROBE = 8192  # bytes read to detect a binary file (a NUL byte)
MIN_WINDOWS = 4  # a split needs room for this many non-overlapping windows (at least)
_CHUNK = 1 << 20


def bits_per_byte(loss_nats: float) -> float:
    """Cross-entropy in nats per byte -> bits per byte (a uniform guess over 256 bytes: 8)."""
    return loss_nats / math.log(2)


def default_cache_dir() -> Path:
    env = os.environ.get("LAB_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "lab") / "text"


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


@dataclass
class TextConfig:
    name: str = "text"
    # A directory or file, or a list of them; None = the running interpreter's stdlib.
    path: Any = None
    # Glob patterns (or one pattern); None = every file ('*'), or '*.py' for the stdlib.
    include: Any = None
    exclude: Any = field(default_factory=list)
    seq_len: int = 64
    val_fraction: float = 0.05
    # OOD corpus: a directory/file (or list); None = held out of the main corpus.
    ood_path: Any = None
    # Patterns naming the held-out files; None = STDLIB_OOD for the stdlib, else hash-chosen.
    ood_holdout: Any = None
    ood_fraction: float = 0.1  # hash-chosen holdout only
    cache_dir: str | None = None  # None = $LAB_CACHE/text or ~/.cache/lab/text


# --------------------------------------------------------------------------------------------
# Listing files


def _as_list(value: Any, key: str, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str | os.PathLike) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str | os.PathLike) for v in items):
        raise ConfigError(key, f"must be {what} or a list of them, got {value!r}.")
    return [os.fspath(v) for v in items]


def matches(rel: str, pattern: str) -> bool:
    """Whether a relative path (``a/b/c.py``) matches one gitignore-like glob pattern."""
    pat = pattern.rstrip("/")
    parts = rel.split("/")
    if "/" not in pat:
        return any(fnmatch.fnmatchcase(p, pat) for p in parts)
    pat = pat.lstrip("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1))


def _any(rel: str, patterns: list[str]) -> bool:
    return any(matches(rel, p) for p in patterns)


@dataclass(frozen=True)
class _File:
    root: int  # index into the roots (main roots first, then OOD roots)
    rel: str  # posix path relative to its root
    path: str  # absolute path
    size: int
    mtime_ns: int


def _resolve_roots(value: Any, key: str) -> list[Path]:
    roots = []
    for p in _as_list(value, key, "a path"):
        path = Path(p).expanduser()
        if not path.exists():
            raise ConfigError(key, f"'{p}' does not exist (looked at {path.resolve()}).")
        roots.append(path.resolve())
    return roots


def _list_files(roots: list[Path], first: int, include: list[str], exclude: list[str],
                key: str) -> list[_File]:
    out: list[_File] = []

    def fail(e: OSError):
        raise ConfigError(key, f"cannot read directory '{e.filename}': {e.strerror}.")

    def add(i: int, rel: str, path: str) -> None:
        if not _any(rel, include) or _any(rel, exclude):
            return
        try:
            st = os.stat(path)
        except OSError as e:
            raise ConfigError(key, f"cannot read file '{path}': {e.strerror}.") from None
        out.append(_File(i, rel, path, st.st_size, st.st_mtime_ns))

    for i, root in enumerate(roots, start=first):
        if root.is_file():
            add(i, root.name, str(root))
            continue
        for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
            reldir = Path(dirpath).relative_to(root).as_posix()
            prefix = "" if reldir == "." else reldir + "/"
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in SKIP_DIRS and not _any(prefix + d, exclude))
            for f in sorted(filenames):
                full = os.path.join(dirpath, f)
                if os.path.isfile(full) or os.path.islink(full):
                    add(i, prefix + f, full)
    return out


# --------------------------------------------------------------------------------------------
# Splitting


def _is_binary(f: _File, key: str) -> bool | None:
    """A NUL byte in the first BINARY_PROBE bytes; None: not a regular file (never read)."""
    try:
        if (fh := open_regular(f.path)) is None:
            return None
        with fh:
            head = fh.read(BINARY_PROBE)
    except OSError as e:
        raise ConfigError(key, f"cannot read file '{f.path}': {e.strerror}.") from None
    return b"\0" in head


# --------------------------------------------------------------------------------------------
# The task


class TextTask(Task):
    name = "text"
    causal = True
    Config = TextConfig
    tokens_are_bytes = True

    def __init__(self, cfg: TextConfig):
        super().__init__(cfg)
        T = cfg.seq_len
        if T < 1:
            raise ConfigError("task.seq_len", f"must be at least 1, got {T}.")
        for key, v in (("task.val_fraction", cfg.val_fraction), ("task.ood_fraction", cfg.ood_fraction)):
            if not 0 < v < 1:
                raise ConfigError(key, f"must be a fraction in (0, 1), got {v}.")
        self.exclude = _as_list(cfg.exclude, "task.exclude", "a glob pattern")
        self.roots = _resolve_roots(cfg.path if cfg.path is not None else str(stdlib_dir()),
                                    "task.path")
        if not self.roots:
            raise ConfigError("task.path", "needs at least one directory or file.")
        self.ood_roots = _resolve_roots(cfg.ood_path, "task.ood_path")
        self.is_stdlib = self.roots == [stdlib_dir()]
        default_include = ["*.py"] if self.is_stdlib else ["*"]
        self.include = (default_include if cfg.include is None else
                        _as_list(cfg.include, "task.include", "a glob pattern"))
        if not self.include:
            raise ConfigError("task.include", "needs at least one pattern (e.g. '*.md').")
        holdout = _as_list(cfg.ood_holdout, "task.ood_holdout", "a glob pattern")
        if self.ood_roots and holdout:
            raise ConfigError("task.ood_holdout", "give task.ood_path or task.ood_holdout, not both.")
        if self.ood_roots:
            self.ood_mode = "ood_path"
        elif holdout:
            self.ood_mode = "ood_holdout"
        elif self.is_stdlib:
            self.ood_mode, holdout = "stdlib packages", list(STDLIB_OOD)
        else:
            self.ood_mode = "hash"  # refined to "hash: directories" / "hash: files" below
        self.holdout = holdout
        self.cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()

        files = _list_files(self.roots, 0, self.include, self.exclude, "task.path")
        if not files:
            raise ConfigError(
                "task.include",
                f"no file under {', '.join(map(str, self.roots))} matches include "
                f"{self.include}" + (f" and escapes exclude {self.exclude}" if self.exclude else "")
                + ". Patterns are globs on the path relative to the root (e.g. '*.txt', 'docs/*.md').",
            )
        ood_files = _list_files(self.ood_roots, len(self.roots), self.include, self.exclude,
                                "task.ood_path")
        if self.ood_roots and not ood_files:
            raise ConfigError("task.ood_path", f"no file under {', '.join(map(str, self.ood_roots))} "
                                               f"matches include {self.include}.")
        self.key = self._cache_key(files + ood_files)
        self.cache = self.cache_root / self.key[:24]
        if not (self.cache / "meta.json").is_file():
            self._build(files, ood_files)
        self.meta = json.loads((self.cache / "meta.json").read_text())
        if self.ood_mode == "hash":
            self.ood_mode = f"hash: {self.meta['ood_unit']}"
        self._load()
        self.vocab_size = 256
        self.seq_len = self.max_seq_len = T
        hist = np.asarray(self.meta["splits"]["train"]["histogram"], dtype=np.int64)
        self.chance = float(hist.max() / max(hist.sum(), 1))

    # ---------------------------------------------------------------------- cache
    def _cache_key(self, files: list[_File]) -> str:
        spec = {
            "version": CACHE_VERSION,
            "roots": [str(r) for r in self.roots],
            "ood_roots": [str(r) for r in self.ood_roots],
            "include": self.include, "exclude": self.exclude, "holdout": self.holdout,
            "ood_mode": self.ood_mode, "val_fraction": self.cfg.val_fraction,
            "ood_fraction": self.cfg.ood_fraction,
            "files": [[f.root, f.rel, f.size, f.mtime_ns] for f in files],
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def _assign(self, files: list[_File], ood_files: list[_File]) -> tuple[dict, str | None]:
        """{split: [files]}, and the hash unit for OOD (lab.tasks.splits)."""
        return assign_splits(files, ood_files, ood_path=bool(self.ood_roots), holdout=self.holdout,
                             held=lambda rel: _any(rel, self.holdout),
                             val_fraction=self.cfg.val_fraction, ood_fraction=self.cfg.ood_fraction)

    def _build(self, files: list[_File], ood_files: list[_File]) -> None:
        kind = {f: _is_binary(f, "task.path") for f in files}  # None: a FIFO, a device, ...
        kind.update({f: _is_binary(f, "task.ood_path") for f in ood_files})
        binary, special = [f for f, b in kind.items() if b], [f for f, b in kind.items() if b is None]
        kept = [f for f in files if kind[f] is False]
        kept_ood = [f for f in ood_files if kind[f] is False]
        if not kept:
            raise ConfigError("task.include", f"all {len(files)} matching files are binary (a NUL "
                                              "byte in their first 8 KiB) or special; nothing to train on.")
        if self.ood_roots and not kept_ood:
            raise ConfigError("task.ood_path", f"all {len(ood_files)} matching files are binary.")
        splits, unit = self._assign(kept, kept_ood)
        try:
            self.cache_root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.key[:12]}-", dir=self.cache_root))
        except OSError as e:
            raise ConfigError("task.cache_dir", f"cannot write the cache at '{self.cache_root}': "
                                                f"{e.strerror}.") from None
        try:
            content = hashlib.sha256()
            meta: dict[str, Any] = {"version": CACHE_VERSION, "key": self.key, "ood_unit": unit,
                                    "skipped_binary": [f.path for f in binary],
                                    "skipped_special": [f.path for f in special], "splits": {}}
            for split in SPLITS:
                table, offset = [], 0
                hist = np.zeros(256, dtype=np.int64)
                with open(tmp / f"{split}.bin", "wb") as out:
                    for f in splits[split]:
                        key = "task.ood_path" if f.root >= len(self.roots) else "task.path"
                        n = 0
                        content.update(f"{split}\0{f.rel}\0".encode("utf-8", "surrogateescape"))
                        try:
                            if (fh := open_regular(f.path)) is None:
                                raise OSError(0, "it is no longer a regular file")
                            with fh:
                                while chunk := fh.read(_CHUNK):
                                    out.write(chunk)
                                    content.update(chunk)
                                    hist += np.bincount(np.frombuffer(chunk, np.uint8), minlength=256)
                                    n += len(chunk)
                        except OSError as e:
                            raise ConfigError(key, f"cannot read file '{f.path}': {e.strerror}.") from None
                        table.append([f.root, f.rel, offset, n])
                        offset += n
                meta["splits"][split] = {"files": table, "bytes": offset, "histogram": hist.tolist()}
            meta["content_sha256"] = content.hexdigest()
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.rename(tmp, self.cache)
            except OSError:
                if not (self.cache / "meta.json").is_file():  # not a concurrent build of the same
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _load(self) -> None:
        T = self.cfg.seq_len
        all_roots = self.roots + self.ood_roots
        self.data: dict[str, np.ndarray | torch.Tensor] = {}
        self._offsets, self._cum, self._counts, self.n_windows = {}, {}, {}, {}
        self.room: dict[str, int] = {}  # non-overlapping windows inside single files
        for split in SPLITS:
            m = self.meta["splits"][split]
            path = self.cache / f"{split}.bin"
            self.data[split] = (np.memmap(path, dtype=np.uint8, mode="r") if m["bytes"]
                                else np.zeros(0, np.uint8))
            table = m["files"]
            lengths = np.array([r[3] for r in table], dtype=np.int64)
            offsets = np.array([r[2] for r in table], dtype=np.int64)
            counts = np.maximum(lengths - T, 0)  # valid starts per file
            keep = counts > 0
            self._offsets[split] = offsets[keep]
            self._counts[split] = counts[keep]
            self._cum[split] = np.cumsum(counts[keep])
            self.n_windows[split] = int(counts.sum())
            self.room[split] = int((lengths // (T + 1)).sum())
        self.check_room(MIN_WINDOWS)  # tune: checked when a study tunes (check_room)
        self._files = {s: [(str(all_roots[r] / rel) if all_roots[r].is_dir() else str(all_roots[r]), n)
                           for r, rel, _, n in self.meta["splits"][s]["files"]]
                       for s in SPLITS}

    def check_room(self, need: int, splits: tuple[str, ...] = ("train", "val", "ood"),
                   what: str = "") -> None:
        """Refuse a split without room for `need` non-overlapping windows inside single files
        (an evaluation set of `need` sequences would repeat windows; `what` says why)."""
        for split in splits:
            if self.room[split] < need:
                m = self.meta["splits"][split]
                self._too_small(split, len(m["files"]), m["bytes"], need, what)

    def _too_small(self, split: str, n_files: int, n_bytes: int, need: int, what: str) -> None:
        T = self.cfg.seq_len
        key, fix = {
            "train": ("task.path", "point task.path at more files"),
            "tune": ("task.path", "point task.path at more files, or drop the ablation's tune "
                                  "section"),
            "val": ("task.val_fraction", "raise task.val_fraction or add files (the split is by "
                                         "whole file)"),
            "ood": (("task.ood_path", "give a larger task.ood_path") if self.ood_roots else
                    ("task.ood_holdout", "hold out more with task.ood_holdout") if self.holdout
                    and self.ood_mode != "stdlib packages" else
                    ("task.ood_fraction", "raise task.ood_fraction, name the held-out files with "
                                          "task.ood_holdout, or give task.ood_path")),
        }[split]
        room = self.room[split]
        lower = " or lower task.seq_len" + (" or train.val_size" if what else "")
        raise ConfigError(
            key,
            f"the {split} split has {n_files} file{'s' * (n_files != 1)}, {n_bytes} bytes: room "
            f"for {room} windows of "
            f"{T + 1} bytes inside single files, fewer than {need}{what}. To fix, {fix},{lower}.",
        )

    # ---------------------------------------------------------------------- protocol
    def files(self, split: str) -> list[tuple[str, int]]:
        """(path, bytes) of the split's files, in the order of its cached array."""
        return list(self._files[split])

    def starts(self, idx: torch.Tensor, split: str) -> np.ndarray:
        """Offsets into the split's array of the windows with global indices ``idx``."""
        i = idx.numpy()
        f = np.searchsorted(self._cum[split], i, side="right")
        return self._offsets[split][f] + i - (self._cum[split][f] - self._counts[split][f])

    def sample(self, n: int, generator: torch.Generator, split: str = "train"):
        T = self.cfg.seq_len
        if self.n_windows[split] == 0:
            raise ConfigError("task.path", f"the corpus is too small for a separate {split} "
                              "split (per-setting tuning scores on it): add files, or drop the "
                              "ablation's tune section.")
        idx = torch.randint(0, self.n_windows[split], (n,), generator=generator)
        w = windows(self.data[split], self.starts(idx, split), T + 1)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def to_device(self, device: torch.device) -> None:
        """Keep the split arrays on `device` (a GPU: moved once), to gather batches there."""
        self.data = {k: torch.as_tensor(a if isinstance(a, torch.Tensor) else np.array(a)).to(device)
                     for k, a in self.data.items()}

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "the next bytes are not a function of x; tests/test_text.py re-draws the window starts "
            "and slices the raw files instead."
        )

    # ---------------------------------------------------------------------- reporting
    def corpus_name(self) -> str:
        if self.is_stdlib:
            return f"Python {platform.python_version()} stdlib"
        return ", ".join(str(r) for r in self.roots)

    def describe(self) -> str:
        splits = self.meta["splits"]
        total = sum(splits[s]["bytes"] for s in SPLITS) or 1
        parts = []
        for split in SPLITS:
            m = splits[split]
            parts.append(f"{split} {len(m['files'])} files {m['bytes'] / 1e6:.2f} MB"
                         + (f" ({100 * m['bytes'] / total:.1f}% of the bytes)"
                            if split == "ood" else ""))
        binary = len(self.meta["skipped_binary"])
        return (f"text: bytes of {self.corpus_name()} ({', '.join(self.include)}), windows of "
                f"{self.cfg.seq_len}; {', '.join(parts)}; OOD: {self.ood_mode}"
                + (f"; {binary} binary files skipped" if binary else ""))

    def provenance(self) -> dict[str, Any]:
        m = self.meta
        out: dict[str, Any] = {
            "corpus": self.corpus_name(),
            "roots": [str(r) for r in self.roots],
            "ood_roots": [str(r) for r in self.ood_roots],
            "include": self.include, "exclude": self.exclude,
            "ood_mode": self.ood_mode, "ood_holdout": self.holdout,
            "val_fraction": self.cfg.val_fraction, "ood_fraction": self.cfg.ood_fraction,
            "seq_len": self.cfg.seq_len,
            "files": {s: len(m["splits"][s]["files"]) for s in SPLITS},
            "bytes": {s: m["splits"][s]["bytes"] for s in SPLITS},
            "windows": dict(self.n_windows),
            "skipped_binary": len(m["skipped_binary"]),
            "skipped_special": len(m.get("skipped_special", [])),
            "content_sha256": m["content_sha256"],
            "cache": str(self.cache),
            "chance": self.chance,
        }
        if self.is_stdlib:
            out["python"] = platform.python_version()
            out["note"] = ("the corpus is this interpreter's stdlib: results from different Python "
                           "versions are not comparable.")
        return out
