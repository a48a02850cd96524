import pytest
import torch

from lab.errors import ConfigError
from lab.tasks import IGNORE, SPLITS, TASKS, build_task

SPECS = [
    {"name": "pointer"},
    {"name": "pointer", "nodes": 5, "hops": 3, "hops_min": 1},
    {"name": "pointer", "nodes": 16, "hops": 8, "hops_min": None, "ood": "cycle"},
    {"name": "pointer", "causal": True, "nodes": 8, "hops": 4, "hops_min": 1, "ood": "hops"},
    {"name": "pointer", "causal": True, "ood": "cycle"},
    {"name": "induction"},
    {"name": "induction", "alphabet": 3, "length": 12, "hops": 3},
    {"name": "word"},
    {"name": "word", "group": "S5", "length": 8},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
@pytest.mark.parametrize("split", SPLITS)
def test_labels_match_brute_force_reference(spec, split):
    task = build_task(spec)
    x, y = task.sample(48, torch.Generator().manual_seed(3), split)
    assert x.dtype == torch.int64 and x.shape == y.shape
    assert x.shape[1] <= task.max_seq_len
    assert int(x.max()) < task.vocab_size and int(x.min()) >= 0
    assert torch.equal(task.reference(x), y)
    labelled = y[y != IGNORE]
    assert labelled.numel() > 0 and int(labelled.max()) < task.vocab_size


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generation_is_seeded(name):
    task = build_task({"name": name})
    a = task.sample(8, torch.Generator().manual_seed(1))
    b = task.sample(8, torch.Generator().manual_seed(1))
    c = task.sample(8, torch.Generator().manual_seed(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    # Evaluation sets are fixed: the same for every caller.
    assert torch.equal(task.eval_set("val", 4)[0], task.eval_set("val", 4)[0])
    assert not torch.equal(task.eval_set("val", 4)[0], task.eval_set("ood", 4)[0][:, : task.seq_len])


def _cycle_length(f: list[int]) -> int:
    seen, node = set(), 0
    while node not in seen:
        seen.add(node)
        node = f[node]
    return len(seen)


def test_pointer_ood_cycle_split_is_single_cycles():
    task = build_task({"name": "pointer", "nodes": 12, "ood": "cycle"})
    x, _ = task.sample(64, torch.Generator().manual_seed(0), "ood")
    for row in x.tolist():
        f = row[1:]
        assert sorted(f) == list(range(12))
        assert _cycle_length(f) == 12
    x, _ = task.sample(256, torch.Generator().manual_seed(0), "train")
    assert any(_cycle_length(row[1:]) < 12 for row in x.tolist())


def test_pointer_ood_hops_split_uses_more_hops():
    task = build_task({"name": "pointer", "causal": True, "hops": 3, "hops_min": 1, "ood": "hops",
                       "ood_hops": 5})
    x, _ = task.sample(200, torch.Generator().manual_seed(0), "ood")
    hops = x[:, task.n] - task.n + 1
    assert set(hops.tolist()) == {4, 5}
    x, _ = task.sample(200, torch.Generator().manual_seed(0), "train")
    assert set((x[:, task.n] - task.n + 1).tolist()) == {1, 2, 3}


def test_word_problem_ood_is_longer():
    task = build_task({"name": "word", "length": 6})
    assert task.sample(2, torch.Generator().manual_seed(0), "ood")[0].shape[1] == 12


@pytest.mark.parametrize(
    "spec,key",
    [
        ({"name": "pointer", "nodez": 3}, "task.nodez"),
        ({"name": "pointer", "hops": 0}, "task.hops"),
        ({"name": "pointer", "hops": 2, "hops_min": 3}, "task.hops_min"),
        ({"name": "word", "group": "S7"}, "task.group"),
        ({"name": "nope"}, "task.name"),
        ({"name": "no.such.module:Task"}, "task.name"),
    ],
)
def test_bad_task_specs_name_the_key(spec, key):
    with pytest.raises(ConfigError) as e:
        build_task(spec)
    assert e.value.key == key


def test_user_task_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "mytasks.py").write_text(
        "from dataclasses import dataclass\n"
        "import torch\n"
        "@dataclass\n"
        "class Cfg:\n"
        "    length: int = 5\n"
        "class Copy:\n"
        "    Config = Cfg\n"
        "    causal = True\n"
        "    def __init__(self, cfg):\n"
        "        self.vocab_size, self.chance = 4, 0.25\n"
        "        self.seq_len = self.max_seq_len = cfg.length\n"
        "    def sample(self, n, g, split='train'):\n"
        "        x = torch.randint(0, 4, (n, self.seq_len), generator=g)\n"
        "        return x, x.clone()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = build_task({"name": "mytasks:Copy", "length": 7})
    assert task.seq_len == 7
    with pytest.raises(ConfigError):
        build_task({"name": "mytasks:Copy", "hops": 2})
