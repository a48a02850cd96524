"""Report figures from the per-loop diagnostics that every trial records.

Each completed trial stores, as user attributes, its final validation diagnostics
(``diagnostics``: readout accuracy/loss after every loop or layer; relative update norms and
cosines between successive updates, for looped models split into the block's own part and
the injected input; readout KL) and, for looped models, the test-time extrapolation curve
(``extrapolation``: accuracy at r' loops on the validation and OOD splits) and the adaptive
exit curve (``adaptive``). These figures average them over seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.figures.common import Figure, plt
from lab.stats import SettingStats
from lab.study.attrs import ADAPTIVE_ATTR, DIAGNOSTICS_ATTR, EXTRAPOLATION_ATTR

if TYPE_CHECKING:
    from lab.report.study import StudyAnalysis


def _series(records, key: str) -> dict[int, float]:
    """Mean over records of diagnostics '<key>/<i>', by index i."""
    acc: dict[int, list[float]] = defaultdict(list)
    for r in records:
        for k, v in (r.attrs.get(DIAGNOSTICS_ATTR) or {}).items():
            name, _, i = k.partition("/")
            if name == key and v is not None and math.isfinite(v):
                acc[int(i)].append(v)
    return {i: sum(v) / len(v) for i, v in sorted(acc.items())}


def readout_measure(objective: str) -> tuple[str, float, str, bool]:
    """How per-loop / per-layer readouts are drawn for an objective: (diagnostic, scale,
    label, same), where `same` says the readout measures what the objective measures (so both
    share one axis). Readouts record token accuracy and loss: bits per byte is the loss / ln 2,
    and objectives with no per-readout twin (sequence accuracy, solved difficulty) are drawn
    beside token accuracy."""
    metric = objective.partition("/")[2]
    if metric == "bpb":
        return "readout_loss", 1 / math.log(2), "bits per byte", True
    if metric == "loss":
        return "readout_loss", 1.0, "loss (nats per token)", True
    return "readout_acc", 100.0, "token accuracy", metric == "acc_token"


def looped_settings(sa: StudyAnalysis) -> list[tuple[SettingStats, list, int]]:
    """(stats, completed records, trained loop count) of every looped setting, table order."""
    params = {s.label: s.params for s in sa.abl.settings()}
    model = sa.base.get("model", {})
    out = []
    for s in sa.stats:
        p = params.get(s.setting, {})
        if p.get("model.family", model.get("family")) != "looped":
            continue
        recs = [r for r in sa.records if r.setting == s.setting and r.group == s.group
                and r.state == "COMPLETE"]
        if recs:
            out.append((s, recs, int(p.get("model.loops", model.get("loops", 1)))))
    return out


def injected(sa: StudyAnalysis, setting: str) -> bool:
    """Whether a looped setting's later loops take more than the previous loop's output
    (input injection, or parallel looping's shift and injection)."""
    p = next((x.params for x in sa.abl.settings() if x.label == setting), {})
    model = sa.base.get("model", {})
    return (p.get("model.injection", model.get("injection")) != "none"
            or p.get("model.loop_mode", model.get("loop_mode")) == "parallel")


def block_series(sa: StudyAnalysis, setting: str, recs) -> tuple[dict, dict, dict] | None:
    """(block's own update norm, its successive cosines, injected input norm) by loop; None
    when the stored diagnostics cannot tell the block's part (made before the split, with
    injection: their update norms contain the injected input)."""
    norm = _series(recs, "block_norm")
    if norm:
        return norm, _series(recs, "block_cos"), _series(recs, "inject_norm")
    if injected(sa, setting):
        return None
    return _series(recs, "update_norm"), _series(recs, "update_cos"), {}


def legend_below(fig, ax_or_handles, ncol: int = 3) -> None:
    """One legend for the whole figure, under its panels."""
    handles, labels = (ax_or_handles.get_legend_handles_labels()
                       if hasattr(ax_or_handles, "get_legend_handles_labels") else ax_or_handles)
    fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), fontsize=7,
               frameon=False)


