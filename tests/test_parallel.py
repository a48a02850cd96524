"""Parallel looping (PLT) and adaptive exit, each against an independent reference."""

import itertools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from references import complex_rope

from lab.config import load_config
from lab.errors import ConfigError
from lab.eval.adaptive import exit_curve, exit_settings, fixed_curve
from lab.eval.cost import kv_bytes_per_token, kv_cache_bytes, latency_costs, unique_params
from lab.eval.metrics import Diagnostics
from lab.model import build_model, count_params, resolve
from lab.model.stack import Stack
from lab.tasks import build_task

CAUSAL = {"name": "pointer", "causal": True, "nodes": 6, "hops": 2, "queries": 5}
BIDIR = {"name": "pointer", "nodes": 6, "hops": 2}
SMALL = ["model.d_model=16", "model.n_heads=2"]
LOOPED = ["model.family=looped", "model.n_layers=4", "model.band=[1,2]"]
PARTS = list(itertools.product([True, False], repeat=3))  # shift, shared_kv, gswa


def built(overrides, task=CAUSAL, seed=0):
    cfg = replace(load_config(overrides=[*SMALL, *overrides]), task=task)
    cfg, task, plan = resolve(cfg)
    torch.manual_seed(seed)
    return task, plan, build_model(cfg, task, plan)


def parallel(loops, shift=True, shared=True, gswa=True, window=3, extra=()):
    return [*LOOPED, f"model.loops={loops}", "model.loop_mode=parallel",
            f"model.plt_shift={shift}", f"model.plt_shared_kv={shared}",
            f"model.plt_gswa={gswa}", f"model.plt_window={window}", *extra]


def sample(task, n=3, seed=0):
    return task.sample(n, torch.Generator().manual_seed(seed))[0]


# --------------------------------------------------------------------------------------------
# An independent reference: the PLT equations of lab.model.parallel, position by position.


def _block_ref(blk, h, k1v1, loop, spec):
    """One pre-norm block over (B, T, C) with explicit per-position attention."""
    B, T, C = h.shape
    nh = blk.n_heads
    hs = C // nh
    q, k, v = blk.qkv(blk.ln1(h)).view(B, T, 3, nh, hs).unbind(2)  # (B, T, nh, hs) each
    if blk.rotary is not None:  # rotary positions, in their complex form, per head
        pos = torch.arange(T)
        q, k = (complex_rope(t.transpose(1, 2), pos).transpose(1, 2) for t in (q, k))
    ys = torch.zeros(B, T, nh, hs)

    def att(t, keys, vals, lo):  # query t over keys lo..t
        s = torch.einsum("bhd,bshd->bhs", q[:, t], keys[:, lo:t + 1]) / math.sqrt(hs)
        return torch.einsum("bhs,bshd->bhd", s.softmax(-1), vals[:, lo:t + 1])

    for t in range(T):
        if loop == 0:
            ys[:, t] = att(t, k, v, 0)
            continue
        g_keys, g_vals = k1v1 if spec.shared_kv else (k, v)
        y = att(t, g_keys, g_vals, 0)
        if spec.gswa:
            local = att(t, k, v, max(0, t - spec.window + 1))
            g = torch.sigmoid((q[:, t] * blk.gate.weight).sum(-1) + blk.gate.bias)[..., None]
            y = g * y + (1 - g) * local
        ys[:, t] = y
    h = h + blk.proj(ys.reshape(B, T, C))
    h = h + blk.out(F.gelu(blk.fc(blk.ln2(h))))
    return h, (k, v)


