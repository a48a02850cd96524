"""The search space of an ablation: categorical choices, ranges, arms, and the grid they span."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lab.errors import LabError

RANGE_KEYS = {"low", "high", "step", "log"}


@dataclass(frozen=True)
class Choice:
    key: str
    values: tuple[Any, ...]
    arms: dict[Any, tuple] | None = None  # value -> sub-space (tuple of entries)


@dataclass(frozen=True)
class Range:
    key: str
    low: float
    high: float
    step: float | None
    log: bool
    is_int: bool


@dataclass
class Setting:
    label: str
    group: str
    params: dict[str, Any]  # dotted key -> value (no seed)
    axis: float | None = None

    @property
    def key(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)


def parse_space(spec: Any, where: str = "space") -> tuple:
    if not isinstance(spec, dict) or not spec:
        raise LabError(f"ablation '{where}' must be a non-empty mapping of config keys to choices.")
    entries = []
    for key, val in spec.items():
        key = str(key)
        if key == "seed":
            raise LabError(f"ablation {where}: list seeds under 'seeds:', not in the space.")
        if isinstance(val, list):
            if not val:
                raise LabError(
                    f"ablation {where}: '{key}' has an empty choice list; give at least one value."
                )
            entries.append(Choice(key, tuple(val)))
        elif isinstance(val, dict) and val and set(val) <= RANGE_KEYS:
            if "low" not in val or "high" not in val:
                raise LabError(f"ablation {where}: range '{key}' needs both low and high.")
            lo, hi = val["low"], val["high"]
            is_int = all(isinstance(v, int) for v in (lo, hi)) and not isinstance(
                val.get("step", 1), float)
            if hi < lo:
                raise LabError(f"ablation {where}: range '{key}' has high {hi} < low {lo}.")
            entries.append(Range(key, lo, hi, val.get("step"), bool(val.get("log", False)), is_int))
        elif isinstance(val, dict) and val:
            arms = {v: (parse_space(sub, f"{where}.{key}.{v}") if sub else ())
                    for v, sub in val.items()}
            entries.append(Choice(key, tuple(val), arms))
        else:
            raise LabError(
                f"ablation {where}: '{key}' must be a list of values, a range "
                "{low, high[, step, log]}, or a mapping of values to sub-spaces; got "
                f"{val!r}."
            )
    return tuple(entries)


def range_values(r: Range) -> list:
    if r.step is None:
        if not r.is_int:
            raise LabError(
                f"a grid over the float range '{r.key}' needs a step; add step: ... or use "
                "sampler: tpe."
            )
        step = 1
    else:
        step = r.step
    n = int(math.floor((r.high - r.low) / step + 1e-9)) + 1
    vals = [r.low + i * step for i in range(n)]
    return [int(v) for v in vals] if r.is_int else [round(v, 12) for v in vals]


def expand(space: tuple, prefix: dict | None = None) -> Iterator[tuple[dict, str]]:
    """Every assignment of the space (a grid), with the arm (group) it belongs to."""
    prefix = dict(prefix or {})
    if not space:
        yield prefix, ""
        return
    head, rest = space[0], space[1:]
    values = head.values if isinstance(head, Choice) else range_values(head)
    for v in values:
        here = {**prefix, head.key: v}
        sub = head.arms.get(v, ()) if isinstance(head, Choice) and head.arms else ()
        for assign, group in expand(sub + rest, here):
            arm = arm_name(head.key, v) if isinstance(head, Choice) and head.arms else ""
            # Nested arms are named by their path: "looped/add".
            yield assign, f"{arm}/{group}" if arm and group else group or arm


# Keys whose values name nothing by themselves (a seed_offset is just a number): their arms and
# labels are written as key=value ("seed_offset=1000").
NAMED_BY_KEY = frozenset({"seed_offset"})


def arm_name(key: str, value: Any) -> str:
    """An arm is named by its value ("looped"), or by key and value (NAMED_BY_KEY)."""
    return f"{key}={value}" if key in NAMED_BY_KEY else str(value)


def short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def space_keys(space: tuple) -> list[str]:
    """Every config key of a space, arms' sub-spaces included, in file order."""
    keys: list[str] = []

    def walk(entries):
        for e in entries:
            keys.append(e.key)
            for sub in (getattr(e, "arms", None) or {}).values():
                walk(sub)

    walk(space)
    return list(dict.fromkeys(keys))