def plain_log_ticks(ax) -> None:
    """Tick labels of a log-scaled y axis as plain numbers (0.3, not 3 x 10^-1)."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        # LogFormatter picks which ticks get a label (a subset of the minor ones, and only
        # where the axis spans under a decade); this writes them as plain numbers.
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    ax.yaxis.set_major_formatter(Plain())
    ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False))


def diagnostic_figures(sa: StudyAnalysis, out: Path) -> dict[str, Figure]:
    """Figures by kind: "why", "extrapolate" and "adaptive" for looped studies, else
    "readout" (depth studies); kinds without data are left out."""
    figs: dict[str, Figure] = {}
    looped = looped_settings(sa)
    if not looped:
        readout = _readout_figure(sa, out)
        if readout:
            figs["readout"] = readout
        return figs
    for kind, draw in (("why", _why_figure), ("extrapolate", _extrapolate_figure),
                       ("adaptive", _adaptive_figure)):
        f = draw(sa, looped, out)
        if f:
            figs[kind] = f
    return figs


def _why_figure(sa: StudyAnalysis, looped, out: Path) -> Figure | None:
    """Inside the loop: readout, the block's own update norm (injected input dashed), and the
    cosine of the block's successive updates, per looped setting of more than one loop."""
    rows = [(s, recs, r) for s, recs, r in looped if r > 1
            and _series(recs, readout_measure(sa.objective)[0])]
    if not rows:
        return None
    key, scale, label, _ = readout_measure(sa.objective)
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(12.5, 4.2))
    for j, (s, recs, _r) in enumerate(rows):
        color = f"C{j % 10}"
        ser = _series(recs, key)
        axes[0].plot(list(ser), [v * scale for v in ser.values()], "-o", ms=3, color=color,
                     label=s.setting)
        split = block_series(sa, s.setting, recs)
        if split is None:
            continue
        norm, cos, inject = split
        if norm:
            axes[1].plot(list(norm), list(norm.values()), "-o", ms=3, color=color)
        if inject and injected(sa, s.setting):
            axes[1].plot(list(inject), list(inject.values()), "--x", ms=4, lw=1, color=color)
        if cos:
            axes[2].plot(list(cos), list(cos.values()), "-o", ms=3, color=color)
    axes[0].set_ylabel(f"readout {label}" + (" (%)" if key == "readout_acc" else ""))
    axes[1].set_ylabel("||block output - input|| / ||input||")
    axes[1].set_yscale("log")
    plain_log_ticks(axes[1])
    axes[2].set_ylabel("cos(block update r, block update r-1)")
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set_ylim(-1.05, 1.05)  # a cosine's whole range: studies read alike
    r_max = max(r for _, _, r in rows)
    for ax in axes:
        ax.set_xlabel("loop index r")
        ax.set_xticks(range(1, r_max + 1))
        ax.set_xlim(0.7, r_max + 0.3)
    axes[0].set_title("readout after loop r", fontsize=9)
    axes[1].set_title("block's own update (dashed: injected input)", fontsize=9)
    axes[2].set_title("direction of the block's successive updates", fontsize=9)
    if sa.chance is not None and key == "readout_acc":
        axes[0].axhline(100 * sa.chance, color="grey", ls=":", lw=1, label="chance")
    fig.suptitle("inside the loop (validation set, mean over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    legend_below(fig, axes[0])
    fig.savefig(out / "why.png")
    pyplot.close(fig)
    return Figure("why.png", _why_text(sa, rows))


def _extrapolate_figure(sa: StudyAnalysis, looped, out: Path) -> Figure | None:
    """Accuracy at r' loops at test time, per looped setting, validation and OOD."""
    curves = []
    for s, recs, r in looped:
        per_split: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for rec in recs:
            for split, curve in (rec.attrs.get(EXTRAPOLATION_ATTR) or {}).items():
                for k, v in curve.items():
                    if v is not None:
                        per_split[split][int(k)].append(v)
        if per_split:
            curves.append((s, r, {sp: {k: sum(v) / len(v) for k, v in sorted(c.items())}
                                  for sp, c in per_split.items()}))
    if not curves:
        return None
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for j, (s, r, c) in enumerate(curves):
        for ax, split in zip(axes, ("val", "ood"), strict=True):
            if split in c:
                ax.plot(list(c[split]), [100 * v for v in c[split].values()], "-o", ms=3,
                        color=f"C{j % 10}", label=f"{s.setting} (trained r={r})")
                ax.axvline(r, color=f"C{j % 10}", lw=0.6, ls=":")
    for ax, split in zip(axes, ("validation", "OOD"), strict=True):
        ax.set_xlabel("loops at test time r'")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(split, fontsize=9)
    axes[0].set_ylabel("token accuracy (%)")
    fig.suptitle("test-time loop extrapolation (mean over seeds; dotted: trained r)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    legend_below(fig, axes[0], ncol=2)
    fig.savefig(out / "extrapolate.png")
    pyplot.close(fig)
    return Figure("extrapolate.png", _extrapolate_text(curves))


def _adaptive_figure(sa: StudyAnalysis, looped, out: Path) -> Figure | None:
    """Adaptive exit: accuracy vs mean loops used, beside the fixed loop-count curve.

    Uses the looped setting with the most loops that recorded adaptive-exit curves (serial);
    rows are averaged over seeds threshold by threshold. A threshold at which no token exits
    early (0, or one whose mean loop count is the full r) is the fixed model again: it is
    neither drawn as an adaptive point nor chosen as the operating point.
    """
    cands = [(s, [x for x in recs if x.attrs.get(ADAPTIVE_ATTR)], r) for s, recs, r in looped]
    cands = [c for c in cands if c[1]]
    if not cands:
        return None
    s, recs, r = max(cands, key=lambda c: c[2])
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for crit in recs[0].attrs[ADAPTIVE_ATTR]:
        rows = [rec.attrs[ADAPTIVE_ATTR][crit] for rec in recs if crit in rec.attrs[ADAPTIVE_ATTR]]
        n = min(len(x) for x in rows)
        curves[crit] = [(rows[0][i]["threshold"],
                         sum(x[i]["mean_loops"] for x in rows) / len(rows),
                         sum(x[i]["acc_token"] for x in rows) / len(rows)) for i in range(n)]
        curves[crit] = [x for x in curves[crit] if exits_early(x, r)]
    fixed: dict[int, list[float]] = defaultdict(list)
    for rec in recs:
        for k, v in ((rec.attrs.get(EXTRAPOLATION_ATTR) or {}).get("val") or {}).items():
            if int(k) <= r and v is not None:
                fixed[int(k)].append(v)
    full = sum(fixed[r]) / len(fixed[r]) if fixed.get(r) else None
    picks = {crit: operating_point(rows, full) for crit, rows in curves.items()}
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 4.0))
    if fixed:
        ks = sorted(fixed)
        ax.plot(ks, [100 * sum(fixed[k]) / len(fixed[k]) for k in ks], "-o", color="k", ms=4,
                label="fixed loop count r'")
    for j, (crit, rows) in enumerate(curves.items()):
        ax.plot([x[1] for x in rows], [100 * x[2] for x in rows], "--s", ms=4, color=f"C{j}",
                label=f"adaptive exit: {crit}")
        if picks[crit]:
            _, loops, acc = picks[crit]
            ax.scatter([loops], [100 * acc], s=120, facecolors="none", edgecolors=f"C{j}",
                       linewidths=1.5)
    ax.set_xlabel("mean loops used")
    ax.set_ylabel("validation token accuracy (%)")
    ax.set_title(f"{s.setting}: adaptive exit vs fixed loop counts (mean over seeds)",
                 fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "adaptive.png")
    pyplot.close(fig)
    bits = []
    for crit, pick in picks.items():
        if full is None:
            continue
        if pick:
            t, loops, acc = pick
            bits.append(f"with `{crit}` at threshold {t:g} it keeps {100 * acc:.1f}% "
                        f"(fixed r={r}: {100 * full:.1f}%) using {loops:.2f} loops on average "
                        "(circled)")
        else:
            bits.append(f"with `{crit}` no threshold that exits early keeps the accuracy of "
                        f"fixed r={r} ({100 * full:.1f}%) within 1 point")
    text = (f"Adaptive exit on {s.setting} (trained r={r}, serial): every token (causal tasks) "
            "or sequence stops looping once its update norm or readout KL falls below a "
            "threshold, up to r loops; one point per threshold at which some token exits "
            "early. " + (("; ".join(bits) + ".")[0].upper() + ("; ".join(bits) + ".")[1:]
                         if bits else ""))
    return Figure("adaptive.png", text)


