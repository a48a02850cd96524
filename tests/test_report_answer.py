"""What a report says first and how it shows it, on synthetic studies with known answers
(tests/synth.py): the Answer block, costs from the paired cost pass, the diagnostics figures
(the block's own update, extrapolation, adaptive exit, per-layer readout) and figures whose
arms share an axis, carry a legend and have no colliding tick labels."""

import contextlib
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
from synth import LOOPS, MODES, spread, synthetic

from lab.report import write_report
from lab.report.answer import answer_lines
from lab.report.figures.diagnostics import exits_early, operating_point
from lab.report.study import StudyAnalysis
from lab.stats import ratio_ci


@contextlib.contextmanager
def drawn():
    """Every figure a report saves, by file name, kept for inspection."""
    import matplotlib.figure

    figs = {}
    save = matplotlib.figure.Figure.savefig

    def keep(self, path, *args, **kw):
        figs[Path(path).name] = self
        return save(self, path, *args, **kw)

    with mock.patch.object(matplotlib.figure.Figure, "savefig", keep):
        yield figs


def report(tmp: Path, build) -> SimpleNamespace:
    """Build a synthetic study in `tmp` (build(tmp) -> (abl, study)) and write its report:
    the markdown, summary.json, verdicts and saved figures."""
    with contextlib.chdir(tmp), drawn() as figs:
        abl, study = build(tmp)
        assert write_report(f"{abl.name}.yaml", quiet=True) == 0
        out = Path("reports") / abl.name
        return SimpleNamespace(md=(out / "report.md").read_text(), figs=figs,
                               summary=json.loads((out / "summary.json").read_text()),
                               verdicts=dict(StudyAnalysis(abl, study).verdicts()))


# Bits per byte, lower is better. looped/add levels off at 2 loops (a gain from 1 to 2, and
# 2 -> 3 equivalent within 0.01 by a tight spread); uniform (its 3-layer stack is looped r = 1,
# the same model) is open between 4 and 5 layers, whose order depends on seed 0.
DECIDED = {"looped, add, loops=1": [2.7000, 2.7002, 2.7004],
           "looped, add, loops=2": [2.5500, 2.5502, 2.5504],
           "looped, add, loops=3": [2.5510, 2.5512, 2.5514],
           "looped, none, loops=3": [2.80, 2.81, 2.82],
           "uniform, n_layers=4": [2.50, 2.58, 2.62], "uniform, n_layers=5": [2.62, 2.50, 2.60]}
LABELS = [*DECIDED, "uniform, n_layers=3"]
# Paired rounds: 2 loops takes 1.5x the time of 1 loop, every other setting its own speed.
ROUNDS = {k: [1e-5 * (1 + 0.1 * i) * (1 + 0.01 * j) for j in range(7)]
          for i, k in enumerate(LABELS)}
ROUNDS["looped, add, loops=2"] = [1.5 * x for x in ROUNDS["looped, add, loops=1"]]


def loops_study(tmp, **kw):
    kw.setdefault("latency", ROUNDS)
    return synthetic(tmp, "syn", LOOPS, lambda s, seed: DECIDED[s.label][seed], **kw)


MODE_LABELS = ["serial", "parallel, plt_shift=False", "parallel, plt_shift=True"]


@pytest.fixture(scope="module")
def loops(tmp_path_factory):
    return report(tmp_path_factory.mktemp("loops"), loops_study)


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    # Single-setting arms (every arm compared with serial), latencies within 0.3% of each
    # other: the case whose log-scaled cost axes wrote overlapping tick labels.
    rounds = {k: [6.05e-4 + 1e-6 * i + 1e-7 * j for j in range(7)]
              for i, k in enumerate(MODE_LABELS)}
    return report(tmp_path_factory.mktemp("modes"), lambda tmp: synthetic(
        tmp, "modes", MODES, lambda s, seed: spread(2.6, seed, 0.02), latency=rounds))


