import math

import pytest
import torch
import torch.nn.functional as F

from lab.config import load_config
from lab.eval.metrics import Accuracy, Diagnostics
from lab.model import build_model, resolve
from lab.model.stack import StackOutput


def looped(loops=3, **kw):
    over = ["model.family=looped", "model.n_layers=3", "model.band=[1,1]", f"model.loops={loops}",
            "model.d_model=16", "model.n_heads=2"] + [f"{k}={v}" for k, v in kw.items()]
    cfg, task, plan = resolve(load_config(overrides=over))
    torch.manual_seed(0)
    return task, build_model(cfg, task, plan)


def test_identity_core_has_zero_updates():
    task, model = looped()
    core = model.blocks[1]
    with torch.no_grad():  # zeroed output projections: the block adds nothing to the residual
        core.proj.weight.zero_()
        core.out.weight.zero_()
    x, y = task.sample(4, torch.Generator().manual_seed(0))
    d = Diagnostics()
    d.update(model.trace(x), y)
    out = d.compute()
    for i in (1, 2, 3):
        assert out[f"update_norm/{i}"] == 0.0
    assert out["readout_kl/2"] == pytest.approx(0.0, abs=1e-9)
    assert out["readout_acc/1"] == out["readout_acc/3"]


def test_active_core_has_nonzero_updates():
    task, model = looped()
    x, y = task.sample(4, torch.Generator().manual_seed(0))
    d = Diagnostics()
    d.update(model.trace(x), y)
    assert all(d.compute()[f"update_norm/{i}"] > 0 for i in (1, 2, 3))


def test_diagnostics_arithmetic_against_hand_computation():
    # One sequence of two tokens, width 2, three boundaries.
    h0 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    h1 = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])  # updates: (0, 1) and (0, 0)
    h2 = torch.tensor([[[1.0, 0.0], [1.0, 2.0]]])  # updates: (0, -1) and (1, 0)
    p1 = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    p2 = torch.log(torch.tensor([[[0.8, 0.2], [0.9, 0.1]]]))
    y = torch.tensor([[0, -100]])
    d = Diagnostics()
    d.update(StackOutput(logits=p2, states=[h0, h1, h2], readouts=[p1, p2], grad=[True, True]), y)
    out = d.compute()
    # ||(0,1)|| / ||(1,0)|| = 1 and 0 / 2 = 0: mean 0.5.
    assert out["update_norm/1"] == pytest.approx(0.5)
    # ||(0,-1)|| / ||(1,1)|| = 1/sqrt(2), ||(1,0)|| / ||(0,2)|| = 0.5.
    assert out["update_norm/2"] == pytest.approx((1 / math.sqrt(2) + 0.5) / 2)
    # cos((0,-1), (0,1)) = -1; the second token's previous update is zero: cosine 0.
    assert out["update_cos/2"] == pytest.approx(-0.5)
    # KL over the labelled position only: 0.8 ln(0.8/0.5) + 0.2 ln(0.2/0.5).
    assert out["readout_kl/2"] == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4))
    assert out["readout_acc/1"] == 1.0 and out["readout_acc/2"] == 1.0


def test_accuracy_counts_tokens_and_sequences():
    logits = F.one_hot(torch.tensor([[1, 2, 0], [1, 1, 1]]), 3).float()
    y = torch.tensor([[1, 2, -100], [1, 0, -100]])
    a = Accuracy()
    a.update(logits, y)
    out = a.compute()
    assert out["acc_token"] == 3 / 4 and out["acc_seq"] == 1 / 2


def rel(d, ref):
    return float((d.norm(dim=-1) / ref.norm(dim=-1)).mean())


def test_split_recovers_the_blocks_own_update_under_injection():
    # Prelude block 0, core block 1 looped 3 times, coda block 2; the prelude output e is
    # added before loops 2 and 3. By hand from the blocks:
    #   u1 = e, h1 = core(u1);  u2 = h1 + e, h2 = core(u2);  u3 = h2 + e, h3 = core(u3)
    # The block's own update in loop i is core(u_i) - u_i; the injected part is u_i - h_{i-1}.
    task, model = looped(loops=3, **{"model.injection": "add"})
    model.eval()
    x, y = task.sample(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        e = model.blocks[0](model.embed_tokens(x))
        core = model.blocks[1]
        u, h, hs = [], e, [e]
        for i in range(3):
            u.append(h if i == 0 else h + e)
            h = core(u[-1])
            hs.append(h)
        d = Diagnostics()
        d.update(model.trace(x), y)
    out = d.compute()
    own = [hs[i] - u[i - 1] for i in (1, 2, 3)]  # own[i - 1]: loop i
    for i in (1, 2, 3):
        assert out[f"block_norm/{i}"] == pytest.approx(rel(own[i - 1], u[i - 1]), rel=1e-5)
    for i in (2, 3):
        assert out[f"inject_norm/{i}"] == pytest.approx(rel(e, hs[i - 1]), rel=1e-5)
        cos = float(F.cosine_similarity(own[i - 1], own[i - 2], dim=-1).mean())
        assert out[f"block_cos/{i}"] == pytest.approx(cos, abs=1e-5)
        # The total update carries the injection: it is not the block's.
        total = rel(hs[i] - hs[i - 1], hs[i - 1])
        assert out[f"update_norm/{i}"] == pytest.approx(total, rel=1e-5)
        assert abs(out[f"update_norm/{i}"] - out[f"block_norm/{i}"]) > 1e-3
    assert "inject_norm/1" not in out and "block_cos/1" not in out


def test_without_injection_the_block_update_is_the_whole_update():
    task, model = looped(loops=3)
    x, y = task.sample(4, torch.Generator().manual_seed(0))
    d = Diagnostics()
    with torch.no_grad():
        d.update(model.trace(x), y)
    out = d.compute()
    for i in (1, 2, 3):
        assert out[f"block_norm/{i}"] == pytest.approx(out[f"update_norm/{i}"], rel=1e-6)
    assert out["inject_norm/2"] == 0.0 and out["inject_norm/3"] == 0.0


def test_parallel_loop_input_is_the_shifted_output_plus_injection():
    # PLT: u_{i+1} at position t = h_i at t-1 (zeros at t = 0) + e_t.
    over = ["model.family=looped", "model.n_layers=3", "model.band=[1,1]", "model.loops=2",
            "model.d_model=16", "model.n_heads=2", "model.loop_mode=parallel",
            "task.name=word", "task.length=8"]
    cfg, task, plan = resolve(load_config(overrides=over))
    torch.manual_seed(0)
    model = build_model(cfg, task, plan).eval()
    x, y = task.sample(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        e = model.blocks[0](model.embed_tokens(x))
        out = model.trace(x)
        d = Diagnostics()
        d.update(out, y)
    h1, h2 = out.states[1], out.states[2]
    u2 = F.pad(h1, (0, 0, 1, 0))[:, :-1] + e
    assert torch.allclose(out.inputs[1], u2, atol=1e-6)
    got = d.compute()
    assert got["block_norm/2"] == pytest.approx(rel(h2 - u2, u2), rel=1e-5)
    assert got["inject_norm/2"] == pytest.approx(rel(u2 - h1, h1), rel=1e-5)
