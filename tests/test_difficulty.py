"""Difficulty labels, per-difficulty accuracy, shortcut floors and held-out instances."""

import itertools
import math
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from lab.config import load_config
from lab.errors import ConfigError
from lab.eval.metrics import Accuracy
from lab.tasks import IGNORE, SPLITS, TASKS, build_task, eval_set
from lab.tasks.base import (
    Task,
    accuracy_by_difficulty,
    has_difficulty,
    held_out,
    largest_solved,
    merge_counts,
    row_hash,
)
from lab.tasks.pointer import divisor_count
from lab.train.data import TrainStream

ROOT = Path(__file__).resolve().parent.parent

SPECS = [
    {"name": "pointer"},
    {"name": "pointer", "nodes": 16, "hops": 8, "hops_min": None, "ood": "cycle"},
    {"name": "pointer", "causal": True, "nodes": 8, "hops": 4, "hops_min": 1, "ood": "hops",
     "ood_hops": 6},
    {"name": "pointer", "causal": True, "nodes": 7, "hops": 5, "ood": "cycle"},
    {"name": "induction"},
    {"name": "induction", "alphabet": 3, "length": 12, "hops": 3},
    {"name": "word"},
    {"name": "word", "group": "S5", "length": 8},
]


def _ids(spec):
    return "-".join(f"{v}" for v in spec.values())


# --------------------------------------------------------------------------------------------
# Difficulty labels


