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