@torch.no_grad()
def plt_reference(model: Stack, x: torch.Tensor, loops: int) -> torch.Tensor:
    plan, spec = model.plan, model.plan.parallel
    assert not model.resizers  # uniform widths: no resize maps to apply
    pos = torch.arange(x.shape[1])
    e = model.embed(x) + (model.pos(pos) if model.pos is not None else 0)
    for b in plan.prelude:
        e = model.blocks[b](e)
    first: dict[int, tuple] = {}
    h = e
    for loop in range(loops):
        if loop == 0:
            u = e
        elif spec.shift:
            u = torch.stack([(h[:, t - 1] if t else torch.zeros_like(h[:, 0])) + e[:, t]
                             for t in range(x.shape[1])], 1)
        else:
            u = h + (e if plan.injection == "add" else 0)
        h = u
        for b in plan.core:
            h, kv = _block_ref(model.blocks[b], h, first.get(b), loop, spec)
            if loop == 0:
                first[b] = kv
    for b in plan.coda:
        h = model.blocks[b](h)
    return model.head(model.norm(h))


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("shift,shared,gswa", PARTS)
@pytest.mark.parametrize("loops", [2, 3])
def test_parallel_forward_matches_reference_equations(loops, shift, shared, gswa, positions):
    task, plan, model = built(parallel(loops, shift, shared, gswa,
                                       extra=[f"model.positions={positions}"]))
    model.eval()
    x = sample(task)
    torch.testing.assert_close(model(x), plt_reference(model, x, loops), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift,shared,gswa", PARTS)
@pytest.mark.parametrize("loops", [2, 3])
def test_parallel_forward_equals_cached_decode(loops, shift, shared, gswa):
    task, plan, model = built(parallel(loops, shift, shared, gswa))
    model.eval()
    x = sample(task)
    full = model(x)
    cache = model.new_cache()
    # A chunk (loops one after another), then single tokens (all loops in one batched pass).
    steps = [model.decode_step(x[:, :4], 0, cache)]
    for t in range(4, x.shape[1]):
        steps.append(model.decode_step(x[:, t:t + 1], t, cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    # Token by token from the start, too.
    cache = model.new_cache()
    steps = [model.decode_step(x[:, t:t + 1], t, cache) for t in range(x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_single_token_decode_runs_all_loops_in_one_batched_pass():
    task, plan, model = built(parallel(3))
    model.eval()
    x = sample(task, 2)
    cache = model.new_cache()
    model.decode_step(x[:, :5], 0, cache)
    rows = []
    hook = model.blocks[plan.core[0]].register_forward_hook(
        lambda mod, args, out: rows.append(args[0].shape[0]))
    model.decode_step(x[:, 5:6], 5, cache)
    hook.remove()
    assert rows == [3 * 2]  # the core block ran once, on r x batch rows


@pytest.mark.parametrize("overrides", [
    ["model.n_layers=4", "model.band=[1,2]"],
    ["model.n_layers=3", "model.band=[1,1]", "model.injection=add"],
    ["model.n_layers=4", "model.band=[1,2]", "model.width_profile=wide_middle"],
], ids=["band2", "band1+injection", "wide_middle"])
@pytest.mark.parametrize("shift,shared,gswa", [(True, True, True), (False, False, False)])
def test_one_loop_parallel_is_serial(overrides, shift, shared, gswa):
    base = [*SMALL, "model.family=looped", "model.loops=1", *overrides]
    _, _, serial = built(base)
    task, plan, par = built([*base, "model.loop_mode=parallel", f"model.plt_shift={shift}",
                             f"model.plt_shared_kv={shared}", f"model.plt_gswa={gswa}"])
    # Same seed: the shared weights agree without copying; the gates are drawn last.
    missing = par.load_state_dict(serial.state_dict(), strict=False).missing_keys
    assert all(".gate." in k for k in missing) and (missing != []) == gswa
    x = sample(task)
    torch.testing.assert_close(par(x), serial(x), rtol=0, atol=0)
    out_p, out_s = par.trace(x), serial.trace(x)
    for a, b in zip(out_p.readouts + out_p.states, out_s.readouts + out_s.states, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Decoding too.
    par.eval()
    cache = par.new_cache()
    steps = [par.decode_step(x[:, t:t + 1], t, cache) for t in range(x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), serial(x), rtol=1e-5, atol=1e-5)


def test_gate_acts_only_after_the_first_loop():
    task, plan, model = built(parallel(2))
    x = sample(task)
    before1, before2 = model(x, 1), model(x, 2)
    with torch.no_grad():
        for b in plan.core:
            model.blocks[b].gate.bias.add_(3.0)
    torch.testing.assert_close(model(x, 1), before1, rtol=0, atol=0)
    assert not torch.allclose(model(x, 2), before2)


def test_parallel_trace_readouts_and_diagnostics():
    task, plan, model = built(parallel(3))
    x, y = task.sample(3, torch.Generator().manual_seed(0))
    out = model.trace(x)
    assert len(out.readouts) == 3 and len(out.states) == 4
    for i, ro in enumerate(out.readouts, start=1):
        torch.testing.assert_close(ro, model(x, i), rtol=0, atol=0)
    diag = Diagnostics()
    diag.update(out, y)
    got = diag.compute()
    assert {"readout_acc/3", "update_norm/3", "readout_kl/3"} <= set(got)
    # Truncated BPTT works in parallel mode too.
    out = model.trace(x, bptt=1)
    assert out.grad == [False, False, True] and out.logits.requires_grad


def test_parallel_backward_reaches_gates_and_param_formula():
    task, plan, model = built(parallel(2))
    x, y = task.sample(3, torch.Generator().manual_seed(0))
    F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert count_params(plan, task.vocab_size, task.max_seq_len) == unique_params(model)
    _, plan2, model2 = built(parallel(2, gswa=False))
    assert count_params(plan2, task.vocab_size, task.max_seq_len) == unique_params(model2)
    assert unique_params(model) - unique_params(model2) == 2 * (16 + 2)  # 2 core blocks


# --------------------------------------------------------------------------------------------
# KV cache: measured bytes against the formula


@pytest.mark.parametrize("shared,gswa", [(True, True), (True, False), (False, True)])
def test_kv_bytes_per_token_measured_equals_formula(shared, gswa):
    window = 4
    per_token = {}
    for r in (1, 2, 3, 4):
        task, plan, model = built(parallel(r, shared=shared, gswa=gswa, window=window))
        model.eval()
        x = sample(task, 2)
        B, T = x.shape
        assert window < T
        cache = model.new_cache()
        model.decode_step(x[:, :2], 0, cache)
        for t in range(2, T):
            model.decode_step(x[:, t:t + 1], t, cache)
        measured = sum(c.nbytes() for c in cache) / (B * T)
        assert measured == kv_bytes_per_token(plan, tokens=T)
        assert sum(c.nbytes() for c in cache) == kv_cache_bytes(plan, tokens=T, batch=B)
        per_token[r] = measured
    core = 2 * 16  # two core blocks of width 16
    growth = {r: round((per_token[r] - per_token[1]) * T) for r in per_token}  # bytes per row
    if shared:  # beyond loop 1, only windows: (r - 1) windows of 2 * width * 4 bytes
        later = window if gswa else 0
        assert growth == {r: (r - 1) * 2 * 4 * core * later for r in per_token}
    else:  # no sharing: every loop a full cache, as in serial mode
        assert growth == {r: (r - 1) * 2 * 4 * core * T for r in per_token}


def test_parallel_cache_is_smaller_than_serial_and_latency_costs_run_in_both_modes():
    task, plan_p, par = built(parallel(3, window=4))
    _, plan_s, ser = built([*LOOPED, "model.loops=3"])
    T = sample(task).shape[1]
    assert kv_bytes_per_token(plan_p, tokens=T) < kv_bytes_per_token(plan_s)
    # Long-context limit: the windows vanish, only prelude + loop 1 + coda remain.
    assert kv_bytes_per_token(plan_p) == kv_bytes_per_token(plan_s, loops=1)
    for model, plan in ((par, plan_p), (ser, plan_s)):
        got = latency_costs(model, task, None, n_tokens=4, repeats=1)
        assert got["latency_mode"] == "kv-cache decode" and got["latency_s_per_token"] > 0
        assert got["kv_bytes_per_token"] == kv_bytes_per_token(plan, tokens=T)


# --------------------------------------------------------------------------------------------
# Adaptive exit


@pytest.mark.parametrize("criterion", ["update_norm", "kl"])
@pytest.mark.parametrize("task", [CAUSAL, BIDIR], ids=["causal", "bidirectional"])
def test_adaptive_exit_extremes(task, criterion):
    task, plan, model = built([*LOOPED, "model.loops=2", "model.injection=add"], task)
    model.eval()
    x = sample(task, 4)
    shape = x.shape if task.causal else x.shape[:1]
    logits, used = model.adaptive(x, 0.0, 4, criterion)
    assert used.shape == shape and (used == 4).all()
    torch.testing.assert_close(logits, model(x, 4), rtol=0, atol=0)
    logits, used = model.adaptive(x, float("inf"), 4, criterion)
    assert (used == 1).all()
    torch.testing.assert_close(logits, model(x, 1), rtol=0, atol=0)
    # Default maximum: the plan's loop count.
    _, used = model.adaptive(x, 0.0, criterion=criterion)
    assert (used == 2).all()


@pytest.mark.parametrize("criterion", ["update_norm", "kl"])
def test_adaptive_exit_freezes_what_exited(criterion):
    # Bidirectional: a sequence that exits after loop i outputs the i-loop forward.
    task, plan, model = built([*LOOPED, "model.loops=3"], BIDIR)
    model.eval()
    x = sample(task, 16)
    with torch.no_grad():
        out = model.trace(x, 6)
        c = _criteria(model, out, criterion)  # (B, 6): the criterion after each loop
    mid = c[:, 2].sort().values[7:9]
    thr = float(mid.mean())  # some sequences exit early, some do not (no value at the edge)
    logits, used = model.adaptive(x, thr, 6, criterion)
    assert used.min() < used.max()
    for b in range(x.shape[0]):
        i = int(used[b])
        torch.testing.assert_close(logits[b], model(x[b:b + 1], i)[0], rtol=1e-5, atol=1e-5)
        below = (c[b, : i] < thr).nonzero()
        assert i == (int(below[0]) + 1 if len(below) else 6)
    # Causal: position 0 sees only itself, so its output is the used-loop forward's.
    task, plan, model = built([*LOOPED, "model.loops=3"], CAUSAL)
    model.eval()
    x = sample(task, 16)
    logits, used = model.adaptive(x, 0.05, 6, criterion)
    for b in range(x.shape[0]):
        ref = model(x[b:b + 1], int(used[b, 0]))[0, 0]
        torch.testing.assert_close(logits[b, 0], ref, rtol=1e-5, atol=1e-5)


def _criteria(model, out, criterion):
    cols = []
    for i in range(1, len(out.states)):
        if criterion == "update_norm":
            a, b = out.states[i - 1], out.states[i]
            cols.append((b - a).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1))
        else:
            prev = (out.readouts[i - 2] if i > 1
                    else model.readout_loop(out.states[0], model.plan.core[-1]))
            lp, lq = F.log_softmax(out.readouts[i - 1], -1), F.log_softmax(prev, -1)
            cols.append((lp.exp() * (lp - lq)).sum(-1).mean(1))
    return torch.stack(cols, 1)


def test_exit_curve_matches_fixed_curve_at_the_ends():
    task, plan, model = built([*LOOPED, "model.loops=2"], CAUSAL)
    x, y = task.sample(8, torch.Generator().manual_seed(3))
    rows = exit_curve(model, x, y, [0.0, 0.05, float("inf")], "update_norm", max_loops=3,
                      batch_size=5)
    fixed = fixed_curve(model, x, y, [3, 1], batch_size=5)
    assert [r["mean_loops"] for r in rows][::2] == [3.0, 1.0]
    assert 1.0 <= rows[1]["mean_loops"] <= 3.0
    for a, b in zip(rows[::2], fixed, strict=True):
        assert a["acc_token"] == b["acc_token"] and a["loss"] == pytest.approx(b["loss"])


def test_exit_settings_default_to_the_eval_loop_count():
    cfg = load_config(overrides=["model.family=looped", "model.loops=2", "model.eval_loops=5",
                                 "model.exit=kl", "model.exit_threshold=0.1"])
    assert exit_settings(cfg) == ("kl", 0.1, 5)
    cfg = load_config(overrides=["model.family=looped", "model.loops=2", "model.exit_max_loops=3"])
    assert exit_settings(cfg)[2] == 3


def test_adaptive_exit_refuses_parallel_mode():
    task, plan, model = built(parallel(2))
    with pytest.raises(ValueError, match="loop_mode=serial"):
        model.adaptive(sample(task), 0.1)


# --------------------------------------------------------------------------------------------
# Configuration errors


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.family=looped", "model.loops=2", "model.loop_mode=parallel"], "model.loop_mode"),
        (["model.loop_mode=diagonal"], "model.loop_mode"),
        (["model.family=uniform", "model.loop_mode=parallel"], "model.loop_mode"),
        (["model.exit=entropy"], "model.exit"),
        (["model.family=looped", "model.exit=kl", "model.loop_mode=parallel"], "model.exit"),
        (["model.family=uniform", "model.exit=kl"], "model.exit"),
        (["model.plt_window=0"], "model.plt_window"),
        (["model.exit_threshold=-1"], "model.exit_threshold"),
        (["model.exit_max_loops=0"], "model.exit_max_loops"),
        (["eval.exit_thresholds=[]"], "eval.exit_thresholds"),
        (["model.plt_shift=maybe"], "model.plt_shift"),
    ],
)
def test_bad_parallel_and_exit_configs_name_the_key(overrides, key):
    # The default task (pointer) is bidirectional.
    with pytest.raises(ConfigError) as e:
        resolve(load_config(overrides=overrides))
    assert e.value.key == key


def test_parallel_stack_refuses_bidirectional_construction():
    _, plan, _ = built(parallel(2))
    task = build_task(BIDIR)
    with pytest.raises(ConfigError) as e:
        Stack(plan, task.vocab_size, task.max_seq_len, causal=False)
    assert e.value.key == "model.loop_mode"
