"""Plans, the executor, parameter matching and FLOPs, each against an independent reference."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lab.config import ModelConfig, load_config
from lab.errors import ConfigError
from lab.eval.cost import flops_per_token, kv_bytes_per_token, unique_params
from lab.model import build_model, count_params, make_plan, resolve
from lab.model.plan import block_params, match_params
from lab.model.stack import Stack
from lab.tasks import build_task

TASKS = [
    {"name": "pointer", "nodes": 6, "hops": 2},
    {"name": "pointer", "causal": True, "nodes": 6, "hops": 2, "queries": 5},
    {"name": "induction", "alphabet": 4, "length": 10},
    {"name": "word", "length": 6},
]
FAMILIES = [
    ["model.family=uniform", "model.n_layers=2"],
    ["model.family=looped", "model.n_layers=3", "model.band=[1,1]", "model.loops=3"],
    ["model.family=banded", "model.n_layers=4", "model.width_profile=wide_middle"],
    ["model.family=looped", "model.n_layers=4", "model.loops=2", "model.width_profile=narrow_middle",
     "model.injection=add"],
]
SMALL = ["model.d_model=16", "model.n_heads=2"]


def built(overrides, task=None):
    cfg = load_config(overrides=[*SMALL, *overrides])
    if task is not None:
        cfg = replace(cfg, task=task)
    cfg, task, plan = resolve(cfg)
    torch.manual_seed(0)
    return cfg, task, plan, build_model(cfg, task, plan)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t["name"] + ("-causal" if t.get("causal") else ""))
@pytest.mark.parametrize("fam", FAMILIES, ids=["uniform", "looped", "banded", "looped+band"])
def test_forward_backward_every_family_and_task(fam, task):
    cfg, task, plan, model = built(fam, task)
    x, y = task.sample(3, torch.Generator().manual_seed(0))
    logits = model(x)
    assert logits.shape == (*x.shape, task.vocab_size)
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_looped_plan_executes_8_blocks_and_owns_4():
    cfg = ModelConfig(family="looped", n_layers=4, band=[1, 2], loops=3, d_model=16, n_heads=2)
    plan = make_plan(cfg)
    # prelude 1 + core 2 x 3 loops + coda 1 = 8 executed blocks; 4 unique ones.
    assert plan.order() == (0, 1, 2, 1, 2, 1, 2, 3)
    assert plan.effective_depth() == 8 and plan.n_blocks == 4
    model = Stack(plan, vocab_size=10, max_len=8, causal=True)
    assert len(model.blocks) == 4
    assert sum(p.numel() for p in model.blocks.parameters()) == 4 * block_params(16, 64)


def _unrolled_copy(model: Stack, loops: int) -> Stack:
    """An explicit uniform stack executing the same blocks, with copied weights."""
    plan = model.plan
    order = plan.order(loops)
    uni = replace(plan, family="uniform", widths=tuple(plan.widths[b] for b in order),
                  hidden=tuple(plan.hidden[b] for b in order), prelude=tuple(range(len(order))),
                  core=(), coda=(), loops=1, injection="none")
    ref = Stack(uni, model.embed.num_embeddings, model.max_len, model.causal)
    ref.embed.load_state_dict(model.embed.state_dict())
    if model.pos is not None:
        ref.pos.load_state_dict(model.pos.state_dict())
    ref.norm.load_state_dict(model.norm.state_dict())
    ref.head.load_state_dict(model.head.state_dict())
    for i, b in enumerate(order):
        ref.blocks[i].load_state_dict(model.blocks[b].state_dict())
    return ref


@pytest.mark.parametrize("loops", [1, 2, 3])
def test_looped_output_equals_unrolled_stack(loops):
    _, task, plan, model = built(["model.family=looped", "model.n_layers=4", "model.band=[1,2]",
                                  f"model.loops={loops}"], TASKS[1])
    ref = _unrolled_copy(model, loops)
    x, _ = task.sample(4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    # The same shared weights run for a different loop count match that unrolling too.
    torch.testing.assert_close(model(x, loops + 1), _unrolled_copy(model, loops + 1)(x))


def test_input_injection_adds_prelude_output_before_later_loops():
    _, task, plan, model = built(["model.family=looped", "model.n_layers=2", "model.band=[1,1]",
                                  "model.loops=3", "model.injection=add"], TASKS[0])
    x, _ = task.sample(2, torch.Generator().manual_seed(1))
    e = model.blocks[0](model.embed_tokens(x))
    h = e
    for i in range(3):
        h = model.blocks[1](h + (e if i else 0))
    torch.testing.assert_close(model(x), model.head(model.norm(h)))


@pytest.mark.parametrize(
    "profile,expected",
    [
        ("uniform", (16, 16, 16, 16)),
        ("wide_middle", (16, 32, 32, 16)),
        ("narrow_middle", (16, 8, 8, 16)),
        ("wide_ends", (32, 16, 16, 32)),
    ],
)
@pytest.mark.parametrize("resize", ["linear", "pad"])
def test_banded_widths_and_resize(profile, expected, resize):
    _, task, plan, model = built(["model.family=banded", "model.n_layers=4",
                                  f"model.width_profile={profile}", f"model.resize={resize}"],
                                 TASKS[0])
    assert plan.widths == expected
    assert [b.ln1.normalized_shape[0] for b in model.blocks] == list(expected)
    n_maps = sum(1 for r in model.resizers.values() if r.map is not None)
    changes = sum(1 for a, b in zip(expected, expected[1:], strict=False) if a != b)
    assert n_maps == (changes if resize == "linear" else 0)
    x, _ = task.sample(2, torch.Generator().manual_seed(1))
    assert torch.isfinite(model(x)).all()


def test_pad_resize_truncates_and_zero_pads():
    from lab.model.stack import Resize

    h = torch.arange(6.0).view(1, 1, 6)
    assert Resize(6, 4, "pad")(h).tolist() == [[[0, 1, 2, 3]]]
    assert Resize(6, 8, "pad")(h).tolist() == [[[0, 1, 2, 3, 4, 5, 0, 0]]]


def test_explicit_widths():
    _, _, plan, _ = built(["model.family=banded", "model.n_layers=3",
                           "model.width_profile=explicit", "model.widths=[8,24,16]",
                           "model.tie_embeddings=false"], TASKS[0])
    assert plan.widths == (8, 24, 16)


CONFIGS = [f + [] for f in FAMILIES] + [
    ["model.family=banded", "model.n_layers=5", "model.width_profile=wide_ends", "model.resize=pad"],
    ["model.family=looped", "model.n_layers=1", "model.loops=4"],
    ["model.family=looped", "model.n_layers=3", "model.band=[0,1]", "model.width_profile=wide_middle",
     "model.injection=add", "model.loops=2", "model.tie_embeddings=false"],
]


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: "_".join(s.split("=")[1] for s in o))
def test_param_formula_matches_module(overrides):
    for task in TASKS:
        _, task, plan, model = built(overrides, task)
        assert count_params(plan, task.vocab_size, task.max_seq_len) == unique_params(model)


@pytest.mark.parametrize("loops", [1, 2, 4])
def test_looped_flops_equal_unrolled_uniform(loops):
    _, task, plan, model = built(["model.family=looped", "model.n_layers=3", "model.band=[1,1]",
                                  f"model.loops={loops}"], TASKS[1])
    ref = _unrolled_copy(model, loops)
    assert flops_per_token(model, task) == flops_per_token(ref, task)
    assert flops_per_token(model, task, train=True) == flops_per_token(ref, task, train=True)
    # Attention is counted on the CPU too: the total exceeds the matmul-only count.
    assert flops_per_token(model, task) > 0


def test_flops_count_attention_on_cpu():
    from lab.eval.cost import count_flops

    q = torch.randn(1, 2, 8, 4)
    # 2 matmuls of (8 x 4) @ (4 x 8) and (8 x 8) @ (8 x 4) per head, 2 FLOPs per MAC.
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * 2 * (2 * 8 * 8 * 4)


@pytest.mark.parametrize(
    "target",
    [
        {"width_profile": "uniform"},
        {"width_profile": "uniform", "n_layers": 6},
    ],
)
@pytest.mark.parametrize("profile", ["wide_middle", "narrow_middle", "wide_ends"])
def test_param_matching_within_two_percent(profile, target):
    task = build_task({"name": "pointer"})
    cfg = ModelConfig(family="banded", n_layers=4, d_model=64, n_heads=4, width_profile=profile,
                      match_params=target)
    m = match_params(cfg, task.vocab_size, task.max_seq_len)
    ref = count_params(make_plan(replace(cfg, match_params=None, **target)), task.vocab_size,
                       task.max_seq_len)
    got = count_params(make_plan(replace(cfg, match_params=None, d_model=m.d_model,
                                         mlp_ratio=m.mlp_ratio)), task.vocab_size, task.max_seq_len)
    assert m.target == ref and m.params == got
    assert abs(got - ref) / ref <= 0.02


def test_matching_through_resolve_records_widths():
    cfg = load_config(overrides=["model.family=banded", "model.n_layers=4",
                                 "model.width_profile=wide_middle",
                                 "model.match_params={width_profile: uniform}"])
    cfg2, task, plan = resolve(cfg)
    assert cfg2.model.d_model < 64  # the wide band costs parameters, so the base narrows
    ref, _, _ = resolve(load_config(overrides=["model.family=banded", "model.n_layers=4"]))
    n_ref = count_params(make_plan(ref.model), task.vocab_size, task.max_seq_len)
    assert abs(count_params(plan, task.vocab_size, task.max_seq_len) - n_ref) / n_ref <= 0.02


def test_readout_after_last_loop_is_the_output():
    for fam in FAMILIES:
        _, task, plan, model = built(fam, TASKS[1])
        x, _ = task.sample(2, torch.Generator().manual_seed(0))
        out = model.trace(x)
        torch.testing.assert_close(out.readouts[-1], model(x), rtol=0, atol=0)
        n = plan.loops if plan.looped else plan.n_blocks
        assert len(out.readouts) == n and len(out.states) == n + 1


def test_truncated_bptt_runs_early_loops_without_gradient():
    _, task, plan, model = built(["model.family=looped", "model.n_layers=1", "model.loops=4"],
                                 TASKS[0])
    x, _ = task.sample(2, torch.Generator().manual_seed(0))
    out = model.trace(x, bptt=1)
    assert out.grad == [False, False, False, True]
    assert not out.readouts[0].requires_grad and out.logits.requires_grad
    torch.testing.assert_close(out.logits, model(x))


@pytest.mark.parametrize("fam", FAMILIES, ids=["uniform", "looped", "banded", "looped+band"])
def test_decode_with_kv_cache_matches_forward(fam):
    _, task, plan, model = built(fam, TASKS[1])  # causal
    model.eval()
    x, _ = task.sample(2, torch.Generator().manual_seed(0))
    full = model(x)
    cache = model.new_cache()
    steps = [model.decode_step(x[:, :3], 0, cache)]
    for t in range(3, x.shape[1] - 4):
        steps.append(model.decode_step(x[:, t:t + 1], t, cache))
    # A chunk of several tokens after a filled cache: the mask must align bottom-right.
    steps.append(model.decode_step(x[:, -4:], x.shape[1] - 4, cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    # The measured cache matches the formula: 2 * width * 4 bytes per executed block per token.
    measured = sum(c.nbytes() for c in cache) / (2 * x.shape[1])
    assert measured == kv_bytes_per_token(plan)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.n_heads=5"], "model.n_heads"),
        (["model.loops=0"], "model.loops"),
        (["model.family=uniform", "model.loops=2"], "model.loops"),
        (["model.family=banded", "model.width_profile=explicit", "model.widths=[64,64]"],
         "model.widths"),
        (["model.family=looped", "model.n_layers=3", "model.band=[1,3]"], "model.band"),
        (["model.family=looped", "model.band=[2,1]"], "model.band"),
        (["model.family=banded", "model.width_profile=explicit", "model.widths=[64,66,64]"],
         "model.widths"),
        (["model.family=mystery"], "model.family"),
        (["model.family=uniform", "model.width_profile=wide_middle"], "model.width_profile"),
        (["model.family=looped", "model.loops=2", "model.bptt_loops=3"], "model.bptt_loops"),
    ],
)
def test_impossible_models_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        resolve(load_config(overrides=overrides))
    assert e.value.key == key
