"""Parameter-free width restore (model.resize=restore) against hand-written passes."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lab.config import load_config
from lab.errors import ConfigError
from lab.eval.cost import unique_params
from lab.model import build_model, count_params, resolve

CAUSAL = {"name": "pointer", "causal": True, "nodes": 6, "hops": 2, "queries": 5}


def built(overrides, task=CAUSAL):
    cfg = replace(load_config(overrides=["model.d_model=16", "model.n_heads=2", *overrides]),
                  task=task)
    cfg, task, plan = resolve(cfg)
    torch.manual_seed(0)
    return task, plan, build_model(cfg, task, plan)


def explicit(widths, resize="restore"):
    return built(["model.family=banded", f"model.n_layers={len(widths)}",
                  "model.width_profile=explicit", f"model.widths=[{','.join(map(str, widths))}]",
                  f"model.resize={resize}"])


def sample(task):
    return task.sample(3, torch.Generator().manual_seed(2))[0]


@torch.no_grad()
def test_bowtie_restores_the_dropped_dimensions_from_the_last_layer_that_had_them():
    task, plan, model = explicit([16, 12, 8, 12, 16])
    model.eval()
    x = sample(task)
    blk = model.blocks
    h0 = model.embed_tokens(x)  # rotary positions: the token embedding alone
    h1 = blk[0](h0)                                   # 16 wide
    h2 = blk[1](h1[..., :12])                         # dims 12..15 wait in h1
    h3 = blk[2](h2[..., :8])                          # dims 8..11 wait in h2
    h4 = blk[3](torch.cat([h3, h2[..., 8:12]], -1))   # back to 12 from layer 1
    h5 = blk[4](torch.cat([h4, h1[..., 12:16]], -1))  # back to 16 from layer 0
    ref = model.head(model.norm(h5))
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    # No parameters for the resizes, unlike the learned linear map.
    assert all(r.map is None for r in model.resizers.values())


@torch.no_grad()
def test_dimensions_no_earlier_layer_had_start_at_zero():
    task, plan, model = built(["model.family=banded", "model.n_layers=3",
                               "model.width_profile=wide_middle", "model.resize=restore"])
    assert plan.widths == (16, 32, 16)
    model.eval()
    x = sample(task)
    h0 = model.embed_tokens(x)
    h1 = model.blocks[0](h0)
    h2 = model.blocks[1](F.pad(h1, (0, 16)))
    h3 = model.blocks[2](h2[..., :16])
    torch.testing.assert_close(model(x), model.head(model.norm(h3)), rtol=0, atol=0)


@torch.no_grad()
def test_logit_lens_restores_without_disturbing_the_pass():
    task, _, model = explicit([16, 8, 16])
    model.eval()
    x = sample(task)
    out = model.trace(x)
    torch.testing.assert_close(out.readouts[-1], model(x), rtol=0, atol=0)
    # Readout after the narrow layer: its 8 dims plus layer 0's dims 8..15, then norm + head.
    h1 = out.states[1]
    lens = model.head(model.norm(torch.cat([out.states[2], h1[..., 8:]], -1)))
    torch.testing.assert_close(out.readouts[1], lens, rtol=0, atol=0)


@torch.no_grad()
def test_decode_with_kv_cache_matches_forward():
    task, _, model = explicit([16, 12, 8, 12, 16])
    model.eval()
    x = sample(task)
    cache = model.new_cache()
    steps = [model.decode_step(x[:, :3], 0, cache)]
    steps += [model.decode_step(x[:, t:t + 1], t, cache) for t in range(3, x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), model(x), rtol=1e-5, atol=1e-5)


def test_init_is_scaled_to_each_width_and_uniform_is_unchanged():
    _, _, model = explicit([16, 4, 16])
    stds = [b.fc.weight.std().item() for b in model.blocks]
    assert stds[0] == pytest.approx(0.02, rel=0.1)
    assert stds[1] == pytest.approx(0.02 * 2, rel=0.1)  # sqrt(16 / 4) = 2
    assert stds[2] == pytest.approx(0.02, rel=0.1)
    # A uniform stack has nothing to resize: restore is the same model as linear, bit for bit.
    task, _, a = explicit([16, 16, 16], "restore")
    _, _, b = explicit([16, 16, 16], "linear")
    x = sample(task)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_parameter_formula_counts_no_resize_weights():
    task, plan, model = explicit([16, 12, 8, 12, 16])
    assert count_params(plan, task.vocab_size, task.max_seq_len) == unique_params(model)
    _, lin_plan, _ = explicit([16, 12, 8, 12, 16], "linear")
    extra = 16 * 12 + 12 * 8 + 8 * 12 + 12 * 16
    assert count_params(lin_plan, task.vocab_size, task.max_seq_len) == (
        count_params(plan, task.vocab_size, task.max_seq_len) + extra)


def test_looped_plans_refuse_restore_naming_the_key():
    with pytest.raises(ConfigError) as e:
        resolve(load_config(overrides=["model.family=looped", "model.resize=restore"]))
    assert e.value.key == "model.resize"
    assert "restore" in str(e.value)
