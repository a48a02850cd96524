"""The GPU path on a real CUDA device (every test here is marked gpu and skipped without one):
the parts tests/test_devices.py can only check with stand-ins on a CPU."""

import json
from pathlib import Path

import pytest
import torch

from lab.config import load_config
from lab.model import build_model, resolve

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
CUDA = torch.device("cuda", 0)


def gpu_cfg(tmp_path, *overrides, files=()):
    return load_config([DEBUG, *files], [f"out_dir={tmp_path / 'runs'}", "train.accelerator=gpu",
                                         *overrides])


def test_the_default_graded_task_trains_with_deterministic_kernels(tmp_path, monkeypatch):
    """Validation reaches accuracy_by_difficulty under train.deterministic=true (its weighted
    bincount raised on CUDA); every measurement after training runs on the GPU."""
    from lab.eval import cost
    from lab.eval.device import device_of
    from lab.train import train

    seen = []
    real = cost.measured_costs

    def spy(model, *a, **kw):
        seen.append(device_of(model).type)
        return real(model, *a, **kw)

    monkeypatch.setattr(cost, "measured_costs", spy)
    res = train(gpu_cfg(tmp_path, "model.family=looped", "model.loops=2"))
    assert res.status == "ok" and "val/solved_difficulty" in res.metrics
    assert res.runtime["device"] == "cuda" and res.runtime["fused_adamw"] is True
    assert res.runtime["precision"] in ("bf16-mixed", "16-mixed")
    assert seen == ["cuda"] and res.extrapolation and res.adaptive
    assert res.costs["train_step_peak_bytes"] > 0
    # The KV cache in the run's number format: 2 bytes a number under mixed precision.
    plan = resolve(gpu_cfg(tmp_path, "model.family=looped", "model.loops=2"))[2]
    assert res.costs["kv_bytes_per_token"] == cost.kv_bytes_per_token(plan, 2, element_size=2)
    saved = json.loads((Path(res.run_dir) / "results.json").read_text())
    assert saved["runtime"]["device"] == "cuda"


def test_the_word_task_trains_on_the_gpu(tmp_path):
    from lab.train import train

    res = train(gpu_cfg(tmp_path, "eval.cost=false", files=[ROOT / "configs/word.yaml"]))
    assert res.status == "ok" and res.metrics["val/acc_token"] > 0


def test_accuracy_by_difficulty_is_the_same_on_the_gpu():
    from lab.tasks import accuracy_by_difficulty

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (64, 9), generator=g)
    pred = torch.randint(0, 5, (64, 9), generator=g)
    d = torch.randint(1, 7, (64, 9), generator=g)
    torch.use_deterministic_algorithms(True)
    try:
        on_gpu = accuracy_by_difficulty(pred.to(CUDA), y.to(CUDA), d.to(CUDA))
    finally:
        torch.use_deterministic_algorithms(False)
    assert on_gpu == accuracy_by_difficulty(pred, y, d)


def test_compiled_looped_training_stays_under_the_recompile_limit(tmp_path):
    from torch._dynamo.utils import counters

    from lab.train import train

    counters.clear()
    res = train(gpu_cfg(tmp_path, "model.family=looped", "model.n_layers=3",
                        "model.loop_sampling=uniform", "model.loops_range=[1,8]",
                        "model.supervision=every", "train.compile=true", "train.steps=40",
                        "eval.cost=false"))
    assert res.status == "ok" and res.runtime["compile"] is True
    assert counters["stats"]["unique_graphs"] < torch._dynamo.config.recompile_limit


def test_text_data_lives_on_the_gpu_and_draws_the_same_windows():
    from lab.tasks import build_task

    task = build_task({"name": "text", "seq_len": 64})
    ref = task.sample(32, torch.Generator().manual_seed(1), "train")
    task.to_device(CUDA)
    x, y = task.sample(32, torch.Generator().manual_seed(1), "train")
    assert x.is_cuda and torch.equal(x.cpu(), ref[0]) and torch.equal(y.cpu(), ref[1])


def test_the_gpu_preset_trains_briefly(tmp_path):
    from lab.train import train

    cfg = load_config([ROOT / "configs" / "gpu.yaml"],
                      [f"out_dir={tmp_path / 'runs'}", "train.steps=30", "train.val_every=30",
                       "train.val_size=64", "model.n_layers=2", "eval.cost=false"])
    res = train(cfg)
    assert res.status == "ok" and res.runtime == {
        "device": "cuda", "devices": 1, "precision": "bf16-mixed", "compile": True,
        "fused_adamw": True}


def test_the_bench_loop_and_peak_run_on_the_gpu():
    from lab.bench import PlainLoop
    from lab.bench.utilisation import gemm_format

    cfg = load_config([DEBUG])
    loop = PlainLoop(cfg)
    assert loop.device.type == "cuda" and loop.opt.defaults["fused"]
    assert loop.run(3) > 0
    assert gemm_format(cfg)[0].type == "cuda"


def test_parallel_decoding_matches_the_cpu():
    cfg = load_config([DEBUG, ROOT / "configs/word.yaml"],
                      ["model.family=looped", "model.loops=3", "model.loop_mode=parallel",
                       "model.n_layers=3"])
    cfg, task, plan = resolve(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task, plan).eval()
    x, _ = task.sample(2, torch.Generator().manual_seed(0), "val")
    outs = []
    for dev in ("cpu", "cuda"):
        m = model.to(dev)
        cache = m.new_cache()
        outs.append(torch.cat([m.decode_step(x[:, t:t + 1].to(dev), t, cache).cpu()
                               for t in range(6)], 1))
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_the_gpu_bench_section_runs(tmp_path):
    from lab.bench import QUICK, gpu

    r = gpu.run(QUICK, tmp_path, {})  # the study's throughput is left to make bench
    assert r["ran"] and r["device"] == "cuda" and "study" not in r
    assert r["harness"]["lab_step_s"]["median"] > 0 and r["compile"]["speedup"] > 0
    if r.get("peak"):
        assert 0 < r["mfu"] < 1
