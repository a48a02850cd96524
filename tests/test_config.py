import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab.cli import main
from lab.config import LabConfig, load_config, to_yaml
from lab.errors import ConfigError, LabError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_builds(path):
    from lab.model import build_model, resolve

    cfg = load_config([path])
    cfg, task, plan = resolve(cfg)
    build_model(cfg, task, plan)


def test_layers_merge_in_order(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("model: {loops: 2, family: looped}\ntrain: {steps: 7}\n")
    cfg = load_config([f], ["train.steps=9", "seed=3"])
    assert (cfg.model.loops, cfg.train.steps, cfg.seed) == (2, 9, 3)
    assert isinstance(cfg, LabConfig)


def test_override_values_are_typed():
    cfg = load_config(overrides=["train.lr=1e-3", "model.band=[0, 1]", "model.eval_loops=null"])
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.model.band == [0, 1]


def test_new_task_name_starts_task_section_afresh():
    cfg = load_config([ROOT / "configs" / "causal_pointer.yaml"], ["task.name=word"])
    assert cfg.task == {"name": "word"}
    cfg = load_config([ROOT / "configs" / "causal_pointer.yaml"], ["task.hops=5"])
    assert cfg.task["hops"] == 5 and cfg.task["causal"] is True


def test_the_pointer_task_brings_its_own_recipe_under_what_a_config_sets(tmp_path):
    # Learned positions and an untied head on the bidirectional pointer task (it addresses by
    # absolute position), the defaults elsewhere; a file or an override still wins.
    cfg = load_config()
    assert (cfg.task["name"], cfg.model.positions, cfg.model.tie_embeddings) == (
        "pointer", "learned", False)
    assert load_config(overrides=["model.positions=rope"]).model.positions == "rope"
    f = tmp_path / "a.yaml"
    f.write_text("model: {tie_embeddings: true}\n")
    cfg = load_config([f])
    assert (cfg.model.positions, cfg.model.tie_embeddings) == ("learned", True)
    for other in (["task.name=word"], ["task.causal=true"]):
        cfg = load_config(overrides=other)
        assert (cfg.model.positions, cfg.model.tie_embeddings) == ("rope", True), other
    # A task set by a later layer gets its recipe too.
    cfg = load_config([ROOT / "configs" / "text.yaml"], ["task.name=pointer"])
    assert cfg.model.positions == "learned"


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["model.family=looped", "model.loops=3", "task.hops=4"])
    f = tmp_path / "c.yaml"
    f.write_text(to_yaml(cfg))
    assert load_config([f]) == cfg


@pytest.mark.parametrize(
    "args,key",
    [
        (["model.lopos=3"], "model.lopos"),
        (["model.loops=three"], "model.loops"),
        (["model.n_heads=3"], "model.n_heads"),
        (["model.loops=0"], "model.loops"),
        (["model.family=banded", "model.width_profile=explicit", "model.widths=[64,64]"],
         "model.widths"),
        (["model.family=looped", "model.band=[0,5]"], "model.band"),
        (["model.width_profile=tall"], "model.width_profile"),
        (["train.steps=0"], "train.steps"),
        (["task.hops=-1"], "task.hops"),
        (["task.colour=red"], "task.colour"),
        (["colour=red"], "colour"),
    ],
)
def test_bad_config_exits_2_naming_the_key(args, key, capsys):
    code = main(["train", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err
    assert "Traceback" not in err


def test_bad_inputs_other_than_keys(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {loops: [1, 2\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["train", "model.loops"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["model.lops=3"])
    assert "model.loops" in str(e.value)


def test_cli_error_is_one_paragraph_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lab.cli", "train", "model.n_heads=7"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.n_heads" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n\n") == 0


def test_check_builds_every_config(capsys):
    assert main(["check", str(ROOT / "configs")]) == 0
    out = capsys.readouterr().out
    assert "configs built" in out


def test_errors_are_lab_errors():
    assert issubclass(ConfigError, LabError)
    assert yaml.safe_load("a: 1") == {"a": 1}


ABLATIONS = sorted((ROOT / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_every_ablation_loads_and_every_setting_builds(path):
    import torch

    from lab.model import build_model, resolve
    from lab.study.spec import load_ablation
    from lab.tasks import eval_set

    abl = load_ablation(path)
    assert abl.settings() and abl.seeds
    for _, cfg in abl.setting_configs():
        cfg, task, plan = resolve(cfg)
        model = build_model(cfg, task, plan)
        x, _ = eval_set(task, "val", 1)
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("body,key,where", [
    ("space: {model.loopz: [1, 2]}\n", "model.loopz", "the space of"),
    ("overrides: {model.n_layer: 2}\nspace: {model.loops: [1, 2]}\n", "model.n_layer",
     "the overrides of"),
    ("space: {model.loops: [x, 2]}\n", "model.loops", "the space of"),
])
def test_an_error_in_an_ablation_file_names_the_file(tmp_path, capsys, body, key, where):
    f = tmp_path / "mine.yaml"
    f.write_text(f"name: mine\nbase: [{ROOT / 'configs' / 'debug.yaml'}]\n{body}")
    assert main(["sweep", str(f)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{key}'" in err and f"(from {where} {f})" in err and "command line" not in err
    # A key from the command line is still blamed on the command line.
    f.write_text(f"name: mine\nbase: [{ROOT / 'configs' / 'debug.yaml'}]\n"
                 "space: {model.loops: [1, 2]}\n")
    assert main(["sweep", str(f), "model.lopos=3"]) == 2
    assert "(from command line)" in capsys.readouterr().err
