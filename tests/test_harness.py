import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lab.model import resolve
from lab.train import train
from lab.train.data import TrainStream
from lab.train.module import LabModule, sample_loops


def test_same_seed_same_metrics(debug_cfg):
    a = train(debug_cfg("name=a"))
    b = train(debug_cfg("name=b"))
    c = train(debug_cfg("name=c", "seed=1"))
    assert a.status == b.status == "ok"
    assert a.metrics == b.metrics
    assert a.metrics["val/loss"] != c.metrics["val/loss"]


def test_run_directory_records_everything(debug_cfg):
    res = train(debug_cfg("name=rec", "model.family=looped", "model.loops=2", "model.n_layers=1"))
    run = Path(res.run_dir)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["loops"] == 2
    prov = json.loads((run / "provenance.json").read_text())
    assert {"git", "versions", "device", "plan"} <= set(prov)
    assert prov["versions"]["torch"] and "revision" in prov["git"]
    assert prov["plan"]["order"] == [0, 0]
    results = json.loads((run / "results.json").read_text())
    assert results["metrics"]["val/acc_token"] == res.metrics["val/acc_token"]
    for key in ("params", "effective_depth", "flops_per_token", "latency_s_per_token",
                "kv_bytes_per_token", "train_step_peak_bytes", "train_tokens_per_s"):
        assert results["costs"][key] is not None, key
    assert results["costs"]["latency_mode"] == "full-sequence pass"
    assert results["costs"]["kv_bytes_per_token"] == 2 * 2 * 16 * 4  # 2 executed blocks
    assert set(results["extrapolation"]["val"]) == {"1", "2", "3", "4"}
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_tensorboard_has_metrics_and_hparams(debug_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = train(debug_cfg("name=tb", "model.family=looped", "model.loops=2", "model.n_layers=1"))
    ea = EventAccumulator(res.run_dir, size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/tokens_per_s", "val/acc_token", "val/acc_seq",
                "ood/acc_token", "diag/readout_acc/1", "diag/update_norm/2",
                "extrapolate/val_acc_token", "hp/val_acc_token"):
        assert tag in tags, tag


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_continues_exactly(debug_cfg):
    full = train(debug_cfg("name=full", "train.steps=30"))
    part = train(debug_cfg("name=part", "train.steps=30"), callbacks=[StopAt(10)])
    assert part.steps == 10
    resumed = train(debug_cfg("name=part", "train.steps=30", "resume=true"))
    assert resumed.run_dir == part.run_dir and resumed.steps == 30
    assert resumed.resumed_from_step == 10 and full.resumed_from_step is None
    assert resumed.metrics == full.metrics


def test_resume_refuses_a_different_config(debug_cfg, capsys):
    from lab.errors import LabError

    train(debug_cfg("name=r2", "train.steps=12"), callbacks=[StopAt(10)])
    with pytest.raises(LabError, match="model.d_model"):
        train(debug_cfg("name=r2", "train.steps=12", "resume=true", "model.d_model=32"))


def test_short_run_on_easy_setting_beats_chance(debug_cfg):
    res = train(debug_cfg("name=easy", "task.hops=1", "train.steps=150", "train.lr=0.01",
                          "train.val_every=150"))
    chance = 1 / 4
    assert res.metrics["val/acc_token"] > chance + 0.5


def test_divergence_is_reported_not_raised(debug_cfg):
    res = train(debug_cfg("name=nan", "train.lr=1e30", "train.grad_clip=0", "train.steps=20",
                          "train.log_every=1"))
    assert res.status == "diverged" and "loss" in res.reason
    assert res.steps < 20


def test_data_stream_is_a_function_of_seed_and_step(debug_cfg):
    cfg, task, plan = resolve(debug_cfg())
    a = iter(TrainStream(task, 4, seed=0, start=0))
    [next(a) for _ in range(5)]
    sixth = next(a)
    b = next(iter(TrainStream(task, 4, seed=0, start=5)))
    assert torch.equal(sixth[0], b[0])


def test_loop_sampling(debug_cfg):
    cfg = debug_cfg("model.family=looped", "model.n_layers=1", "model.loops=3",
                    "model.loop_sampling=uniform", "model.loops_range=[2,5]")
    draws = [sample_loops(cfg, s) for s in range(200)]
    assert set(draws) == {2, 3, 4, 5}
    assert draws == [sample_loops(cfg, s) for s in range(200)]
    cfg = debug_cfg("model.family=looped", "model.n_layers=1", "model.loops=3",
                    "model.loop_sampling=poisson", "model.loops_range=[1,8]")
    draws = [sample_loops(cfg, s) for s in range(400)]
    assert 2.5 < sum(draws) / len(draws) < 3.5 and min(draws) >= 1 and max(draws) <= 8


def test_every_loop_supervision_averages_readout_losses(debug_cfg):
    import torch.nn.functional as F

    cfg = debug_cfg("model.family=looped", "model.n_layers=1", "model.loops=3",
                    "model.supervision=every")
    cfg, task, plan = resolve(cfg)
    m = LabModule(cfg, task, plan)
    x, y = task.sample(4, torch.Generator().manual_seed(0))
    out = m.model.trace(x, 3)
    expect = sum(F.cross_entropy(r.flatten(0, 1), y.flatten(), ignore_index=-100)
                 for r in out.readouts) / 3
    assert math.isclose(float(m.loss(x, y, 3).detach()), float(expect.detach()), rel_tol=1e-6)


def test_looped_runs_record_adaptive_exit_curves(debug_cfg):
    res = train(debug_cfg("name=ad", "model.family=looped", "model.n_layers=1", "model.loops=3"))
    assert set(res.adaptive) == {"update_norm", "kl"}
    for rows in res.adaptive.values():
        loops = [r["mean_loops"] for r in rows]
        assert loops[0] == 3 and loops[-1] == 1  # threshold 0 runs all loops, a huge one runs 1
        assert all(0 <= r["acc_token"] <= 1 for r in rows)
    # The curve at threshold 0 is the model at its trained loop count.
    assert rows[0]["acc_token"] == pytest.approx(res.extrapolation["val"][3])


def test_adaptive_exit_in_validation_logs_mean_loops(debug_cfg):
    res = train(debug_cfg("name=ad2", "model.family=looped", "model.n_layers=1", "model.loops=3",
                          "model.exit=update_norm", "model.exit_threshold=1e9"))
    assert res.metrics["val/mean_loops"] == 1.0
    assert list(res.adaptive) == ["update_norm"]


def test_seed_offset_shifts_the_seed_stream(debug_cfg):
    # An A/A control's second setting: the same model on the seed stream seed + offset.
    a = train(debug_cfg("name=a", "seed=1"))
    b = train(debug_cfg("name=b", "seed=0", "seed_offset=1"))
    c = train(debug_cfg("name=c", "seed=0"))
    assert a.metrics == b.metrics and a.metrics != c.metrics