def exits_early(row: tuple[float, float, float], r: int) -> bool:
    """Whether a threshold's row (threshold, mean loops, accuracy) stops some token before
    loop r: threshold 0 never does (the criterion is strict), nor does any threshold whose
    mean loop count is r."""
    return row[0] > 0 and row[1] < r - 1e-9


def operating_point(rows: list[tuple[float, float, float]], full: float | None,
                    tolerance: float = 0.01) -> tuple[float, float, float] | None:
    """The row using the fewest loops whose accuracy is within `tolerance` of the fixed
    model's (`full`), among rows that exit early; None when there is none."""
    if full is None:
        return None
    good = [x for x in rows if x[2] >= full - tolerance]
    return min(good, key=lambda x: x[1]) if good else None


def _why_text(sa: StudyAnalysis, rows) -> str:
    key, scale, label, same = readout_measure(sa.objective)
    sign = -1.0 if key == "readout_loss" else 1.0  # loss: lower is better
    tol = sa.min_gain * sa.scale if same else 1.0  # within the minimum gain (or 1 point)
    parts, unsplit = [], []
    for s, recs, r in rows:
        ser = {i: v * scale for i, v in _series(recs, key).items()}
        best = max(ser.values(), key=lambda v: sign * v)
        first = next(i for i, v in ser.items() if sign * (best - v) <= tol)
        loss = key == "readout_loss"
        unit = label if loss else ("point" if tol == 1 else "points")
        bits = [f"{s.setting} (r={r}): the readout is within {tol:g} {unit} "
                f"of its best ({f'{best:.3f} {label}' if loss else f'{best:.1f}%'}) from loop "
                f"{first} on"]
        split = block_series(sa, s.setting, recs)
        if split is None:
            unsplit.append(s.setting)
        else:
            norm, cos, _ = split
            if len(norm) >= 2:
                a, b = norm[min(norm)], norm[max(norm)]
                bits.append(f"the block's own update {'falls' if b < a else 'rises'} from "
                            f"{a:.2f} of its input at loop {min(norm)} to {b:.3f} at loop "
                            f"{max(norm)}")
            if cos:
                neg = [i for i, v in cos.items() if v < 0]
                bits.append(("its successive updates point in opposite directions (negative "
                             "cosine) at loop" + ("s " if len(neg) > 1 else " ")
                             + ", ".join(map(str, neg))) if neg else
                            "its successive updates do not reverse (cosines >= 0)")
        parts.append("; ".join(bits) + ".")
    if unsplit:
        parts.append("For " + ", ".join(unsplit) + " the stored diagnostics do not separate the "
                     "block's update from the injected input, so nothing is said about the "
                     "block's updates there.")
    return (
        f"The readout after each loop ({label}: coda, final norm and head applied to the state "
        "after loop r), the block's own update in each loop (its output minus its input, "
        "relative to its input) and the cosine between the block's successive updates, on the "
        "validation set, averaged over seeds. The input of every loop after the first also "
        "carries what the loop did not compute (the injected prelude output; in parallel "
        "looping, the previous position's state): that part is drawn dashed and is not read as "
        "the block's behaviour. " + " ".join(parts)
    )


