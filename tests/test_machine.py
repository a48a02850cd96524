"""The machine: workers per GPU, each pinned with its own CUDA_VISIBLE_DEVICES, and values this
machine cannot run refused before anything is allocated or started.

GPU machines are simulated by setting the visible device count (no GPU is needed): the plan
and the environment each worker process is started with are what is checked.
"""

import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

import lab.study.run as study_run
import lab.study.schedule as schedule
import lab.train.machine as machine
from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny.yaml"
DEBUG = ROOT / "configs" / "debug.yaml"


def gpus(monkeypatch, n: int, memory: float = 80e9) -> None:
    """Pretend `n` CUDA GPUs of `memory` bytes are visible (none unset in the environment)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(machine, "cuda_count", lambda: n)
    monkeypatch.setattr(machine, "gpu_memory", lambda: int(memory))
    monkeypatch.setattr(machine, "native_bf16", lambda: True)


def cfg(*overrides):
    return load_config([DEBUG], list(overrides))


# --------------------------------------------------------------------------------------------
# Scheduling


def test_cpu_machine_keeps_one_worker_per_threads_cores(monkeypatch):
    gpus(monkeypatch, 0)
    for threads in (1, 2):
        plan = schedule.plan_workers(cfg(f"train.threads={threads}"), None)
        assert plan.n == max(1, machine.cores() // threads) and not plan.on_gpu
        assert all(plan.env(i) == {} for i in range(plan.n))
    assert schedule.plan_workers(cfg(), 7).n == 7  # --workers as asked, as before


@pytest.mark.parametrize("n_gpus", [1, 2, 4])
@pytest.mark.parametrize("per_gpu", [1, 2])
def test_one_worker_per_gpu_each_pinned_to_its_own(monkeypatch, n_gpus, per_gpu):
    gpus(monkeypatch, n_gpus)
    plan = schedule.plan_workers(cfg(f"train.trials_per_gpu={per_gpu}"), None)
    assert plan.n == n_gpus * per_gpu
    pinned = [plan.env(i)["CUDA_VISIBLE_DEVICES"] for i in range(plan.n)]
    # Every GPU gets exactly trials_per_gpu workers, each worker exactly one GPU.
    assert sorted(pinned) == sorted(str(g) for g in range(n_gpus) for _ in range(per_gpu))
    assert pinned[:n_gpus] == [str(g) for g in range(n_gpus)]  # fewer workers: one per GPU


def test_pinning_keeps_the_parents_own_device_list(monkeypatch):
    gpus(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    plan = schedule.plan_workers(cfg(), None)
    assert [plan.env(i) for i in range(plan.n)] == [{"CUDA_VISIBLE_DEVICES": "5"},
                                                    {"CUDA_VISIBLE_DEVICES": "7"}]


def test_multi_gpu_trials_get_a_group_of_gpus(monkeypatch):
    gpus(monkeypatch, 4)
    plan = schedule.plan_workers(cfg("train.devices=2", "train.batch_size=16"), None)
    assert plan.n == 2
    assert [plan.env(i) for i in range(2)] == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                               {"CUDA_VISIBLE_DEVICES": "2,3"}]


def test_cpu_accelerator_on_a_gpu_machine_schedules_by_cores(monkeypatch):
    gpus(monkeypatch, 4)
    plan = schedule.plan_workers(cfg("train.accelerator=cpu"), None)
    assert not plan.on_gpu and plan.n == machine.cores()


@pytest.mark.parametrize("n_gpus,per_gpu,asked", [(1, 1, 2), (2, 1, 3), (4, 2, 9)])
def test_more_workers_than_the_gpus_hold_are_refused(monkeypatch, capsys, n_gpus, per_gpu,
                                                     asked):
    gpus(monkeypatch, n_gpus)
    with pytest.raises(LabError, match=f"room for {n_gpus * per_gpu} trial"):
        schedule.plan_workers(cfg(f"train.trials_per_gpu={per_gpu}"), asked)
    assert main(["sweep", str(TINY), "--workers", str(asked),
                 f"train.trials_per_gpu={per_gpu}"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "Traceback" not in err
    assert not Path("studies").exists()


class FakeWorker:
    """A worker process that has already exited (code 0) without doing anything; records the
    environment it was started with."""

    started: list[dict] = []

    def __init__(self, argv, env=None, **kw):
        FakeWorker.started.append(dict(env or {}))
        self.stdin = SimpleNamespace(write=lambda b: None, close=lambda: None)  # the storage URL

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0

    def send_signal(self, sig):
        pass

    kill = terminate = lambda self: None


@pytest.mark.parametrize("n_gpus,per_gpu", [(4, 1), (2, 2)])
def test_each_worker_process_starts_pinned_and_a_restart_keeps_its_gpu(monkeypatch, n_gpus,
                                                                         per_gpu):
    gpus(monkeypatch, n_gpus)
    FakeWorker.started = []
    monkeypatch.setattr(study_run, "subprocess", SimpleNamespace(
        Popen=FakeWorker, PIPE=subprocess.PIPE, TimeoutExpired=subprocess.TimeoutExpired))
    # The sweep polls its workers every second: at once here.
    monkeypatch.setattr(study_run, "time", SimpleNamespace(time=time.time, sleep=lambda s: None))
    # The workers exit at once with work left, so the sweep restarts them (3 rounds) and
    # then gives up with trials missing (exit 1).
    assert main(["sweep", str(TINY), f"train.trials_per_gpu={per_gpu}",
                 "storage=sqlite:///studies/t.db"]) == 1
    n = n_gpus * per_gpu
    pins = [e.get("CUDA_VISIBLE_DEVICES") for e in FakeWorker.started]
    assert len(pins) == 4 * n  # first start + 3 restarts of every worker
    first = pins[:n]
    assert sorted(first) == sorted(str(g) for g in range(n_gpus) for _ in range(per_gpu))
    for k in range(1, 4):  # worker i keeps its GPU when it is started again
        assert pins[k * n:(k + 1) * n] == first


# --------------------------------------------------------------------------------------------
# Refused before anything is allocated or started: one message, exit 2, a few seconds


BAD_SWEEP = [
    (["train.devices=99"], "train.devices"),
    (["train.threads=10000"], "train.threads"),
    (["workers=abc"], "workers"),
    (["--workers", "0"], "--workers"),
    (["workers=-2"], "workers"),
    (["task.nodes=100000000"], "memory"),
    (["model.d_model=100000"], "memory"),
    (["seeds=[5000000000]"], "seeds"),
    (["train.devices=0"], "train.devices"),
    (["train.trials_per_gpu=0"], "train.trials_per_gpu"),
]


@pytest.mark.parametrize("args,expect", BAD_SWEEP, ids=lambda v: str(v))
def test_machine_sized_values_are_refused_by_a_sweep(args, expect, capsys):
    children = set(psutil.Process().children(recursive=True))
    t0 = time.perf_counter()
    assert main(["sweep", str(TINY), *args]) == 2
    assert time.perf_counter() - t0 < 30  # seconds, not a hang (load on this box included)
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert err.count("error:") == 1
    assert not Path("studies").exists() and not Path("runs").exists()
    assert set(psutil.Process().children(recursive=True)) <= children  # no process started


@pytest.mark.parametrize("args,expect", [
    (["train.devices=99"], "train.devices"),
    (["train.threads=10000"], "train.threads"),
    (["task.nodes=100000000"], "memory"),
    (["model.d_model=100000"], "memory"),
    (["train.accelerator=gpu"], "train.accelerator"),
], ids=lambda v: str(v))
def test_machine_sized_values_are_refused_by_train(args, expect, capsys):
    t0 = time.perf_counter()
    assert main(["train", "--config", str(DEBUG), *args]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert not Path("runs").exists()


def test_devices_and_threads_are_checked_against_this_machine(monkeypatch):
    gpus(monkeypatch, 0)
    monkeypatch.setattr(machine, "cores", lambda: 4)
    machine.check_devices(cfg("train.threads=4", "train.devices=2", "train.batch_size=16").train)
    with pytest.raises(ConfigError, match="train.threads.*4 cores"):
        machine.check_devices(cfg("train.threads=5").train)
    with pytest.raises(ConfigError, match="train.devices.*no GPU"):
        machine.check_devices(cfg("train.devices=5").train)
    with pytest.raises(ConfigError, match="train.accelerator"):
        machine.check_devices(cfg("train.accelerator=gpu").train)
    gpus(monkeypatch, 2)
    machine.check_devices(cfg("train.devices=2", "train.batch_size=16").train)
    with pytest.raises(ConfigError, match="3 GPUs asked for, 2 visible"):
        machine.check_devices(cfg("train.devices=3").train)
    with pytest.raises(ConfigError, match="train.batch_size"):
        machine.check_devices(cfg("train.devices=2", "train.batch_size=15").train)


def test_memory_estimate_counts_what_a_step_holds():
    from lab.model import resolve
    from lab.model.plan import count_params

    c, task, plan = resolve(cfg())
    est = machine.memory_estimate(c, task, plan)
    p = count_params(plan, task.vocab_size, task.max_seq_len)
    assert est["params"] == p and est["weights"] == 4 * p * 4  # weights, grads, 2 AdamW moments
    T, B = task.seq_len, c.train.batch_size
    per_token = sum(8 * plan.widths[b] + 2 * plan.hidden[b] for b in plan.order())
    assert est["step"] == B * T * (per_token * 4 + task.vocab_size * 8)
    assert est["tables"] == (2 * c.train.val_size * task.max_seq_len + B * T) * 16
    # bf16 mixed precision halves the activations, not the fp32 weights.
    c16, _, _ = resolve(cfg("train.precision=bf16-mixed"))
    est16 = machine.memory_estimate(c16, task, plan)
    assert est16["weights"] == est["weights"] and est16["step"] < est["step"]
    # A lower bound, and not a loose one: the peak a real training step measures (its
    # parameters, gradients, AdamW state and activations) is above the estimate, by < 2x.
    from lab.eval.cost import train_step_peak_bytes
    from lab.model import build_model

    torch.manual_seed(0)
    measured = train_step_peak_bytes(build_model(c, task, plan), task, None, B)
    assert measured / 2 < est["weights"] + est["step"] <= measured


def test_memory_is_shared_by_the_runs_on_it(monkeypatch):
    from lab.model import resolve

    c, task, plan = resolve(load_config([ROOT / "configs" / "gpu.yaml"],
                                        ["train.accelerator=auto"]))
    gpus(monkeypatch, 1, memory=16e9)  # the preset needs about 7 GB per trial
    est = machine.check_memory(c, task, plan, concurrent=2, on_gpu=True)
    need = est["weights"] + max(est["step"], est["evaluation"])
    assert 5e9 < need < 8e9
    with pytest.raises(LabError, match="x 3 runs at once.*GPU memory"):
        machine.check_memory(c, task, plan, concurrent=3, on_gpu=True)
    monkeypatch.setattr(machine, "host_memory", lambda: int(1e9))
    with pytest.raises(LabError, match="memory available"):
        machine.check_memory(c, task, plan, on_gpu=False)


def test_a_sweep_counts_its_workers_against_the_memory(monkeypatch, capsys):
    from lab.model import resolve

    c, task, plan = resolve(cfg("model.n_layers=1", "eval.cost=false"))
    est = machine.memory_estimate(c, task, plan)
    one = est["weights"] + max(est["step"], est["evaluation"]) + est["tables"]
    monkeypatch.setattr(machine, "host_memory", lambda: int(2.5 * one))
    assert main(["sweep", str(TINY), "--workers", "3"]) == 2
    err = capsys.readouterr().err
    assert "x 3 runs at once" in err and "--workers" in err
    assert not Path("studies").exists()
