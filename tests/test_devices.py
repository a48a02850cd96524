"""The GPU path, checked on the CPU: device-agnostic code, host-device syncs, the precision a
run actually uses, compilation, data off the critical path, several devices, the bench.

Without a GPU, two stand-ins: the ``meta`` device plays the accelerator and
:class:`SameDevice` enforces CUDA's rule that an op's tensors live on one device (CPU code
that builds a tensor without ``device=`` is caught as it would be on a GPU); :class:`Syncs`
counts the ops that make a GPU wait for the host to read a value back (``.item()``,
``int(t)``, ``.tolist()``, boolean indexing). tests/test_gpu.py runs the same paths on a GPU.
"""

import json
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import lab.train.machine as machine
from lab.config import load_config
from lab.errors import LabError
from lab.model import build_model, resolve

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
aten = torch.ops.aten
META = torch.device("meta")


class SameDevice(TorchDispatchMode):
    """Records every op whose tensors live on more than one device (0-dim CPU scalars
    excepted, as CUDA accepts them)."""

    def __init__(self):
        super().__init__()
        self.mixed: list[tuple[str, list[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                   and not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1:
            self.mixed.append((str(func), sorted(map(str, devices))))
        return func(*args, **(kwargs or {}))


SYNC_OPS = {aten._local_scalar_dense.default, aten.item.default, aten.nonzero.default,
            aten.equal.default, aten.is_nonzero.default}
# Host-side values: the optimizer's CPU step counters (AdamW keeps them on the host unless
# capturable) and the tasks' batch generation, which runs on the host.
HOST_SIDE = ("/torch/optim/", "/lab/tasks/")
PLUMBING = ("_python_dispatch", "torch/_compile.py", "torch/_dynamo/", "test_devices.py")


class Syncs(TorchDispatchMode):
    """Counts the ops that read a value back to the host, with where they were called from;
    those on host-side values (HOST_SIDE) are left out when `device_only`."""

    def __init__(self, device_only: bool = False):
        super().__init__()
        self.device_only = device_only
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            frames = [f for f in traceback.extract_stack()[::-1]
                      if not any(p in f.filename for p in PLUMBING)]
            where = f"{frames[0].filename}:{frames[0].lineno}" if frames else "?"
            if not (self.device_only and any(h in where for h in HOST_SIDE)):
                self.calls.append(where)
        return func(*args, **(kwargs or {}))


def cfg(*overrides, files=()):
    return load_config([DEBUG, *files], list(overrides))


def model_of(*overrides, files=()):
    c, task, plan = resolve(cfg(*overrides, files=files))
    torch.manual_seed(0)
    return c, task, plan, build_model(c, task, plan)


# --------------------------------------------------------------------------------------------
# 1, 2: the difficulty protocol on the device


@pytest.mark.parametrize("files", [[], ["configs/causal_pointer.yaml"], ["configs/word.yaml"],
                                   ["configs/induction.yaml"]], ids=lambda f: f[0] if f else "pointer")
def test_difficulty_labels_stay_on_the_input_device(files):
    c, task, _ = resolve(cfg(files=[ROOT / f for f in files]))
    x, _ = task.sample(4, torch.Generator().manual_seed(0), "val")
    with SameDevice() as mode:
        d = task.difficulty(x.to(META))
    assert d.device == META and d.shape == x.shape and not mode.mixed


# Ops that raise under torch.use_deterministic_algorithms(True) on CUDA (torch's docs).
def raises_on_cuda_when_deterministic(func, args, kwargs) -> bool:
    name = str(func)
    if name.startswith("aten.bincount"):
        return (kwargs or {}).get("weights") is not None or (len(args) > 1 and args[1] is not None)
    return any(name.startswith(f"aten.{n}") for n in ("histc", "kthvalue", "median.dim",
                                                       "put_", "_embedding_bag"))


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.bad: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if raises_on_cuda_when_deterministic(func, args, kwargs):
            self.bad.append(str(func))
        return func(*args, **(kwargs or {}))


def test_accuracy_by_difficulty_has_a_deterministic_cuda_kernel_and_is_exact():
    from lab.tasks import accuracy_by_difficulty

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (64, 9), generator=g)
    y[:, 0] = -100
    pred = torch.where(torch.rand(64, 9, generator=g) < 0.6, y, (y + 1) % 5)
    d = torch.randint(1, 7, (64, 1), generator=g).expand(64, 9)
    with Ops() as ops, Syncs() as syncs:
        got = accuracy_by_difficulty(pred, y, d)
    assert not ops.bad  # the weighted bincount it used raises on a GPU with deterministic=true
    ref: dict[int, list[int]] = {}
    for p, t, k in zip(pred.flatten().tolist(), y.flatten().tolist(), d.flatten().tolist(),
                       strict=True):
        if t != -100:
            ref.setdefault(k, [0, 0])
            ref[k][0] += p == t
            ref[k][1] += 1
    assert got == {k: tuple(v) for k, v in sorted(ref.items())}
    # One read-back for the whole table (and the two the boolean masks need), not one per value.
    assert len(syncs.calls) <= 4


# --------------------------------------------------------------------------------------------
# 3, 10: host-device syncs


def test_a_training_step_reads_nothing_back_from_the_device_between_log_steps(debug_cfg):
    from lightning.pytorch.callbacks import Callback

    from lab.train import train

    class PerStep(Callback):
        """Syncs from one step's start to the next one's (the loop's batch-end work included)."""

        def __init__(self):
            self.mode, self.steps = None, []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.mode is not None:
                self.mode.__exit__(None, None, None)
                self.steps.append((trainer.global_step - 1, self.mode.calls))
            self.mode = Syncs(device_only=True)
            self.mode.__enter__()

        def on_train_end(self, trainer, pl_module):
            self.mode.__exit__(None, None, None)

    cb = PerStep()
    c = debug_cfg("train.steps=12", "train.log_every=5", "train.val_every=100",
                  "train.ckpt_every=0", "eval.cost=false", "train.progress=true")
    train(c, callbacks=[cb], progress=True)
    log_steps = {0, 4, 9}  # the lab reads the loss at 0, 4, 9; Lightning logs at 4 and 9
    assert [s for s, _ in cb.steps] == list(range(11))
    for step, calls in cb.steps:
        if step in log_steps:  # the loss, read to log it and check it is finite; the logger
            assert 1 <= len(calls) <= 4, (step, calls)
            assert all("lab/train/module.py" in c or "lightning" in c for c in calls)
        else:
            assert calls == [], (step, calls)


def test_parallel_decoding_reads_no_position_back():
    c, task, plan, model = model_of("model.family=looped", "model.loops=3",
                                    "model.loop_mode=parallel", "model.n_layers=3",
                                    files=[ROOT / "configs/word.yaml"])
    x, _ = task.sample(2, torch.Generator().manual_seed(0), "val")
    model.eval()
    cache = model.new_cache()
    with Syncs() as syncs:
        model.decode_step(x[:, :4], 0, cache)  # a chunk, then single tokens
        for t in range(4, 7):
            model.decode_step(x[:, t:t + 1], t, cache)
    assert syncs.calls == []


# --------------------------------------------------------------------------------------------
# 4: post-training measurements on the model's device


def test_post_training_measurements_run_on_the_model_device():
    from lab.eval import cost
    from lab.eval.context import context_model, measure_contexts

    c, task, plan, model = model_of("model.family=looped", "model.loops=2",
                                    files=[ROOT / "configs/word.yaml"])
    model = model.to(META)
    with SameDevice() as mode:
        flops = cost.flops_per_token(model, task, 2, train=True)
        lat = cost.latency_costs(model, task, 2, 4, repeats=1)
        ctx = measure_contexts({"a": (context_model(plan, task.vocab_size, 64).to(META), 2)},
                               [8], [2], rounds=1, steps=1)
    assert not mode.mixed, mode.mixed[:3]
    assert flops > 0 and lat["kv_bytes_per_token"] > 0
    assert ctx["settings"]["a"]["kv_bytes"][0][0] > 0


def test_autocast_of_a_run_follows_its_precision():
    from lab.eval.device import autocast, autocast_dtype

    assert autocast_dtype("bf16-mixed") == torch.bfloat16
    assert autocast_dtype("16-mixed") == torch.float16
    assert autocast_dtype("32-true") is None and autocast_dtype(None) is None
    lin = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), "bf16-mixed"):
        assert lin(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "32-true"):
        assert lin(torch.ones(1, 4)).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# 6: the precision a run uses, recorded