def _brute_difficulty(task, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-position difficulty recounted with plain loops, each checked against the labels."""
    d = torch.zeros_like(x)
    for b, (row, target) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        if task.name == "pointer":
            N = task.n
            hop, f, queries, first = ((row[N], row[:N], row[N + 1:], N + 1) if task.causal
                                      else (row[0], row[1:], list(range(N)), 1))
            k = hop - N + 1
            for t, node in enumerate(queries):
                for _ in range(k):
                    node = f[node]
                assert node == target[first + t]  # k hops really give the label
                d[b, first + t] = k
        elif task.name == "induction":
            p = row[0] - task.cfg.alphabet + 1
            for t in range(1, len(row)):
                pos = t
                for _ in range(p):
                    earlier = [s for s in range(1, pos) if row[s] == row[pos]]
                    pos = earlier[-1] + 1 if earlier else None
                    if pos is None:
                        break
                assert (pos is None) == (target[t] == IGNORE)
                d[b, t] = p
        else:  # word: the number of group elements multiplied so far
            for t in range(len(row)):
                d[b, t] = len(row[: t + 1])
    return d


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
@pytest.mark.parametrize("split", SPLITS)
def test_difficulty_labels_match_a_brute_force_recount(spec, split):
    task = build_task(spec)
    x, y = task.sample(300, torch.Generator().manual_seed(11), split)
    d = task.difficulty(x)
    assert d.shape == y.shape and d.dtype == torch.int64
    mask = y != IGNORE
    assert torch.equal(d[mask], _brute_difficulty(task, x, y)[mask])
    # Every value the split contains is announced, and (with 300 sequences) each one occurs.
    assert set(d[mask].tolist()) == set(task.difficulty_values(split))
    assert isinstance(task.difficulty_name, str) and task.difficulty_name
    assert has_difficulty(task)


def test_has_difficulty_is_false_for_tasks_without_it():
    assert not has_difficulty(Task(None))
    assert not has_difficulty(object())


def test_difficulty_names_and_values():
    p = build_task({"name": "pointer"})
    assert p.difficulty_name == "hops"
    assert p.difficulty_values("train") == list(range(1, p.cfg.hops + 1))
    assert p.difficulty_values("ood") == list(range(p.cfg.hops + 1, 2 * p.cfg.hops + 1))
    w = build_task({"name": "word", "length": 5})
    assert w.difficulty_name == "prefix length"
    assert w.difficulty_values("val") == [1, 2, 3, 4, 5]
    assert w.difficulty_values("ood") == list(range(1, 11))
    i = build_task({"name": "induction", "hops": 3})
    assert i.difficulty_values("train") == [1, 2, 3] and i.difficulty_values("ood") == [4]


# --------------------------------------------------------------------------------------------
# Accuracy by difficulty


def test_accuracy_by_difficulty_counts_and_sums_to_overall_accuracy():
    g = torch.Generator().manual_seed(0)
    n, T, V = 50, 13, 5
    y = torch.randint(0, V, (n, T), generator=g)
    y[torch.rand(n, T, generator=g) < 0.3] = IGNORE
    logits = torch.randn(n, T, V, generator=g)
    d = torch.randint(1, 6, (n, T), generator=g)
    pred = logits.argmax(-1)
    expect: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for b in range(n):
        for t in range(T):
            if y[b, t] != IGNORE:
                expect[int(d[b, t])][0] += int(pred[b, t] == y[b, t])
                expect[int(d[b, t])][1] += 1
    got = accuracy_by_difficulty(pred, y, d)
    assert got == {v: tuple(c) for v, c in expect.items()}
    assert list(got) == sorted(got)
    assert accuracy_by_difficulty(logits, y, d) == got  # logits: argmax taken
    # Weighted by token counts, the per-difficulty accuracies give the overall accuracy.
    acc = Accuracy()
    acc.update(logits, y)
    overall = acc.compute()["acc_token"]
    assert sum(c for c, _ in got.values()) == acc.correct
    assert sum(k for _, k in got.values()) == acc.tokens
    weighted = sum((c / k) * k for c, k in got.values()) / sum(k for _, k in got.values())
    assert weighted == pytest.approx(overall, abs=1e-12)
    # Batches merge to the whole.
    parts = [accuracy_by_difficulty(pred[i:i + 7], y[i:i + 7], d[i:i + 7]) for i in range(0, n, 7)]
    assert merge_counts(*parts) == got


def test_accuracy_by_difficulty_on_a_task_and_largest_solved():
    task = build_task({"name": "pointer", "nodes": 8, "hops": 4, "hops_min": 1})
    x, y = task.eval_set("val", 200)
    d = task.difficulty(x)
    # A "model" that is right on 1 and 2 hops and predicts the query otherwise.
    pred = torch.where(d <= 2, y, torch.arange(x.shape[1]) - 1)
    counts = accuracy_by_difficulty(pred, y, d)
    assert set(counts) == {1, 2, 3, 4}
    assert counts[1][0] == counts[1][1] and counts[2][0] == counts[2][1]
    assert largest_solved(counts) == 2
    assert largest_solved({1: (1, 10)}) is None
    assert largest_solved({1: (10, 10), 2: (0, 10), 3: (96, 100)}) == 3
    assert accuracy_by_difficulty(pred, torch.full_like(y, IGNORE), d) == {}


# --------------------------------------------------------------------------------------------
# Floors against brute force


def _bayes(observations: list[tuple[object, object]]) -> Fraction:
    """Accuracy of the best predictor of the answer from the observation: for every observation
    the most frequent answer, counted over equally likely cases."""
    by: dict[object, Counter] = defaultdict(Counter)
    for obs, ans in observations:
        by[obs][ans] += 1
    return Fraction(sum(max(c.values()) for c in by.values()), len(observations))


def _power(f: tuple[int, ...], i: int, k: int) -> int:
    for _ in range(k):
        i = f[i]
    return i


def _single_cycles(N: int):
    for rest in itertools.permutations(range(1, N)):
        order = (0, *rest)
        f = [0] * N
        for a, b in zip(order, order[1:] + order[:1], strict=True):
            f[a] = b
        yield tuple(f)


@pytest.mark.parametrize("N", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("causal", [True, False])
def test_pointer_floor_is_the_best_depth0_prediction_over_all_permutations(N, causal):
    """Enumerate every permutation (and every single cycle) of N nodes, group the cases by
    what a depth-0 model sees at the query (causal: the query i; dense: i and the token
    f(i) at its position) and count the most frequent answer f^k(i)."""
    task = build_task({"name": "pointer", "nodes": N, "hops": 2 * N + 1, "causal": causal,
                       "holdout": 0})
    perms = list(itertools.permutations(range(N)))
    cycles = list(_single_cycles(N))
    for k in range(1, 2 * N + 2):
        for pool, single in ((perms, False), (cycles, True)):
            obs = [((i,) if causal else (i, f[i]), _power(f, i, k)) for f in pool
                   for i in range(N)]
            exact = _bayes(obs)
            assert task.floor_at(k, single_cycle=single) == pytest.approx(float(exact), abs=1e-12)
        # The closed form of the brief: (number of divisors of k that are <= N) / N.
        if causal:
            assert task.floor_at(k) == pytest.approx(divisor_count(k, N) / N)
            assert task.floor_at(k) >= 1 / N


def test_pointer_chance_averages_the_train_floors_and_matches_the_shortcut_on_samples():
    task = build_task({"name": "pointer"})
    floors = task.floor("train")
    assert task.chance == pytest.approx(sum(floors.values()) / len(floors))
    # The best depth-0 rule (predict i, or f(i) where k - 1 has more divisors), on the
    # partitioned val set. Per-sequence accuracies lie in [0, 1] (sd <= 0.5), so the mean over
    # n independent sequences is within 4 * 0.5 / sqrt(n) of its expectation except with
    # probability < 1e-4; the tokens of one sequence share a permutation, so the bound is per
    # sequence, not per token.
    n = 16384
    x, y = task.eval_set("val", n)
    N = task.n
    k = task.difficulty(x)[:, 1:]
    use_f = torch.tensor([False] + [divisor_count(v - 1, N) > divisor_count(v, N)
                                for v in range(1, task.cfg.hops + 1)])[k]
    pred = torch.where(use_f, x[:, 1:], torch.arange(N))
    acc = float((pred == y[:, 1:]).float().mean())
    assert acc == pytest.approx(task.chance, abs=4 * 0.5 / math.sqrt(n))
    # Causal layout, single-cycle OOD: predicting the query is right only when N | k.
    t = build_task({"name": "pointer", "causal": True, "nodes": 6, "hops": 12, "hops_min": 1,
                    "ood": "cycle"})
    assert t.floor("ood")[6] == 1.0 and t.floor("ood")[12] == 1.0
    assert t.floor("ood")[5] == pytest.approx(1 / 5)


@pytest.mark.parametrize("A,T", [(2, 7), (3, 6)])
def test_induction_floor_is_the_best_depth0_prediction_over_all_strings(A, T):
    """Every string of length T over A symbols: group the labelled positions by what a
    depth-0 model sees (position t, token x_t; p is fixed) and count the most frequent target,
    with the labels from the brute-force reference."""
    task = build_task({"name": "induction", "alphabet": A, "length": T, "hops": 3, "holdout": 0})
    for split in ("train", "ood"):
        for p, floor in task.floor(split).items():
            strings = torch.tensor(list(itertools.product(range(A), repeat=T)))
            x = torch.cat([torch.full((len(strings), 1), A + p - 1), strings], dim=1)
            y = task.reference(x)
            obs = [((t, row[t]), target[t]) for row, target in zip(x.tolist(), y.tolist(),
                                                                     strict=True)
                   for t in range(1, T + 1) if target[t] != IGNORE]
            assert floor == pytest.approx(float(_bayes(obs)), abs=1e-12)


def test_induction_default_floor_matches_an_independent_sample():
    """The default floor is measured on 8192 strings per p; compare it with the copy rule on a
    fresh val set of 20000 strings. The tolerance is 4 standard errors of the difference,
    estimated per sequence (the ratio estimator's linearisation), as labelled tokens of one
    string are correlated."""
    task = build_task({"name": "induction"})
    x, y = task.eval_set("val", 20000)
    d = task.difficulty(x)
    mask = y != IGNORE
    A = task.cfg.alphabet
    for p, floor in task.floor("train").items():
        rows = d[:, 0] == p
        m, hit = mask[rows], ((y == x) & mask)[rows]
        n_t, c_t = m.sum(0).double(), hit.sum(0).double()
        # Bayes per position: copy x_t, or another symbol when copying is rarer than that
        # (by symmetry a fixed other symbol is right on 1/(A - 1) of the non-copy targets).
        other = c_t < (n_t - c_t) / (A - 1)
        right = torch.where(other[None, :], (m & ~hit).double() / (A - 1), hit.double())
        acc = float(right.sum() / m.sum())
        per_seq = right.sum(1) - acc * m.sum(1).double()
        se = float(per_seq.std() / math.sqrt(len(per_seq)) / m.sum(1).double().mean())
        se_floor = se * math.sqrt(len(per_seq) / 8192)
        assert abs(acc - floor) < 4 * math.hypot(se, se_floor), (p, acc, floor, se)
    assert task.chance > 1 / A


def test_word_floor_is_the_best_depth0_prediction_over_all_words():
    task = build_task({"name": "word", "length": 4})
    T, G = 4, task.vocab_size
    words = torch.tensor(list(itertools.product(range(G), repeat=T)))
    y = task.reference(words)
    floors = task.floor("train")
    for t in range(T):
        obs = [(w[t], target[t]) for w, target in zip(words.tolist(), y.tolist(), strict=True)]
        assert floors[t + 1] == pytest.approx(float(_bayes(obs)), abs=1e-12)
    assert floors[1] == 1.0 and floors[2] == pytest.approx(1 / 6)
    assert task.chance == pytest.approx((1 + 3 / 6) / 4)


# --------------------------------------------------------------------------------------------
# Held-out instances


def _keys(task, x: torch.Tensor) -> set[tuple[int, ...]]:
    if task.name == "pointer":
        rows = x[:, : task.n] if task.causal else x[:, 1:]
    elif task.name == "induction":
        rows = x[:, 1:]
    else:
        rows = x
    return set(map(tuple, rows.tolist()))


SMALL = [
    {"name": "pointer", "causal": True, "nodes": 6, "hops": 3, "hops_min": 1, "queries": 8},
    {"name": "pointer", "nodes": 5, "hops": 3, "hops_min": 1},
    {"name": "pointer", "nodes": 6, "hops": 3, "ood": "cycle"},
    {"name": "induction", "alphabet": 2, "length": 8},
    {"name": "word", "length": 4},
]


@pytest.mark.parametrize("spec", SMALL, ids=_ids)
def test_eval_instances_never_occur_in_training_streams(spec):
    """Small instance spaces, where a 200-batch stream covers most instances: with the
    partition no val/OOD instance occurs in the streams of two seeds; without it they do."""
    for holdout in (0.125, 0.0):
        task = build_task({**spec, "holdout": holdout})
        train: set = set()
        for seed in (0, 1):
            it = iter(TrainStream(task, 64, seed, 0))
            for _ in range(200):
                train |= _keys(task, next(it)[0])
        for split in ("val", "ood"):
            shared = _keys(task, eval_set(task, split, 512)[0]) & train
            if holdout:
                assert not shared, (split, len(shared))
            elif split == "val":
                assert shared  # the test would catch a leak


def test_causal_pointer_config_val_is_disjoint_from_training():
    cfg = load_config([ROOT / "configs" / "causal_pointer.yaml"])
    task = build_task(cfg.task)
    train: set = set()
    it = iter(TrainStream(task, cfg.train.batch_size, 0, 0))
    for _ in range(200):
        train |= _keys(task, next(it)[0])
    for split in ("val", "ood"):
        x, y = eval_set(task, split, cfg.train.val_size)
        assert not _keys(task, x) & train
        assert torch.equal(task.reference(x), y)


def test_partition_fraction_and_hash_are_stable():
    g = torch.Generator().manual_seed(0)
    x = torch.argsort(torch.rand(100_000, 32, generator=g), dim=1)
    frac = float(held_out(x, 0.125).float().mean())
    # Binomial(1e5, 1/8): sd 0.001, so 4 sd = 0.004.
    assert frac == pytest.approx(0.125, abs=0.004)
    assert not held_out(x, 0.0).any()
    # Pinned: a change of the hash would silently move instances between partitions.
    assert row_hash(torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])).tolist() == PINNED
    # Equal rows hash equally whatever the batch around them.
    assert torch.equal(row_hash(x[:10]), row_hash(torch.cat([x[5:10], x[:10]]))[5:])


PINNED = [376131663, 2150719826]


# The text task splits by whole file, not by instance hash (tests/test_text.py).
@pytest.mark.parametrize("name", sorted(set(TASKS) - {"text"}))
def test_partitioned_sampling_is_seeded_and_disjoint_between_splits(name):
    task = build_task({"name": name})
    a = task.sample(32, torch.Generator().manual_seed(4), "train")
    b = task.sample(32, torch.Generator().manual_seed(4), "train")
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    xv, yv = task.sample(32, torch.Generator().manual_seed(4), "val")
    assert torch.equal(task.reference(xv), yv)
    assert not _keys(task, a[0]) & _keys(task, xv)


def test_too_small_an_instance_space_names_the_holdout_key():
    # Three nodes: none of the 6 permutations hashes to the held-out buckets.
    task = build_task({"name": "pointer", "nodes": 3, "hops": 2})
    with pytest.raises(ConfigError) as e:
        task.sample(8, torch.Generator().manual_seed(0), "val")
    assert e.value.key == "task.holdout"
    task = build_task({"name": "pointer", "nodes": 3, "hops": 2, "holdout": 0})
    assert task.sample(8, torch.Generator().manual_seed(0), "val")[0].shape == (8, 4)
    with pytest.raises(ConfigError) as e:
        build_task({"name": "word", "holdout": 1.0})
    assert e.value.key == "task.holdout"


def test_holdout_zero_draws_the_unpartitioned_stream():
    """With the partition off, sampling consumes the generator exactly as before it existed."""
    task = build_task({"name": "pointer", "nodes": 16, "hops": 8, "hops_min": None, "ood": "cycle",
                       "holdout": 0})
    g = torch.Generator().manual_seed(5)
    x, _ = task.sample(16, g, "train")
    h = torch.Generator().manual_seed(5)
    perm = torch.argsort(torch.rand(16, 16, generator=h), dim=1)
    assert torch.equal(x[:, 1:], perm) and (x[:, 0] == 16 + 8 - 1).all()
    word = build_task({"name": "word", "holdout": 0})
    x, _ = word.sample(8, torch.Generator().manual_seed(5), "val")
    assert torch.equal(x, torch.randint(0, 6, (8, 16), generator=torch.Generator().manual_seed(5)))
