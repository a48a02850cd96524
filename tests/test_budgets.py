"""Budgets as real decayed models (lab.train.budgets): each branch equals a run trained for its
budget from scratch, bit for bit at the same thread count."""

from pathlib import Path

import pytest

from lab.config import load_config
from lab.errors import ConfigError
from lab.train import train
from lab.train.budgets import branch_overhead, branches

WSD = ["train.steps=40", "train.warmup=4", "train.schedule=wsd", "train.decay_fraction=0.25",
       "train.val_every=10", "train.ckpt_every=10", "eval.cost=false"]


def test_each_branch_equals_a_separately_trained_run(debug_cfg):
    res = train(debug_cfg("name=main", *WSD, "train.budgets=[0.5,0.75,1.0]"))
    assert res.status == "ok"
    assert [b["steps"] for b in res.budgets.values()] == [20, 30, 40]
    # Branch points: decay starts 25% before each budget: 20 - 5 = 15, 30 - 8 = 22.
    assert [b["branch_point"] for b in res.budgets.values()] == [15, 22, None]
    assert res.budgets["1"]["metrics"] == {k: v for k, v in res.metrics.items()
                                           if not k.startswith("diag/")}
    for steps in (20, 30):
        alone = train(debug_cfg(f"name=alone{steps}", *WSD, f"train.steps={steps}"))
        branch = next(b for b in res.budgets.values() if b["steps"] == steps)
        for k, v in branch["metrics"].items():
            assert alone.metrics[k] == v, (steps, k)  # bit-identical, not approximately


def test_a_retried_run_keeps_the_branches_it_had(debug_cfg):
    first = train(debug_cfg("name=retry", *WSD, "train.budgets=[0.5,1.0]"))
    # Without its branch checkpoint a branch could not be trained again: a retried trial
    # (resume) must read the finished branch back.
    for p in (Path(first.run_dir) / "checkpoints").glob("branch-*.ckpt"):
        p.unlink()
    again = train(debug_cfg("name=retry", *WSD, "train.budgets=[0.5,1.0]", "resume=true"))
    assert again.steps == 40 and again.metrics == first.metrics
    assert again.budgets["0.5"] == first.budgets["0.5"]


def test_overhead_and_validation():
    cfg = load_config(overrides=["train.steps=1000", "train.schedule=wsd",
                                 "train.budgets=[0.25,0.5,1.0]"])
    assert [(s, d) for _, s, d in branches(cfg)] == [(250, 200), (500, 400)]
    assert branch_overhead(cfg) == pytest.approx((50 + 100) / 1000)
    for bad, words in (("[0.5,0.25,1.0]", "increasing"), ("[0.5]", "end at 1.0"),
                       ("[0,1.0]", "increasing"), ("[0.5,1.5]", "increasing")):
        with pytest.raises(ConfigError, match=words) as e:
            load_config(overrides=["train.schedule=wsd", f"train.budgets={bad}"])
        assert e.value.key == "train.budgets"
    with pytest.raises(ConfigError, match="wsd") as e:
        load_config(overrides=["train.budgets=[0.5,1.0]"])  # cosine cannot branch
    with pytest.raises(ConfigError, match="warm-up"):
        load_config(overrides=["train.steps=100", "train.warmup=50", "train.schedule=wsd",
                               "train.budgets=[0.25,1.0]"])
    load_config(overrides=["train.budgets=[1.0]"])  # the full budget alone needs no wsd