def fake_gpu(monkeypatch, bf16_native: bool):
    monkeypatch.setattr(machine, "cuda_count", lambda: 1)

    def supported(including_emulation: bool = True) -> bool:
        return bf16_native or including_emulation  # an older GPU emulates bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)


def test_auto_precision_takes_bf16_only_where_the_gpu_computes_it(monkeypatch):
    fake_gpu(monkeypatch, bf16_native=False)  # a V100 or T4: bf16 only emulated
    assert machine.resolve_precision(cfg().train) == "16-mixed"
    fake_gpu(monkeypatch, bf16_native=True)
    assert machine.resolve_precision(cfg().train) == "bf16-mixed"
    assert machine.resolve_precision(cfg("train.accelerator=cpu").train) == "32-true"
    assert machine.resolve_precision(cfg("train.precision=32-true").train) == "32-true"
    monkeypatch.setattr(machine, "cuda_count", lambda: 0)
    assert machine.resolve_precision(cfg().train) == "32-true"


def test_every_run_records_how_it_ran(debug_cfg):
    from lab.train import train

    res = train(debug_cfg("eval.cost=false"))
    expect = {"device": "cpu", "devices": 1, "precision": "32-true", "compile": False,
              "fused_adamw": False}
    assert res.runtime == expect
    assert json.loads((Path(res.run_dir) / "results.json").read_text())["runtime"] == expect


