"""`lab sample`: bytes generated from a trained text-task run with its KV-cache decode."""

import random
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from lab.cli import main
from lab.eval.generate import generate
from lab.study.sample import load_run

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "off", "to", "see",
             "the", "dog"]
    for i in range(12):
        (root / f"f{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(300)) + "\n")
    return root


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    """A looped model (2 loops) trained for 30 steps on the corpus, windows of 16 bytes."""
    from lab.config import load_config
    from lab.train import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config([DEBUG], [
        "task.name=text", f"task.path={corpus}", "task.seq_len=16",
        f"task.cache_dir={out / 'cache'}", "model.family=looped", "model.n_layers=3",
        "model.loops=2", "model.injection=add", "train.steps=30", "train.lr=0.01",
        "eval.cost=false", f"out_dir={out}", "name=sample"])
    res = train(cfg)
    assert res.status == "ok"
    return Path(res.run_dir)


def reference(model, prompt, n, temperature, seed, context, loops):
    """The same generation without a cache: a full forward pass over the last `context`
    tokens at every step, the next token from its last position."""
    g = torch.Generator().manual_seed(seed)
    tokens = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([tokens[-context:]]), loops)[0, -1]
        if temperature == 0:
            tokens.append(int(torch.argmax(logits)))
        else:
            probs = torch.softmax(logits.double() / temperature, dim=-1)
            tokens.append(int(torch.multinomial(probs, 1, generator=g)))
    return tokens[len(prompt):]


def test_greedy_and_sampled_bytes_equal_the_forward_pass(run_dir):
    run = load_run(run_dir)
    assert run.loops == 2 and run.context == 16 and run.step == run.steps == 30
    prompt = list(b"the cat ")
    n = 40  # past the 16-byte window: the window slides
    with torch.no_grad():
        greedy = generate(run.model, prompt, n, 0.0, context=run.context, loops=run.loops)
        assert greedy == reference(run.model, prompt, n, 0.0, 0, run.context, run.loops)
        for seed in (0, 1):
            g = torch.Generator().manual_seed(seed)
            sampled = generate(run.model, prompt, n, 1.0, g, run.context, run.loops)
            assert sampled == reference(run.model, prompt, n, 1.0, seed, run.context, run.loops)
        a = generate(run.model, prompt, n, 1.0, torch.Generator().manual_seed(3), 16, 2)
        b = generate(run.model, prompt, n, 1.0, torch.Generator().manual_seed(3), 16, 2)
        c = generate(run.model, prompt, n, 1.0, torch.Generator().manual_seed(4), 16, 2)
    assert a == b and a != c  # a seed fixes the sample


def test_lab_sample_prints_the_prompt_and_its_continuation(run_dir, capsys):
    assert main(["sample", str(run_dir), "--prompt", "the cat ", "-n", "24", "-t", "0"]) == 0
    out = capsys.readouterr()
    run = load_run(run_dir)
    expect = bytes(list(b"the cat ") + generate(run.model, list(b"the cat "), 24, 0.0,
                                                 context=16, loops=2))
    assert out.out == expect.decode("utf-8", errors="replace") + "\n"
    assert "24 bytes at temperature 0" in out.err and "2 loop(s)" in out.err
    for args, expect_err in (
        (["-t", "-1"], "--temperature"),
        (["--prompt", ""], "prompt is empty"),
        (["-n", "0"], "--length"),
    ):
        assert main(["sample", str(run_dir), *args]) == 2
        err = capsys.readouterr().err
        assert expect_err in err and "Traceback" not in err


def test_lab_sample_finds_a_study_trial_and_refuses_what_it_cannot_sample(
        run_dir, tmp_path, capsys, debug_cfg):
    from lab.train import train

    abl = tmp_path / "s.yaml"
    abl.write_text(f"name: s\nbase: [{DEBUG}]\noverrides: {{task.name: text}}\n"
                   "space: {model.loops: [1, 2]}\nseeds: [0, 1]\n")
    storage = f"sqlite:///{tmp_path / 'studies' / 's.db'}"
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(study_name="s", storage=storage)
    dists = {"model.loops": CategoricalDistribution([1, 2]), "seed": IntDistribution(0, 1)}
    for seed, where in ((1, run_dir), (0, tmp_path / "gone")):
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=1.0, params={"model.loops": 2, "seed": seed},
            distributions=dists, user_attrs={"lab.setting": "loops=2", "run_dir": str(where)}))
    args = ["sample", str(abl), "loops=2", "seed=1", f"storage={storage}", "-n", "8", "-t", "0"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "trial #0 of s: loops=2, seed 1" in out.err and out.out.startswith("\n")
    assert main([*args[:3], "seed=0", *args[4:]]) == 2  # its run directory is not here
    err = capsys.readouterr().err
    assert "is not on this machine" in err and "lab rerun" in err
    assert main([*args[:3], "seed=5", *args[4:]]) == 2
    assert "no completed trial" in capsys.readouterr().err
    pointer = train(debug_cfg("train.steps=2", "eval.cost=false"))  # not a text task
    assert main(["sample", pointer.run_dir]) == 2
    assert "not bytes" in capsys.readouterr().err