def test_answer_opens_the_report_one_line_per_arm_from_the_verdicts(loops):
    md = loops.md.splitlines()
    assert md[2] == "**Answer.**"
    block = md[4:md.index("", 4)]
    assert block == [f"- {a}" for a in loops.summary["answer"]]
    looped, uniform = loops.verdicts["looped/add"], loops.verdicts["uniform"]
    assert looped.supported and looped.saturation == "2 loops" and looped.best == "2 loops"
    assert not uniform.supported and uniform.reason == "inconclusive"
    lines = {a.split("**")[1]: a for a in loops.summary["answer"]}
    assert set(lines) == {"looped/add", "uniform", "looped/add against uniform"}
    # Decided: the saturation point; its best setting with the paired latency ratio.
    r, lo, hi = ratio_ci(ROUNDS["looped, add, loops=2"], ROUNDS["looped, add, loops=1"])
    assert lines["looped/add"].startswith("**looped/add**: levels off at 2 loops.")
    assert (f"Best: 2 loops (2.5502), {r:.2f}x the decode latency of 1 loop (95% CI {lo:.2f} "
            f"to {hi:.2f})") in lines["looped/add"]
    # Undecided: what would decide it (the verdict's own estimate, here past its cap), and
    # the strongest caveat the checks found: without seed 0, 5 layers beat 4 (an undecided
    # verdict stays undecided without it: its best mean is no conclusion, so the caveat is
    # the best setting's, not the verdict's).
    assert uniform.seeds_over_cap
    assert lines["uniform"].startswith("**uniform**: undecided: more than 1000 seeds per "
                                       "setting would be needed to decide it. Best: 4 layers")
    assert "Caveat: the best setting changes with the seed left out (uniform, n_layers=5 or " \
           "uniform, n_layers=4)." in lines["uniform"]
    assert "Caveat: none found (the verdict holds halfway through training; the verdict and " \
           "the best setting survive leaving out any one seed)." in lines["looped/add"]
    # The arms: better / worse / not distinguishable at equal depth, from the matched rows.
    assert lines["looped/add against uniform"].startswith(
        "**looped/add against uniform** at equal effective depth: the same model at 1 loop; ")
    # The long verdict paragraph no longer leads the report; the details are under Verdict.
    assert not any(x.startswith("**Verdict.**") for x in md)
    assert "## Verdict" in md


def test_costs_come_from_the_paired_pass_and_name_forward_latency(tmp_path):
    # Two models as fast as each other: per trial timed 23 us and 12 us, paired 0.99x.
    body = """
space:
  model.family:
    looped: {model.loops: [1]}
    uniform: {model.n_layers: [1]}
"""
    same = [1.2e-5 * (1 + 0.01 * j) for j in range(7)]
    paired = {"looped": [0.99 * x for x in same], "uniform": same}
    rep = report(tmp_path, lambda tmp: synthetic(
        tmp, "twins", body, lambda s, seed: spread(2.5, seed), mode="full-sequence pass",
        latency=paired, attrs=lambda s, seed: {
            "latency_s_per_token": 2.3e-5 if s.group == "looped" else 1.2e-5}))
    md = rep.md
    rows = {line.split(" | ")[0]: line.split(" | ") for line in md.splitlines()
            if line.startswith(("| looped |", "| uniform |"))}
    # The results table's latency column is the paired median, the same for both.
    assert {k: v[4] for k, v in rows.items()} == {"| looped": "12 us", "| uniform": "12 us"}
    assert "23 us" not in md
    # A bidirectional task is timed by a forward pass: no decode latency anywhere.
    assert "decode latency" not in md.lower()
    assert "forward latency per token" in md
    # No "1.55x (1.55x, ...)": a ratio is written once.
    assert not re.search(r"(\d+\.\d+x) \(\1", md)
    assert "Forward latency against looped, as ratios of the paired rounds" in md
    assert "uniform: 1.01x (95% CI 1.01 to 1.01)." in md  # 1 / 0.99 in every round
    # cost.png plots the paired latencies.
    lat_ax = next(ax for ax in rep.figs["cost.png"].axes if "latency" in ax.get_xlabel())
    xs = sorted(x for c in lat_ax.containers for x in c.lines[0].get_xdata())
    assert xs == pytest.approx(sorted(sorted(v)[3] for v in paired.values()))


def test_why_figure_and_text_speak_from_the_blocks_own_update(loops):
    why = loops.md[loops.md.index("## Why it levels off"):]
    # Synthetic diagnostics (tests/synth.py): the block's own update at loop i is
    # 0.5 / i^(1 + 0.3 r); the total update (with injection) 1 / i.
    assert "looped, add, loops=3 (r=3): " in why
    assert f"from 0.50 of its input at loop 1 to {0.5 / 3 ** 1.9:.3f} at loop 3" in why
    assert "0.333" not in why  # the total update's 1/3 at loop 3 is not the block's
    norm = loops.figs["why.png"].axes[1]
    solid = [ln for ln in norm.lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in norm.lines if ln.get_linestyle() == "--"]
    assert [list(ln.get_ydata()) for ln in solid][1] == pytest.approx(
        [0.5 / i ** 1.9 for i in (1, 2, 3)])
    # The injected input is drawn (dashed) only for the settings that inject: r = 2 and 3.
    assert len(dashed) == 2
    assert loops.figs["why.png"].legends, "why.png needs a legend"