def test_a_study_refuses_a_machine_that_would_run_it_otherwise(monkeypatch):
    import optuna

    from lab.study.attrs import PROVENANCE_ATTR, RUNTIME_ATTR
    from lab.study.schedule import check_runtime

    fresh = optuna.create_study()
    check_runtime(fresh, cfg())  # a new study records this machine's way
    assert fresh.user_attrs[RUNTIME_ATTR] == {"device": "cpu", "precision": "32-true"}
    gpu_study = optuna.create_study(study_name="gpu-made")
    gpu_study.set_user_attr(RUNTIME_ATTR, {"device": "cuda", "precision": "bf16-mixed"})
    with pytest.raises(LabError, match="gpu-made.*device cuda.*cpu"):
        check_runtime(gpu_study, cfg())
    fake_gpu(monkeypatch, bf16_native=False)
    with pytest.raises(LabError, match="precision bf16-mixed.*16-mixed"):
        check_runtime(gpu_study, cfg())
    # Made before the runtime was recorded, with trials, on a machine with a GPU.
    old = optuna.create_study(study_name="old")
    old.set_user_attr(PROVENANCE_ATTR, {"device": {"gpu": "NVIDIA H100"}})
    old.enqueue_trial({"x": 1})
    monkeypatch.setattr(machine, "cuda_count", lambda: 0)
    with pytest.raises(LabError, match="device cuda"):
        check_runtime(old, cfg())


# --------------------------------------------------------------------------------------------
# 5: compilation


def test_compiled_blocks_compile_once_for_every_loop_count():
    from torch._dynamo.testing import CompileCounter

    c, task, plan, model = model_of("model.family=looped", "model.n_layers=3", "model.loops=2",
                                    "model.loop_sampling=uniform", "model.loops_range=[1,8]")
    counter = CompileCounter()
    model.compile_blocks(backend=counter)
    x, y = task.sample(8, torch.Generator().manual_seed(0))
    eager = build_model(c, task, plan)
    eager.load_state_dict(model.state_dict())
    for r in range(1, 9):
        model(x, r).sum().backward()
    assert counter.frame_count == 1  # one graph for every loop count
    out = model.trace(x, 5, keep=True, bptt=2)  # supervision=every, truncated BPTT
    # + the variants of the loops run without gradient (and of their input, which then
    # needs none)
    assert counter.frame_count <= 4
    assert torch.allclose(out.logits, eager.trace(x, 5, keep=True, bptt=2).logits, atol=1e-6)
    with torch.no_grad():
        cache = model.new_cache(2)
        model.decode_step(x[:, :2], 0, cache, 2)  # decoding runs eager: no new graph
    assert counter.frame_count <= 4 < torch._dynamo.config.recompile_limit
    model.compile_blocks(False)
    assert model.dense is None


def test_train_compile_covers_the_traced_walk(debug_cfg, monkeypatch):
    from lightning.pytorch.callbacks import Callback
    from torch._dynamo.testing import CompileCounter

    from lab.train import train

    counter, runs = CompileCounter(), {"n": 0}

    def backend(gm, inputs):  # counts compilations, and every run of compiled code
        counter(gm, inputs)

        def run(*args):
            runs["n"] += 1
            return gm.forward(*args)

        return run

    class Steps(Callback):
        def __init__(self):
            self.runs: list[int] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.runs.append(runs["n"])

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=backend))
    steps = Steps()
    res = train(debug_cfg("model.family=looped", "model.n_layers=3", "model.loops=2",
                          "model.supervision=every", "model.bptt_loops=2",
                          "model.loop_sampling=uniform", "model.loops_range=[1,6]",
                          "train.compile=true", "train.steps=12", "train.val_every=100",
                          "eval.cost=false"), callbacks=[steps])
    assert res.status == "ok" and res.runtime["compile"] is True
    # Every training step (the traced walk of supervision=every and truncated BPTT, at
    # sampled loop counts) ran compiled blocks ...
    assert all(b > a for a, b in zip([0, *steps.runs], steps.runs, strict=False))
    # ... from a few graphs, far from the recompile limit at which torch falls back to eager.
    assert 1 <= counter.frame_count < torch._dynamo.config.recompile_limit


