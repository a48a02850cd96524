"""The report's "Cost against context length" section: KV-cache bytes and decode latency at
each context length and batch size, measured after the sweep (lab.eval.context; stored on the
study by lab.study.costpass in CONTEXT_ATTR when the ablation sets analysis.context_costs)."""

from __future__ import annotations

from fractions import Fraction

from lab.report.figures import Figure
from lab.report.fmt import fmt_bytes, fmt_time, image, md_table


def serial_match(data: dict, label: str) -> str | None:
    """The serial setting with the same loop count as `label` (None: the study has none)."""
    r = data["settings"][label]["loops"]
    return next((k for k, s in data["settings"].items()
                 if s["loop_mode"] == "serial" and s["loops"] == r), None)


def kv_ratio(data: dict, label: str, i: int = -1) -> tuple[float, float] | None:
    """(measured KV bytes over the same-loop serial setting's at the i-th length, the ratio's
    long-context limit by the formula, windows excluded); None without a serial match."""
    ref = serial_match(data, label)
    if ref is None:
        return None
    s, t = data["settings"][label], data["settings"][ref]
    return s["kv_bytes"][0][i] / t["kv_bytes"][0][i], \
        s["kv_limit_per_token"] / t["kv_limit_per_token"]


def fmt_limit(limit: float, loops: int) -> str:
    """'0.250 = 1/4' where the limit is 1/r, else the number."""
    if loops > 1 and abs(limit - 1 / loops) < 1e-9:
        return f"{limit:.3f} = 1/{loops}"
    f = Fraction(limit).limit_denominator(64)
    return f"{limit:.3f}" if abs(float(f) - limit) > 1e-9 or f.denominator == 1 else \
        f"{limit:.3f} = {f}"


def formula_mismatches(data: dict) -> list[str]:
    """'setting at C tokens' wherever the measured bytes differ from the formula's."""
    out = []
    for label, s in data["settings"].items():
        for i, C in enumerate(data["lengths"]):
            if any(row[i] != s["kv_formula"][i] for row in s["kv_bytes"]):
                out.append(f"{label} at {C} tokens")
    return out


def context_section(data: dict | None, figures: dict[str, Figure]) -> list[str]:
    """The section, or nothing when the study has no context-length measurement."""
    if not data:
        return []
    lines = ["## Cost against context length", ""]
    skipped = data.get("skipped") or {}
    if skipped:
        lines += ["Not measured: " + "; ".join(f"{k} ({why})" for k, why in skipped.items())
                  + ".", ""]
    settings = data.get("settings") or {}
    if not settings:
        return lines
    lengths, batches = data["lengths"], data["batches"]
    lines += [
        f"After the sweep, every setting's architecture was rebuilt with a positional table "
        f"long enough for {lengths[-1]} tokens (random weights from a fixed seed: neither cost "
        f"depends on the weights), its decode cache filled with C random tokens (C = "
        f"{', '.join(map(str, lengths))}) at batch size {' and '.join(map(str, batches))}, "
        "and single-token decode steps timed at that context (one thread; the fastest of "
        f"{data.get('steps')} steps, median over {data.get('rounds')} rounds; within a round "
        "every setting was timed at each length in a shuffled order, so machine noise hits "
        "all alike). KV bytes are read off the cache (carried loop outputs excluded).", ""]
    bad = formula_mismatches(data)
    lines += [("The measured bytes equal the formula (`lab.eval.cost.kv_cache_bytes`) at every "
               "point." if not bad else "**The measured bytes differ from the formula** "
               "(`lab.eval.cost.kv_cache_bytes`) for: " + "; ".join(bad) + "."), ""]
    for kind, alt in (("context_kv", "KV bytes vs context length"),
                      ("context_latency", "decode latency vs context length")):
        if kind in figures:
            lines += [figures[kind].caption, ""] + image(alt, figures[kind])
    C = lengths[-1]
    rows = []
    for label, s in settings.items():
        ratio = kv_ratio(data, label)
        rows.append([label, str(s["loops"]), fmt_bytes(s["kv_bytes"][0][-1]),
                     *[fmt_time(s["latency_s"][bi][-1]) for bi in range(len(batches))],
                     "-" if ratio is None else f"{ratio[0]:.3f}",
                     "-" if ratio is None else fmt_limit(ratio[1], s["loops"])])
    lines += [f"At the longest context, {C} tokens:", "",
              md_table(["setting", "loops", "KV bytes / sequence",
                        *[f"latency / step, batch {B}" for B in batches],
                        "KV ratio to serial (same loops)", "long-context limit (formula)"],
                       rows), "",
              "KV ratio: this setting's KV bytes over those of the serial setting with the same "
              "loop count. Its limit as the context grows, by the formula with the later loops' "
              "windows excluded, is 1/r for shared KV when the loop is the whole stack (no "
              "prelude or coda).", ""]
    lines += [f"- {x}" for x in limit_sentences(data)]
    return lines + [""]


def limit_sentences(data: dict) -> list[str]:
    """Whether each shared-KV setting's ratio to serial has reached its limit at the
    longest context."""
    out = []
    C = data["lengths"][-1]
    for label, s in data["settings"].items():
        ratio = kv_ratio(data, label)
        if not s.get("shared_kv") or s["loops"] < 2 or ratio is None:
            continue
        r, limit = ratio
        ref = serial_match(data, label)
        head = f"**{label}**: at {C} tokens its KV is {r:.3f} of that of **{ref}**"
        if abs(r / limit - 1) < 0.005:
            out.append(f"{head}, at its long-context limit {fmt_limit(limit, s['loops'])}.")
        else:
            window = (s["loops"] - 1) * (s.get("window") or 0) if s.get("gswa") else 0
            out.append(f"{head}, {r / limit - 1:.1%} above its limit "
                       f"{fmt_limit(limit, s['loops'])}: the later loops' windows ("
                       f"{window} positions of the core in all) are not yet amortised.")
    return out
