"""Reading a YAML file that must hold a mapping: a key given twice, bad YAML, a missing file
or another type each stop with one message naming the file (and the lines)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from lab.errors import LabError


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, lines: tuple[int, int]):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would silently keep
    the last value)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(str(key), (seen[key], line))
            except TypeError:  # an unhashable key: let the loader say so
                continue
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: str | os.PathLike, kind: str = "config file") -> dict:
    """A YAML file holding a mapping; a missing file or bad YAML is a LabError naming it."""
    p = Path(path)
    if not p.is_file():
        raise LabError(f"{kind} '{path}' does not exist (looked at {p.resolve()}).")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKey as e:
        raise LabError(f"{kind} '{path}': key '{e.key}' appears twice (at lines {e.lines[0]} "
                       f"and {e.lines[1]}); keep one.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LabError(f"{kind} '{path}' is not valid YAML{where}: {problem}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LabError(f"{kind} '{path}' must hold a mapping of keys, not {type(data).__name__}.")
    return data