# --------------------------------------------------------------------------------------------
# 7: data off the critical path


def test_text_batches_gathered_on_the_device_are_the_host_ones():
    from lab.tasks import build_task

    task = build_task({"name": "text", "seq_len": 32})
    ref = task.sample(16, torch.Generator().manual_seed(3), "train")
    task.to_device(torch.device("cpu"))  # the tensor path, as on a GPU
    assert isinstance(task.data["train"], torch.Tensor)
    got = task.sample(16, torch.Generator().manual_seed(3), "train")
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    task.to_device(META)
    with SameDevice() as mode:
        x, y = task.sample(16, torch.Generator().manual_seed(3), "val")
    assert x.device == META and x.shape == (16, 32) and not mode.mixed


def test_a_gpu_gets_batches_from_a_loader_process_with_the_same_stream():
    from torch.utils.data import DataLoader

    from lab.train.data import TrainStream, loader_options

    cuda = torch.device("cuda")
    assert loader_options(cuda, task_on_device=False) == {"num_workers": 1, "pin_memory": True,
                                                          "prefetch_factor": 4}
    assert loader_options(cuda, task_on_device=True) == {}  # the text task samples on the GPU
    assert loader_options(torch.device("cpu"), task_on_device=False) == {}  # as before
    _, task, _ = resolve(cfg())
    inline = iter(TrainStream(task, 8, 0, 5))
    ahead = iter(DataLoader(TrainStream(task, 8, 0, 5), batch_size=None, num_workers=1,
                            prefetch_factor=4))
    for _ in range(4):
        a, b = next(inline), next(ahead)
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------
# 8: several devices


def test_each_device_trains_on_its_share_of_every_batch():
    from lab.train.data import TrainStream

    _, task, _ = resolve(cfg())
    whole = next(iter(TrainStream(task, 8, 0, 3)))
    shares = [next(iter(TrainStream(task, 8, 0, 3, rank=r, world=2))) for r in range(2)]
    for i in range(2):  # x, then y
        merged = torch.empty_like(whole[i])
        merged[0::2], merged[1::2] = shares[0][i], shares[1][i]
        assert torch.equal(merged, whole[i])


