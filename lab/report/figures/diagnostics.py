"""Report figures from the per-loop diagnostics that every trial records.

Each completed trial stores, as user attributes, its final validation diagnostics
(``diagnostics``: readout accuracy/loss after every loop or layer, relative update norms,
cosines between successive updates, readout KL) and, for looped models, the test-time
extrapolation curve (``extrapolation``: accuracy at r' loops on the validation and OOD
splits). These figures average them over seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from lab.report.figures.common import Figure, plt
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


def _by_setting(sa: StudyAnalysis, group: str):
    out = []
    for s in sa.groups.get(group, []):
        recs = [r for r in sa.records if r.setting == s.setting and r.group == s.group
                and r.state == "COMPLETE"]
        if recs:
            out.append((s, recs))
    return out


def _looped_group(sa: StudyAnalysis) -> str | None:
    for g, ss in sa.groups.items():
        for s in ss:
            recs = [r for r in sa.records if r.setting == s.setting and r.state == "COMPLETE"]
            if any(r.attrs.get(EXTRAPOLATION_ATTR) for r in recs):
                return g
    return None


def diagnostic_figures(sa: StudyAnalysis, out: Path) -> dict[str, Figure]:
    """Figures by kind: "why", "extrapolate" and "adaptive" for looped studies, else
    "readout" (depth studies); kinds without data are left out."""
    figs: dict[str, Figure] = {}
    g = _looped_group(sa)
    if g is not None:
        rows = [(s, recs) for s, recs in _by_setting(sa, g) if s.axis and s.axis > 1]
        if rows:
            pyplot = plt()
            fig, axes = pyplot.subplots(1, 3, figsize=(12.5, 3.7))
            for j, (s, recs) in enumerate(rows):
                color = f"C{j}"
                for ax, key, scale in ((axes[0], "readout_acc", 100), (axes[1], "update_norm", 1),
                                       (axes[2], "update_cos", 1)):
                    ser = _series(recs, key)
                    if ser:
                        ax.plot(list(ser), [v * scale for v in ser.values()], "-o", ms=3,
                                color=color, label=f"trained r={int(s.axis)}")
            axes[0].set_ylabel("readout accuracy (%)")
            axes[1].set_ylabel("||h_r - h_(r-1)|| / ||h_(r-1)||")
            axes[1].set_yscale("log")
            axes[2].set_ylabel("cos(update_r, update_(r-1))")
            axes[2].axhline(0, color="grey", lw=0.8)
            for ax in axes:
                ax.set_xlabel("loop index r")
                ax.xaxis.get_major_locator().set_params(integer=True)
            axes[0].legend(fontsize=7)
            if sa.chance is not None:
                axes[0].axhline(100 * sa.chance, color="grey", ls=":", lw=1)
            fig.suptitle("inside the loop (validation set, mean over seeds)", fontsize=10)
            fig.tight_layout()
            fig.savefig(out / "why.png")
            pyplot.close(fig)
            figs["why"] = Figure("why.png", _why_text(sa, rows))
        curves = []
        for s, recs in _by_setting(sa, g):
            per_split: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
            for r in recs:
                for split, curve in (r.attrs.get(EXTRAPOLATION_ATTR) or {}).items():
                    for k, v in curve.items():
                        if v is not None:
                            per_split[split][int(k)].append(v)
            if per_split:
                curves.append((s, {sp: {k: sum(v) / len(v) for k, v in sorted(c.items())}
                                   for sp, c in per_split.items()}))
        if curves:
            pyplot = plt()
            fig, axes = pyplot.subplots(1, 2, figsize=(10, 3.7), sharey=True)
            for j, (s, c) in enumerate(curves):
                for ax, split in zip(axes, ("val", "ood"), strict=True):
                    if split in c:
                        ax.plot(list(c[split]), [100 * v for v in c[split].values()], "-o", ms=3,
                                color=f"C{j}", label=f"trained r={int(s.axis or 0)}")
                        if s.axis:
                            ax.axvline(s.axis, color=f"C{j}", lw=0.6, ls=":")
            for ax, split in zip(axes, ("validation", "OOD"), strict=True):
                ax.set_xlabel("loops at test time r'")
                ax.xaxis.get_major_locator().set_params(integer=True)
                ax.set_title(split, fontsize=9)
            axes[0].set_ylabel("accuracy (%)")
            axes[0].legend(fontsize=7)
            fig.suptitle("test-time loop extrapolation (mean over seeds; dotted: trained r)",
                         fontsize=10)
            fig.tight_layout()
            fig.savefig(out / "extrapolate.png")
            pyplot.close(fig)
            figs["extrapolate"] = Figure("extrapolate.png", _extrapolate_text(curves))
        adaptive = _adaptive_figure(sa, out)
        if adaptive:
            figs["adaptive"] = adaptive
    else:
        readout = _readout_figure(sa, out)
        if readout:
            figs["readout"] = readout
    return figs


def _adaptive_figure(sa: StudyAnalysis, out: Path) -> Figure | None:
    """Adaptive exit: accuracy vs mean loops used, beside the fixed loop-count curve.

    Uses the serial looped setting with the most loops that recorded adaptive-exit curves;
    rows are averaged over seeds threshold by threshold.
    """
    cands = []
    for g in sa.groups:
        for s, recs in _by_setting(sa, g):
            recs = [r for r in recs if r.attrs.get(ADAPTIVE_ATTR)]
            if recs and s.axis:
                cands.append((s, recs))
    if not cands:
        return None
    s, recs = max(cands, key=lambda c: c[0].axis)
    r = int(s.axis)
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for crit in recs[0].attrs[ADAPTIVE_ATTR]:
        rows = [rec.attrs[ADAPTIVE_ATTR][crit] for rec in recs if crit in rec.attrs[ADAPTIVE_ATTR]]
        n = min(len(x) for x in rows)
        curves[crit] = [(rows[0][i]["threshold"],
                         sum(x[i]["mean_loops"] for x in rows) / len(rows),
                         sum(x[i]["acc_token"] for x in rows) / len(rows)) for i in range(n)]
    fixed: dict[int, list[float]] = defaultdict(list)
    for rec in recs:
        for k, v in ((rec.attrs.get(EXTRAPOLATION_ATTR) or {}).get("val") or {}).items():
            if int(k) <= r and v is not None:
                fixed[int(k)].append(v)
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 4.0))
    if fixed:
        ks = sorted(fixed)
        ax.plot(ks, [100 * sum(fixed[k]) / len(fixed[k]) for k in ks], "-o", color="k", ms=4,
                label="fixed loop count r'")
    for j, (crit, rows) in enumerate(curves.items()):
        ax.plot([x[1] for x in rows], [100 * x[2] for x in rows], "--s", ms=4, color=f"C{j}",
                label=f"adaptive exit: {crit}")
    ax.set_xlabel("mean loops used")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{s.setting}: adaptive exit vs fixed loop counts (mean over seeds)",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "adaptive.png")
    pyplot.close(fig)
    full = sum(fixed[r]) / len(fixed[r]) if fixed.get(r) else None
    bits = []
    for crit, rows in curves.items():
        if full is None:
            continue
        good = [x for x in rows if x[2] >= full - 0.01]
        if good:
            t, loops, acc = min(good, key=lambda x: x[1])
            bits.append(f"with `{crit}` at threshold {t:g} it keeps {100 * acc:.1f}% "
                        f"(fixed r={r}: {100 * full:.1f}%) using {loops:.2f} loops on average")
    text = (f"Adaptive exit on the model trained at r={r} (serial): every token (causal tasks) or "
            "sequence stops looping once its update norm or readout KL falls below a "
            "threshold, up to r loops; one point per threshold. "
            + (("; ".join(bits) + ".")[0].upper() + ("; ".join(bits) + ".")[1:] if bits else ""))
    return Figure("adaptive.png", text)


def _why_text(sa: StudyAnalysis, rows) -> str:
    parts = []
    for s, recs in rows:
        acc = _series(recs, "readout_acc")
        norm = _series(recs, "update_norm")
        cos = _series(recs, "update_cos")
        if not acc:
            continue
        first_full = next((i for i, v in acc.items() if v >= max(acc.values()) - 0.01), None)
        bits = [f"trained r={int(s.axis)}: readout accuracy reaches "
                f"{100 * max(acc.values()):.1f}% at loop {first_full}"]
        if len(norm) >= 2:
            bits.append(f"update norm {norm[min(norm)]:.2f} at loop 1 vs "
                        f"{norm[max(norm)]:.3f} at loop {max(norm)}")
        if cos:
            neg = [i for i, v in cos.items() if v < 0]
            bits.append(("updates oscillate (negative cosine) at loop"
                         + ("s " if len(neg) > 1 else " ") + ", ".join(map(str, neg)))
                        if neg else "no oscillation (cosines >= 0)")
        parts.append("; ".join(bits) + ".")
    return (
        "Readout accuracy after each loop (coda, final norm and head applied to the state "
        "after loop r), the relative update norm of each loop, and the cosine between "
        "successive updates, on the validation set, averaged over seeds. "
        + " ".join(parts)
    )


def _extrapolate_text(curves) -> str:
    parts = []
    for s, c in curves:
        val = c.get("val", {})
        if not val or not s.axis:
            continue
        r = int(s.axis)
        at = val.get(r)
        beyond = {k: v for k, v in val.items() if k > r}
        if at is None or not beyond:
            continue
        worst_k = min(beyond, key=beyond.get)
        parts.append(f"r={r}: {100 * at:.1f}% at its own loop count, "
                     f"{100 * beyond[worst_k]:.1f}% at r'={worst_k}")
    return ("A model trained at r loops, run for r' loops at test time (validation and OOD "
            "splits). " + ("; ".join(parts) + "." if parts else ""))


def _readout_figure(sa: StudyAnalysis, out: Path) -> Figure | None:
    """Depth studies: per-layer readout of the deepest model beside the across-model curve."""
    groups = [g for g in sa.groups if sa.ordered(g)]
    if not groups:
        return None
    g = groups[0]
    ss = [s for s in sa.groups[g] if s.n]
    if len(ss) < 2:
        return None
    deepest = max(ss, key=lambda s: s.axis)
    recs = [r for r in sa.records if r.setting == deepest.setting and r.state == "COMPLETE"]
    inner = _series(recs, "readout_acc")
    if not inner:
        return None
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.4, 4.0))
    ax.plot([s.axis for s in ss], [100 * s.mean for s in ss], "-o", ms=4,
            label="across models: L-layer model's accuracy")
    ax.plot(list(inner), [100 * v for v in inner.values()], "-s", ms=4,
            label=f"inside the {int(deepest.axis)}-layer model: readout after layer l")
    if sa.chance is not None:
        ax.axhline(100 * sa.chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("layers L (across models) / layer l (inside one model)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "readout.png")
    pyplot.close(fig)
    text = ("The per-layer readout (final norm and head applied to the residual stream after "
            f"each layer, a logit lens) of the {int(deepest.axis)}-layer model, mean over "
            "seeds, beside the accuracy of models of each depth.")
    return Figure("readout.png", text)
