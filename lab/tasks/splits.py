"""How the text task splits a corpus into train, val, tune and ood: by whole file.

Every rule here is a function of the files' relative paths (and, for a hash-chosen OOD split,
their sizes), never of their contents or of where the corpus lives, so the same folder
copied elsewhere splits the same way.

- ``ood``: ``ood_path`` when given (a separate corpus; its files are removed from the main
  one); else the files matching ``ood_holdout`` patterns (for the stdlib, a fixed set of
  whole packages with their tests); else whole top-level directories when the corpus has at
  least :data:`MIN_OOD_DIRS` of them, otherwise files, chosen by bytes
  (:func:`holdout_by_bytes`): units (directories or files) are taken in the order of their
  name's hash until they hold ``ood_fraction`` of the corpus's bytes, passing over a unit
  that would carry the share past :data:`OOD_OVERSHOOT` times it. When no set of
  directories comes within half the share, files are held out instead; when no unit fits at
  all, the smallest one is.
- ``val``: of the remaining files, those with ``hash(relative path) < val_fraction`` (the
  one with the smallest hash if that picks none).
- ``tune`` (per-setting tuning is scored on it, never on val): as many files as val, drawn
  the same way from the rest, and only when that leaves training at least half the files.
- ``train``: the rest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from lab.errors import ConfigError

MIN_OOD_DIRS = 4  # fewer top-level directories than this: hold out files instead
OOD_OVERSHOOT = 1.5  # a hash-chosen OOD split holds at most this times ood_fraction of the bytes


def unit_hash(name: str, salt: str) -> float:
    """A uniform number in [0, 1) from a name: the same on every machine and Python."""
    d = hashlib.sha256(f"{salt}\0{name}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(d[:8], "big") / 2**64


def holdout_by_hash(names: list[str], fraction: float, salt: str) -> set[str]:
    """Names with hash < fraction; the smallest-hash name if none (and there are >= 2)."""
    h = {n: unit_hash(n, salt) for n in set(names)}
    chosen = {n for n, v in h.items() if v < fraction}
    if not chosen and len(h) >= 2:
        chosen = {min(h, key=lambda n: (h[n], n))}
    return chosen


def holdout_by_bytes(sizes: dict[str, int], fraction: float, salt: str,
                     total: int | None = None) -> set[str]:
    """Units (name -> bytes) taken in the order of their name's hash until they hold
    `fraction` of `total` bytes (default: all units'); a unit that would carry the share past
    OOD_OVERSHOOT x `fraction` is passed over. None fits: the smallest unit (of >= 2)."""
    total = sum(sizes.values()) if total is None else total
    target = fraction * total
    chosen: set[str] = set()
    held = 0
    for name in sorted(sizes, key=lambda n: (unit_hash(n, salt), n)):
        if held >= target:
            break
        if held + sizes[name] <= OOD_OVERSHOOT * target:
            chosen.add(name)
            held += sizes[name]
    if not chosen and len(sizes) >= 2:
        chosen = {min(sizes, key=lambda n: (sizes[n], unit_hash(n, salt), n))}
    return chosen


def hash_ood(files: list, fraction: float) -> tuple[list, str]:
    """The hash-chosen OOD files (whole top-level directories, else files; by bytes) and the
    unit used, "directories" or "files"."""
    total = sum(f.size for f in files)
    dirs: dict[str, int] = {}
    for f in files:
        if "/" in f.rel:
            top = f.rel.split("/")[0]
            dirs[top] = dirs.get(top, 0) + f.size
    held = holdout_by_bytes(dirs, fraction, "ood", total) if len(dirs) >= MIN_OOD_DIRS else set()
    if 0.5 <= sum(dirs[d] for d in held) / max(total, 1) / fraction <= OOD_OVERSHOOT:
        return [f for f in files if "/" in f.rel and f.rel.split("/")[0] in held], "directories"
    # Few directories, or none near the share: hold out files.
    held = holdout_by_bytes({f.rel: f.size for f in files}, fraction, "ood")
    return [f for f in files if f.rel in held], "files"


def assign_splits(files: list, ood_files: list, *, ood_path: bool, holdout: list[str],
                  held: Callable[[str], bool], val_fraction: float,
                  ood_fraction: float) -> tuple[dict[str, list], Any]:
    """{split: [files]} and the OOD unit ("directories", "files"; None unless hash-chosen).

    Files have ``rel`` (posix path relative to its root), ``path`` and ``size``; `held` says
    whether a relative path matches the `holdout` patterns."""
    unit = None
    if ood_path:
        ood_real = {os.path.realpath(f.path) for f in ood_files}
        main = [f for f in files if os.path.realpath(f.path) not in ood_real]
        ood = list(ood_files)
    elif holdout:
        ood = [f for f in files if held(f.rel)]
        if not ood:
            raise ConfigError("task.ood_holdout", f"{holdout} matches none of the "
                                                  f"{len(files)} corpus files.")
        main = [f for f in files if not held(f.rel)]
    else:
        ood, unit = hash_ood(files, ood_fraction)
        held_out = set(ood)
        main = [f for f in files if f not in held_out]
    val_names = holdout_by_hash([f.rel for f in main], val_fraction, "val")
    if len({f.rel for f in main}) < 2:
        val_names = set()
    rest = [f for f in main if f.rel not in val_names]
    tune_names = holdout_by_hash([f.rel for f in rest], val_fraction, "tune")
    if len(rest) - len(tune_names) < max(1, len(rest) // 2):
        tune_names = set()
    return {
        "train": [f for f in rest if f.rel not in tune_names],
        "val": [f for f in main if f.rel in val_names],
        "ood": ood,
        "tune": [f for f in rest if f.rel in tune_names],
    }, unit
