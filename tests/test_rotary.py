"""Rotary positions (model.positions=rope) and tied embeddings, against independent references:
RoPE in its complex-number form, relative-position invariance, decode == forward in every loop
mode, and the parameter formula for every recipe."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from references import complex_rope

from lab.config import load_config
from lab.errors import ConfigError
from lab.eval.cost import unique_params
from lab.model import build_model, count_params, resolve
from lab.model.rotary import Rotary

CAUSAL = {"name": "pointer", "causal": True, "nodes": 6, "hops": 2, "queries": 5}
BIDIR = {"name": "pointer", "nodes": 6, "hops": 2}


@pytest.mark.parametrize("offset", [0, 5, 300])
@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_rotary_equals_the_complex_number_form(offset, base):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 4, 7, 16, generator=g)  # (B, nh, T, hs) each
    rot = Rotary(16, base, length=8)  # grows on demand past its first table
    rq, rk = rot(q, k, offset)
    pos = torch.arange(offset, offset + 7)
    torch.testing.assert_close(rq, complex_rope(q, pos, base), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, complex_rope(k, pos, base), rtol=1e-5, atol=1e-5)
    # A rotation: norms are kept.
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, 2, 9, 8, generator=g)
    rot = Rotary(8)
    scores = [(lambda a, b: a @ b.transpose(-1, -2))(*rot(q, k, off)) for off in (0, 13, 250)]
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores[2], scores[0], rtol=1e-4, atol=1e-4)
    # ... and do depend on it: without rotation the scores are another matrix.
    assert not torch.allclose(q @ k.transpose(-1, -2), scores[0], atol=1e-3)


# The default recipe (rotary, tied) for every task here, the pointer task's own included
# (lab.config.TASK_RECIPES; tests/test_config.py): these tests are about the recipe itself.
RECIPE = ["model.positions=rope", "model.tie_embeddings=true"]


def built(overrides, task=CAUSAL):
    cfg = replace(load_config(overrides=["model.d_model=16", "model.n_heads=2", *RECIPE,
                                         *overrides]), task=task)
    cfg, task, plan = resolve(cfg)
    torch.manual_seed(0)
    return task, plan, build_model(cfg, task, plan).eval()


@torch.no_grad()
def test_block_attention_equals_a_hand_written_rope_attention():
    task, plan, model = built(["model.n_layers=1"])
    assert plan.positions == "rope" and model.pos is None
    x = task.sample(2, torch.Generator().manual_seed(3))[0]
    blk = model.blocks[0]
    h = blk.ln1(model.embed(x))
    B, T, C = h.shape
    q, k, v = blk.qkv(h).view(B, T, 3, 2, 8).permute(2, 0, 3, 1, 4)
    pos = torch.arange(T)
    q, k = complex_rope(q, pos), complex_rope(k, pos)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    torch.testing.assert_close(blk.attention(h), blk.proj(y), rtol=1e-5, atol=1e-5)


DECODE_PLANS = {
    "uniform": ["model.n_layers=2"],
    "looped-serial": ["model.family=looped", "model.loops=3", "model.injection=add"],
    "banded-restore": ["model.family=banded", "model.n_layers=5", "model.width_profile=explicit",
                       "model.widths=[16,12,8,12,16]", "model.resize=restore"],
    "plt": ["model.family=looped", "model.loops=3", "model.loop_mode=parallel"],
    "plt-noshift": ["model.family=looped", "model.loops=3", "model.loop_mode=parallel",
                    "model.plt_shift=false"],
    "serial-shared-kv": ["model.family=looped", "model.loops=3", "model.loop_mode=parallel",
                         "model.plt_shift=false", "model.plt_gswa=false"],
    "plt-window": ["model.family=looped", "model.loops=2", "model.loop_mode=parallel",
                   "model.plt_window=2"],
}


@pytest.mark.parametrize("overrides", DECODE_PLANS.values(), ids=DECODE_PLANS.keys())
@torch.no_grad()
def test_decode_with_a_kv_cache_equals_the_forward_pass(overrides):
    task, _, model = built(overrides)
    x = task.sample(3, torch.Generator().manual_seed(2))[0]
    cache = model.new_cache()
    steps = [model.decode_step(x[:, :3], 0, cache)]
    steps += [model.decode_step(x[:, t:t + 1], t, cache) for t in range(3, x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), model(x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_rope_decodes_past_the_training_length_and_learned_positions_refuse():
    task, _, model = built(["model.n_layers=2"])
    n = task.max_seq_len + 20
    x = torch.randint(task.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache()
    out = torch.cat([model.decode_step(x[:, t:t + 1], t, cache) for t in range(n)], 1)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    _, _, learned = built(["model.n_layers=2", "model.positions=learned"])
    with pytest.raises(ValueError, match="max_len"):
        learned(x)


@torch.no_grad()
def test_a_looped_model_rotates_by_the_same_positions_at_every_loop():
    # Looping the band r times equals running the same block r times by hand, positions
    # 0..T-1 at every pass (a loop does not move a token).
    task, _, model = built(["model.family=looped", "model.n_layers=1", "model.loops=3"])
    x = task.sample(2, torch.Generator().manual_seed(4))[0]
    h = model.embed(x)
    for _ in range(3):
        h = model.blocks[0](h)
    torch.testing.assert_close(model(x), model.head(model.norm(h)), rtol=0, atol=0)


@torch.no_grad()
def test_no_positions_makes_a_bidirectional_model_permutation_equivariant():
    task, _, model = built(["model.n_layers=2", "model.positions=none"], BIDIR)
    x = task.sample(2, torch.Generator().manual_seed(5))[0]
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(model(x[:, perm]), model(x)[:, perm], rtol=1e-5, atol=1e-5)
    _, _, rope = built(["model.n_layers=2"], BIDIR)
    assert not torch.allclose(rope(x[:, perm]), rope(x)[:, perm], atol=1e-4)


@pytest.mark.parametrize("positions", ["rope", "learned", "none"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("family", [
    ["model.family=uniform", "model.n_layers=2"],
    ["model.family=looped", "model.n_layers=3", "model.loops=2", "model.loop_mode=parallel"],
    ["model.family=banded", "model.n_layers=4", "model.width_profile=wide_ends"],
], ids=["uniform", "plt", "banded"])
def test_parameter_formula_for_every_recipe(positions, tied, family):
    task, plan, model = built([*family, f"model.positions={positions}",
                               f"model.tie_embeddings={str(tied).lower()}"])
    assert count_params(plan, task.vocab_size, task.max_seq_len) == unique_params(model)
    emb = task.vocab_size * plan.embed_width
    table = task.max_seq_len * plan.embed_width
    base = count_params(replace(plan, positions="rope", tied=True), task.vocab_size,
                        task.max_seq_len)
    # rope and none add nothing; learned adds its table; an untied head adds V x width.
    extra = (table if positions == "learned" else 0) + (0 if tied else emb)
    assert unique_params(model) == base + extra
    assert (model.head.weight is model.embed.weight) == tied


def test_tied_head_trains_one_matrix():
    task, _, model = built(["model.n_layers=1"])
    model.train()
    x, y = task.sample(3, torch.Generator().manual_seed(0))
    F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    names = [n for n, _ in model.named_parameters()]
    assert "head.weight" not in names and "embed.weight" in names
    assert model.embed.weight.grad is not None


def test_recipe_errors_name_the_key():
    with pytest.raises(ConfigError) as e:  # head size 3: no pairs to rotate
        resolve(replace(load_config(overrides=["model.d_model=12", "model.n_heads=4", *RECIPE]),
                        task=CAUSAL))
    assert e.value.key == "model.positions" and "even" in str(e.value)
    # ... learned positions take any head size
    resolve(replace(load_config(overrides=["model.d_model=12", "model.n_heads=4",
                                           "model.positions=learned"]), task=CAUSAL))
    with pytest.raises(ConfigError) as e:
        resolve(replace(load_config(overrides=[
            "model.family=banded", "model.n_layers=3", "model.width_profile=explicit",
            "model.widths=[8,24,16]", "model.n_heads=2", *RECIPE]), task=CAUSAL))
    assert e.value.key == "model.tie_embeddings" and "tie_embeddings=false" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["model.positions=alibi"])
    assert e.value.key == "model.positions"