def _extrapolate_text(curves) -> str:
    parts = []
    for s, r, c in curves:
        val = c.get("val", {})
        at = val.get(r)
        beyond = {k: v for k, v in val.items() if k > r}
        if at is None or not beyond:
            continue
        best_k = max(val, key=val.get)
        last = max(beyond)
        loops = f"{r} loop{'s' if r > 1 else ''}"
        parts.append(f"{s.setting} (trained r={r}): {100 * at:.1f}% at its own {loops}, "
                     f"{100 * beyond[last]:.1f}% at r'={last}"
                     + ("" if best_k == r else f", best {100 * val[best_k]:.1f}% at r'={best_k}"))
    return ("Each looped model run for r' loops at test time, fewer and more than it was trained "
            "with (token accuracy on the validation and OOD splits). "
            + ("Validation: " + "; ".join(parts) + "." if parts else ""))


def _readout_figure(sa: StudyAnalysis, out: Path) -> Figure | None:
    """Depth studies: per-layer readout of the deepest model beside the across-model curve,
    in the objective's measure (a second axis where the readout has no twin of it)."""
    groups = [g for g in sa.groups if sa.ordered(g)]
    if not groups:
        return None
    g = groups[0]
    ss = [s for s in sa.groups[g] if s.n]
    if len(ss) < 2:
        return None
    deepest = max(ss, key=lambda s: s.axis)
    recs = [r for r in sa.records if r.setting == deepest.setting and r.state == "COMPLETE"]
    key, scale, label, same = readout_measure(sa.objective)
    inner = _series(recs, key)
    if not inner:
        return None
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 4.0))
    ax.plot([s.axis for s in ss], [s.mean * sa.scale for s in ss], "-o", ms=4,
            label=f"across models: the L-layer model's {sa.objective}")
    ax2 = ax if same else ax.twinx()
    ax2.plot(list(inner), [v * scale for v in inner.values()], "-s", ms=4, color="C1",
             label=f"inside the {int(deepest.axis)}-layer model: readout {label} after layer l")
    if sa.chance is not None and key == "readout_acc":
        ax2.axhline(100 * sa.chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("layers L (across models) / layer l (inside one model)")
    ax.set_ylabel(f"{sa.objective} (%)" if sa.scale == 100 else sa.objective)
    if not same:
        ax2.set_ylabel(f"readout {label}" + (" (%)" if key == "readout_acc" else ""))
    handles, labels = ax.get_legend_handles_labels()
    if not same:
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "readout.png")
    pyplot.close(fig)
    text = ("The per-layer readout (final norm and head applied to the residual stream after "
            f"each layer, a logit lens) of the {int(deepest.axis)}-layer model, mean over "
            f"seeds, in {label}, beside the {sa.objective} of models of each depth.")
    return Figure("readout.png", text)