def test_validation_counts_of_every_device_add_up(monkeypatch):
    import torch.distributed as dist

    from lab.train.module import LabModule, difficulty_metrics

    c, task, plan = resolve(cfg("model.family=looped", "model.loops=2"))
    x, y = task.eval_set("val", 64)

    def validated(rows):
        torch.manual_seed(0)  # the same weights in every process
        m = LabModule(c, task, plan)
        m.eval()
        with torch.no_grad():
            for i in range(0, len(rows[0]), 16):
                m.validation_step((rows[0][i:i + 16], rows[1][i:i + 16]), 0)
        return m

    one = validated((x, y))
    a, b = validated((x[0::2], y[0::2])), validated((x[1::2], y[1::2]))
    parts = [(m.acc, m.by_difficulty, m.loops_used, m.diag) for m in (a, b)]

    def all_gather_object(out, obj):
        out[:] = parts

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    a._trainer = SimpleNamespace(world_size=2)
    a.gather_counts()
    whole, merged = one.acc["val"].compute(), a.acc["val"].compute()
    assert merged["acc_token"] == whole["acc_token"] and merged["acc_seq"] == whole["acc_seq"]
    assert merged["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert difficulty_metrics("val", a.by_difficulty["val"], 0.95) == difficulty_metrics(
        "val", one.by_difficulty["val"], 0.95)
    assert a.diag.compute() == pytest.approx(one.diag.compute(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# 9: the bench on the device the lab trains on


def test_plain_loop_and_matmul_peak_run_where_the_lab_trains():
    from lab.bench import PlainLoop
    from lab.bench.utilisation import _gemm_timer, gemm_format, peak_square

    c = cfg()
    assert PlainLoop(c).device == machine.train_device(c)
    loop = PlainLoop(c, device=META)
    with SameDevice() as mode:
        loop.run(2)
        timer, flops = _gemm_timer(8, 4, 6, "dw", 0.0, META, torch.bfloat16)
        timer()
        peak_square(16, 1, META, torch.bfloat16)
    assert not mode.mixed, mode.mixed[:3]
    assert all(p.device == META for p in loop.model.parameters())
    assert gemm_format(c) == (torch.device("cpu"), torch.float32)


def test_gpu_section_is_skipped_without_a_gpu_and_its_machinery_runs_on_the_cpu(tmp_path):
    from lab.bench import QUICK, gpu

    assert gpu.run(QUICK, tmp_path, {}) == {
        "skipped": "no CUDA device is visible: the GPU section needs one"}
    assert "has not been measured" in "\n".join(gpu.render(gpu.run(QUICK, tmp_path, {})))
    cpu = [*QUICK.gpu_overrides, "train.accelerator=auto", "train.precision=32-true",
           "train.compile=false", "train.threads=1"]
    r = gpu.measure(QUICK, tmp_path, [gpu.PRESET], cpu, None)
    h = r["harness"]
    assert r["achieved_flop_s"] == pytest.approx(r["train_flops_per_step"] /
                                                 h["lab_step_s"]["median"])
    assert r["data"]["on_device"] is False and r["data"]["share"] > 0
    assert r["compile"]["speedup"] == pytest.approx(r["compile"]["eager_step_s"]["median"] /
                                                    r["compile"]["compiled_step_s"]["median"])
    assert "mfu" not in r  # no datasheet peak for a CPU
    text = "\n".join(gpu.render(r))
    assert "lab / plain" in text and "data time / step time" in text


def test_datasheet_peaks_by_device_name():
    from lab.bench.gpu import peak_of

    assert peak_of("NVIDIA H100 80GB HBM3")["tflops"] == 989.4
    assert peak_of("NVIDIA H100 PCIe")["tflops"] == 756.0
    assert peak_of("NVIDIA H200")["tflops"] == 989.4
    assert peak_of("NVIDIA A100-SXM4-80GB")["tflops"] == 312.0
    assert peak_of("Tesla V100-SXM2-16GB") == {"tflops": 125.0, "format": "fp16",
                                               "matched": "V100"}
    assert peak_of("Some Future GPU") is None


# --------------------------------------------------------------------------------------------
# 10 and the preset


def test_adamw_is_fused_only_on_a_gpu():
    from lab.train.optim import build_optimizer

    opt, _ = build_optimizer(torch.nn.Linear(4, 4).parameters(), cfg())
    assert not opt.defaults["fused"]  # CPU runs keep the implementation their results came from


def test_gpu_preset_and_study_are_sized_for_a_gpu():
    from lab.study.spec import load_ablation

    g = load_config([ROOT / "configs" / "gpu.yaml"])
    t, m = g.train, g.model
    assert (t.precision, t.compile, t.deterministic) == ("bf16-mixed", True, False)
    assert 384 <= m.d_model <= 512 and 256 <= g.task["seq_len"] <= 1024 and m.positions == "rope"
    assert t.batch_size * g.task["seq_len"] >= 32768  # tokens per step to keep a GPU busy
    abl = load_ablation(ROOT / "ablations" / "loops_gpu.yaml")
    assert [b.name for b in abl.base] == ["gpu.yaml"] and abl.tune is not None
    labels = [s.label for s in abl.settings()]
    assert len(labels) == 10 and abl.objective == "val/bpb"
    assert all(cfg_.model.d_model in (512, 768) for _, cfg_ in abl.setting_configs())


@pytest.mark.slow
def test_two_devices_train_one_run_as_one_device_does(debug_cfg, tmp_path):
    """Lightning's DDP on two CPU processes: each trains on half of every batch (gradients
    averaged: the step of the whole batch) and validates half of every set, the counts added
    up, into one run directory. The dense pointer task has a target at every position but the
    first, so the average of the halves' losses is the whole batch's loss."""
    import os
    import subprocess
    import sys

    from lab.train import train

    one = train(debug_cfg("eval.cost=false"))
    out = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "lab.cli", "train", "--config", str(DEBUG),
                           "train.devices=2", "eval.cost=false", f"out_dir={out}"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [p for p in (out / "debug").iterdir()]
    assert len(runs) == 1  # one run directory, written by the first process
    two = json.loads((runs[0] / "results.json").read_text())
    assert two["runtime"]["devices"] == 2
    for k in ("val/acc_token", "val/loss", "ood/acc_token"):
        assert two["metrics"][k] == pytest.approx(one.metrics[k], rel=1e-3), k