def test_extrapolation_names_every_looped_setting_with_its_trained_loops(modes):
    fig = modes.figs["extrapolate.png"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [f"{k} (trained r=2)" for k in MODE_LABELS]
    # Synthetic curve: 0.5 + 0.02 min(k, r) - 0.01 max(0, k - r); r = 2, r' up to 4.
    for label in MODE_LABELS:
        assert f"{label} (trained r=2): 54.0% at its own 2 loops, 52.0% at r'=4" in modes.md


def test_adaptive_exit_never_picks_a_threshold_that_does_not_exit(loops):
    # Threshold 0 keeps the full accuracy by running every loop: it is not an operating point.
    assert "threshold 0 " not in loops.md
    assert "With `update_norm` no threshold that exits early keeps the accuracy of fixed r=3 " \
           "(56.0%) within 1 point." in loops.md
    ax = loops.figs["adaptive.png"].axes[0]
    adaptive = next(ln for ln in ax.lines if "adaptive" in ln.get_label())
    assert max(adaptive.get_xdata()) < 3  # no point at the full loop count

    # A threshold that exits early and keeps accuracy within 1 point is chosen: rows are
    # (threshold, mean loops, accuracy) at r = 3 with the fixed model at 56%.
    rows = [(0.0, 3.0, 0.56), (0.1, 2.5, 0.555), (0.3, 2.0, 0.54), (1e9, 1.0, 0.52)]
    kept = [x for x in rows if exits_early(x, 3)]
    assert kept == rows[1:]
    assert operating_point(kept, 0.56) == (0.1, 2.5, 0.555)
    assert operating_point(kept[1:], 0.56) is None


def test_readout_of_a_bits_per_byte_study_is_in_bits_per_byte(tmp_path):
    body = "space: {model.n_layers: [1, 2, 3]}\naxis: model.n_layers\n"
    rep = report(tmp_path, lambda tmp: synthetic(
        tmp, "depth", body, lambda s, seed: spread(2.6 - 0.05 * s.axis, seed)))
    ax = rep.figs["readout.png"].axes[0]
    assert ax.get_ylabel() == "val/bpb" and "accuracy" not in ax.get_ylabel()
    inside = next(ln for ln in ax.lines if "inside" in ln.get_label())
    # Synthetic readout loss after layer i of the 3-layer model: 2.2 - 0.2 i / 3 nats.
    assert list(inside.get_ydata()) == pytest.approx(
        [(2.2 - 0.2 * i / 3) / math.log(2) for i in (1, 2, 3)])
    assert "bits per byte" in inside.get_label()


def tick_labels_collide(fig, axis: str) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # a closed figure has lost its canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        ticks = ax.xaxis.get_ticklabels(which="both") if axis == "x" else \
            ax.yaxis.get_ticklabels(which="both")
        boxes = [t.get_window_extent(renderer) for t in ticks
                 if t.get_visible() and t.get_text()]
        for i, a in enumerate(boxes):
            if any(a.overlaps(b) for b in boxes[i + 1:]):
                return True
    return False


def test_figures_share_axes_have_legends_and_no_colliding_ticks(modes):
    cost = modes.figs["cost.png"]
    assert cost.legends and [t.get_text() for t in cost.legends[0].get_texts()] == [
        "serial", "parallel/False", "parallel/True"]
    first = cost.axes[0]
    assert all(first.get_shared_y_axes().joined(first, ax) for ax in cost.axes[1:])
    assert not tick_labels_collide(cost, "x")
    assert not tick_labels_collide(modes.figs["objective.png"], "y")
    # Every single-setting arm's learning curve in one panel (not one panel per arm).
    curves = modes.figs["curves.png"]
    assert len([ax for ax in curves.axes if ax.get_visible()]) == 1
    assert len(curves.axes[0].get_legend().get_texts()) == 3


def test_learning_curves_of_arms_share_one_y_axis(loops):
    axes = [ax for ax in loops.figs["curves.png"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["looped/add", "looped/none", "uniform"]
    assert all(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes[1:])
    assert all(ax.get_legend() is not None for ax in axes)
    cost = loops.figs["cost.png"]
    assert [t.get_text() for t in cost.legends[0].get_texts()] == [
        "looped/add", "looped/none", "uniform"]


def test_caveat_names_a_budget_at_which_the_verdict_differs(tmp_path):
    # Full budget (20 steps): 1 -> 2 layers gains, 2 -> 3 equivalent: levels off at 2 layers.
    # At the 10-step budget every step still gains: the verdict differs there.
    full = {1: 2.60, 2: 2.45, 3: 2.4502}
    half = {1: 2.90, 2: 2.75, 3: 2.60}
    body = "space: {model.n_layers: [1, 2, 3]}\naxis: model.n_layers\n"

    def budgets(s, seed):
        n = int(s.axis)
        return {"budgets": {"0.5": {"steps": 10, "metrics": {"val/bpb": spread(half[n], seed,
                                                                               1e-4)}},
                            "1.0": {"steps": 20, "metrics": {"val/bpb": spread(full[n], seed,
                                                                               1e-4)}}}}

    abl, study = synthetic(tmp_path, "bud", body,
                           lambda s, seed: spread(full[int(s.axis)], seed, 1e-4), attrs=budgets)
    sa = StudyAnalysis(abl, study)
    v = dict(sa.verdicts())[""]
    assert v.supported and v.saturation == "2 layers"
    line = answer_lines(sa, sa.verdicts())[0]
    assert line.startswith("**bud**: levels off at 2 layers.")
    assert line.endswith("Caveat: at the 10-step budget the verdict differs: still gaining at "
                         "the end of the range.")
