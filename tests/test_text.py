"""The text task: byte windows of a folder of files, split by file, cached and memory-mapped."""

import json
import math
import os
import random
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.tasks import SPLITS, build_task, eval_set
from lab.tasks.text import STDLIB_OOD, TextTask, bits_per_byte, matches

DEBUG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"


def write_corpus(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def random_files(seed: int, n_dirs: int = 6, per_dir: int = 5, lo: int = 20, hi: int = 400):
    """Text-like files of random bytes 1..255 (no NUL), some shorter than a window."""
    rng = random.Random(seed)
    out = {}
    for d in range(n_dirs):
        for f in range(per_dir):
            out[f"d{d}/f{f}.py"] = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(lo, hi)))
    out["top.py"] = bytes(rng.randrange(1, 256) for _ in range(300))
    return out


def text(root, tmp_path, **kw) -> TextTask:
    spec = {"name": "text", "path": str(root), "cache_dir": str(tmp_path / "cache"), "seq_len": 16,
            "val_fraction": 0.2, "ood_fraction": 0.2, **kw}
    return build_task(spec)


def split_of(task: TextTask) -> dict[str, str]:
    """relative path -> split."""
    return {rel: s for s in SPLITS for _, rel, _, _ in task.meta["splits"][s]["files"]}


def slow_windows(task: TextTask, split: str, idx: list[int]) -> list[bytes]:
    """Window number i of a split: walk its files in order, reading each from disk."""
    T = task.seq_len
    out = []
    for i in idx:
        for path, _ in task.files(split):
            data = Path(path).read_bytes()
            count = max(len(data) - T, 0)
            if i < count:
                out.append(data[i : i + T + 1])
                break
            i -= count
        else:
            raise AssertionError("index past the last window")
    return out


@pytest.mark.parametrize("split", SPLITS)
def test_windows_equal_slow_reference(tmp_path, split):
    task = text(write_corpus(tmp_path / "c", random_files(0)), tmp_path)
    x, y = task.sample(64, torch.Generator().manual_seed(11), split)
    assert x.shape == y.shape == (64, 16) and x.dtype == y.dtype == torch.int64
    idx = torch.randint(0, task.n_windows[split], (64,), generator=torch.Generator().manual_seed(11))
    ref = slow_windows(task, split, idx.tolist())
    assert [bytes(r) for r in x.tolist()] == [w[:-1] for w in ref]
    assert [bytes(r) for r in y.tolist()] == [w[1:] for w in ref]
    assert task.n_windows[split] == sum(max(n - 16, 0) for _, n in task.files(split))


def test_windows_never_cross_file_boundaries(tmp_path):
    # Every file is one repeated byte, different per file: a window inside one file is constant.
    rng = random.Random(1)
    files = {f"d{i % 5}/f{i}.txt": bytes([i + 1]) * rng.randrange(5, 60) for i in range(60)}
    task = text(write_corpus(tmp_path / "c", files), tmp_path, include=["*.txt"], seq_len=8)
    for split in SPLITS:
        x, y = task.sample(2000, torch.Generator().manual_seed(2), split)
        w = torch.cat([x, y[:, -1:]], dim=1)
        assert bool((w == w[:, :1]).all())
        assert {int(v) for v in w[:, 0]} <= {n + 1 for n in range(60)}
    # Files shorter than a window contribute none.
    assert any(len(b) <= 8 for b in files.values())
    assert sum(task.n_windows.values()) == sum(max(len(b) - 8, 0) for b in files.values())


def test_split_is_deterministic_and_depends_on_relative_path_only(tmp_path):
    files = random_files(0)
    a = text(write_corpus(tmp_path / "a", files), tmp_path)
    # Same relative paths and sizes, other contents, other root, other cache.
    other = {rel: b"#" * len(data) for rel, data in files.items()}
    b = text(write_corpus(tmp_path / "b", other), tmp_path / "elsewhere")
    assert split_of(a) == split_of(b)
    assert set(split_of(a).values()) == set(SPLITS)
    # Adding files moves no existing file between train, val and tune (the OOD share is
    # chosen by bytes, so added bytes may change which directories are held out).
    more = dict(files, **{f"d{d}/new{k}.py": b"x = 1\n" * 20 for d in range(6) for k in range(3)})
    c = text(write_corpus(tmp_path / "a", more), tmp_path)
    ood = {rel for t in (a, c) for rel, s in split_of(t).items() if s == "ood"}
    assert ({rel: s for rel, s in split_of(c).items() if rel in files and rel not in ood}
            == {rel: s for rel, s in split_of(a).items() if rel not in ood})
    # The hash-chosen OOD split holds out whole top-level directories (6 >= 4 of them).
    assert a.ood_mode == "hash: directories"
    ood_dirs = {rel.split("/")[0] for rel, s in split_of(a).items() if s == "ood"}
    assert ood_dirs and all((s == "ood") == (rel.split("/")[0] in ood_dirs)
                            for rel, s in split_of(a).items() if "/" in rel)


def test_few_directories_hold_out_files(tmp_path):
    files = {f"f{i}.txt": b"abc def\n" * 20 for i in range(30)}
    task = text(write_corpus(tmp_path / "c", files), tmp_path, include="*.txt")
    assert task.ood_mode == "hash: files"
    assert 0 < task.provenance()["files"]["ood"] < 30


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    root = write_corpus(tmp_path / "c", random_files(0))
    a = text(root, tmp_path)
    stamp = {s: (a.cache / f"{s}.bin").stat().st_mtime_ns for s in SPLITS}

    def no_build(*args, **kwargs):
        raise AssertionError("cache rebuilt")

    with monkeypatch.context() as m:
        m.setattr(TextTask, "_build", no_build)
        b = text(root, tmp_path)
    assert b.cache == a.cache
    assert {s: (b.cache / f"{s}.bin").stat().st_mtime_ns for s in SPLITS} == stamp
    assert b.provenance()["content_sha256"] == a.provenance()["content_sha256"]

    # Same size, new contents and mtime: a new cache entry with the new bytes.
    rel = next(r for r, s in split_of(a).items() if s == "train")
    path = root / rel
    new = bytes(reversed(path.read_bytes()))
    path.write_bytes(new)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = text(root, tmp_path)
    assert c.cache != a.cache
    assert c.provenance()["content_sha256"] != a.provenance()["content_sha256"]
    table = {r: (off, n) for _, r, off, n in c.meta["splits"]["train"]["files"]}
    off, n = table[rel]
    assert bytes(c.data["train"][off : off + n]) == new
    assert (a.cache / "meta.json").is_file()  # the old entry is left in place


def test_chance_is_the_most_common_train_byte(tmp_path):
    task = text(write_corpus(tmp_path / "c", random_files(3)), tmp_path)
    data = b"".join(Path(p).read_bytes() for p, _ in task.files("train"))
    assert task.chance == pytest.approx(max(data.count(bytes([v])) for v in range(256)) / len(data))
    assert task.vocab_size == 256 and task.causal and task.seq_len == task.max_seq_len == 16


def test_bits_per_byte():
    assert bits_per_byte(math.log(256)) == pytest.approx(8.0)
    uniform = F.cross_entropy(torch.zeros(4, 256), torch.tensor([0, 7, 255, 10]))
    assert bits_per_byte(float(uniform)) == pytest.approx(8.0)
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)


def test_include_exclude_and_binary_files(tmp_path):
    files = random_files(0)
    files["d0/blob.py"] = b"abc\0def" * 100  # binary: skipped, counted
    files["d1/notes.txt"] = b"not python\n" * 50
    root = write_corpus(tmp_path / "c", files)
    everything = text(root, tmp_path)  # by default every file that is not binary
    assert "d1/notes.txt" in split_of(everything) and "d0/blob.py" not in split_of(everything)
    task = text(root, tmp_path, include="*.py", exclude=["d2", "/d3/f1.py"])
    rels = set(split_of(task))
    assert "d0/blob.py" not in rels and "d1/notes.txt" not in rels
    assert not any(r.startswith("d2/") for r in rels) and "d3/f1.py" not in rels and "d3/f0.py" in rels
    assert task.provenance()["skipped_binary"] == 1
    assert matches("a/b/c.py", "*.py") and matches("a/b/c.py", "b") and matches("a/b/c.py", "a/b")
    assert not matches("a/b/c.py", "/b") and matches("test/test_xml_etree.py", "test/test_xml*")


def test_ood_path_and_holdout(tmp_path):
    main = write_corpus(tmp_path / "main", random_files(0))
    ood = write_corpus(tmp_path / "ood", {f"o{i}.py": b"print('hi')\n" * 30 for i in range(3)})
    task = text(main, tmp_path, ood_path=str(ood))
    assert task.ood_mode == "ood_path"
    assert sorted(Path(p).name for p, _ in task.files("ood")) == ["o0.py", "o1.py", "o2.py"]
    assert {s for s in split_of(task).values()} >= {"train", "val"}
    held = text(main, tmp_path, ood_holdout=["d1", "top.py"])
    assert {r for r, s in split_of(held).items() if s == "ood"} == (
        {f"d1/f{i}.py" for i in range(5)} | {"top.py"})


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"path": "/no/such/dir"}, "task.path"),
        ({"ood_path": "/no/such/dir"}, "task.ood_path"),
        ({"include": ["*.rs"]}, "task.include"),
        ({"val_fraction": 1.5}, "task.val_fraction"),
        ({"seq_len": 0}, "task.seq_len"),
        ({"ood_holdout": ["nothing-*"]}, "task.ood_holdout"),
        ({"seq_len": 100}, "task.path"),  # every split too small: train is checked first
        ({"include": 3}, "task.include"),
    ],
)
def test_bad_input_names_the_key(tmp_path, kw, key):
    root = write_corpus(tmp_path / "c", random_files(0, lo=60, hi=90))
    with pytest.raises(ConfigError) as e:
        text(root, tmp_path, **kw)
    assert e.value.key == key


def test_too_small_split_says_which_and_what_to_do(tmp_path):
    root = write_corpus(tmp_path / "c", {f"d{i}/a.py": b"x = 1\n" * 40 for i in range(8)})
    with pytest.raises(ConfigError) as e:
        text(root, tmp_path, seq_len=300)
    msg = str(e.value)
    assert e.value.key == "task.path" and "train split" in msg and "bytes" in msg
    one = write_corpus(tmp_path / "one", {"only.py": b"y = 2\n" * 100})
    with pytest.raises(ConfigError) as e:
        text(one, tmp_path)
    assert e.value.key in {"task.val_fraction", "task.path", "task.ood_fraction"}
    assert "split has" in str(e.value)


def test_unreadable_file_is_named(tmp_path):
    root = write_corpus(tmp_path / "c", random_files(0))
    (root / "d0" / "dangling.py").symlink_to(tmp_path / "missing.py")
    with pytest.raises(ConfigError) as e:
        text(root, tmp_path)
    assert e.value.key == "task.path" and "dangling.py" in str(e.value)


def test_paths_from_the_command_line(tmp_path):
    a = write_corpus(tmp_path / "a", random_files(0))
    b = write_corpus(tmp_path / "b", random_files(1))
    cache = f"task.cache_dir={tmp_path / 'cache'}"
    one = load_config(overrides=["task.name=text", f"task.path={a}", cache, "task.seq_len=16"])
    two = load_config(overrides=["task.name=text", f"task.path=[{a},{b}]", cache, "task.seq_len=16",
                                 'task.include="*.py"'])
    t1, t2 = build_task(one.task), build_task(two.task)
    assert t1.roots == [a.resolve()] and t2.roots == [a.resolve(), b.resolve()]
    assert sum(t2.provenance()["files"].values()) == 2 * sum(t1.provenance()["files"].values())
    with pytest.raises(LabError) as e:
        load_config(overrides=["task.name=text", "task.include=*.txt"])
    assert "quote" in str(e.value).lower()


def test_default_corpus_is_the_stdlib():
    task = build_task({"name": "text"})  # cached under the session's LAB_CACHE (conftest)
    p = task.provenance()
    assert task.is_stdlib and p["python"] and "not comparable" in p["note"]
    assert p["ood_mode"] == "stdlib packages" and p["ood_holdout"] == list(STDLIB_OOD)
    assert all(b > 10**5 for b in p["bytes"].values())
    assert 0.02 < p["bytes"]["ood"] / sum(p["bytes"].values()) < 0.15
    assert all(any(m in path for m in ("/email/", "/json/", "/xml", "/sqlite3", "/test/test_"))
               for path, _ in task.files("ood"))
    assert not any("site-packages" in path or "__pycache__" in path
                   for s in SPLITS for path, _ in task.files(s))
    assert 0.1 < task.chance < 0.5  # the space character
    x, y = task.sample(32, torch.Generator().manual_seed(0))
    assert x.shape == (32, task.seq_len) and torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(eval_set(task, "val", 8)[0], eval_set(task, "ood", 8)[0])
    assert "stdlib" in task.describe() and "val" in task.describe()
    g = torch.Generator()
    t0 = time.perf_counter()
    for step in range(200):
        task.sample(32, g.manual_seed(step))
    assert (time.perf_counter() - t0) / 200 < 0.005  # well under a training step


def test_harness_reports_bits_per_byte_and_loss_by_position(tmp_path, debug_cfg):
    """A run on a text task reports val/bpb = val/loss / ln 2 and the loss in four bands of
    the window, whose token-weighted mean is the loss (every position has a target)."""

    from lab.train import train

    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(12):
        (root / f"f{i}.txt").write_text(f"line {i}: " + "abcdefgh " * (160 + i))
    cfg = debug_cfg("task.name=text", f"task.path={root}", "task.include=['*.txt']",
                    "task.seq_len=16", "task.val_fraction=0.2", "task.ood_fraction=0.2",
                    f"task.cache_dir={tmp_path / 'cache'}", "eval.cost=false")
    res = train(cfg)
    m = res.metrics
    for split in ("val", "ood"):
        assert m[f"{split}/bpb"] == pytest.approx(m[f"{split}/loss"] / math.log(2))
        bands = [m[f"{split}/loss_pos/{i}"] for i in range(1, 5)]
        assert sum(bands) / 4 == pytest.approx(m[f"{split}/loss"], rel=1e-6)  # 4 equal bands
    prov = json.loads((Path(res.run_dir) / "provenance.json").read_text())
    assert prov["task"]["provenance"]["files"]["train"] >= 1


def ood_hash(name: str) -> float:
    """The OOD split's hash of a unit name, computed here from its definition (sha256 of
    'ood', NUL, name; the first 8 bytes as a fraction of 2^64)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"ood\0{name}".encode()).digest()[:8], "big") / 2**64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_share_is_chosen_by_bytes(tmp_path, seed):
    # One directory holds 44% of the bytes and its name hashes first: choosing directories by
    # count (hash < ood_fraction) held it out whole. By bytes, the held-out share stays near
    # ood_fraction, in whole directories.
    rng = random.Random(seed)
    big = next(f"big{i}" for i in range(10_000) if ood_hash(f"big{i}") < 0.02)
    files = {f"{big}/part{k}.txt": bytes(rng.randrange(1, 256) for _ in range(4400))
             for k in range(10)}
    for d in range(28):
        for k in range(2):
            files[f"s{seed}x{d}/f{k}.md"] = bytes(rng.randrange(1, 256) for _ in range(1000))
    root = write_corpus(tmp_path / "c", files)
    task = text(root, tmp_path, include="*", ood_fraction=0.1, val_fraction=0.1)
    total = sum(len(b) for b in files.values())
    held = {rel for rel, s in split_of(task).items() if s == "ood"}
    share = sum(len(files[r]) for r in held) / total
    assert 0.05 <= share <= 0.15, share
    assert task.ood_mode == "hash: directories" and not any(r.startswith(big) for r in held)
    dirs = {r.split("/")[0] for r in held}
    assert held == {r for r in files if r.split("/")[0] in dirs}  # whole directories
    assert f"({100 * share:.1f}% of the bytes)" in task.describe()


def test_ood_share_by_bytes_holds_out_files_when_no_directory_fits(tmp_path):
    # Four directories of a quarter of the bytes each: none fits in 1.5 x 10%, so files are
    # held out instead.
    files = {f"d{d}/f{k}.txt": bytes([65 + d]) * 500 for d in range(4) for k in range(20)}
    task = text(write_corpus(tmp_path / "c", files), tmp_path, include="*", ood_fraction=0.1)
    held = [r for r, s in split_of(task).items() if s == "ood"]
    assert task.ood_mode == "hash: files"
    assert 0.05 <= len(held) / len(files) <= 0.15


def test_split_with_fewer_windows_than_the_validation_set_is_refused(tmp_path, debug_cfg, capsys):
    from lab.cli import main
    from lab.train import train

    files = {f"f{i}.txt": b"some words here\n" * 60 for i in range(20)}  # ~1 KB each
    root = write_corpus(tmp_path / "c", files)
    args = ["task.name=text", f"task.path={root}", "task.include=['*.txt']", "task.seq_len=16",
            "task.val_fraction=0.1",
            f"task.cache_dir={tmp_path / 'cache'}", "eval.cost=false"]
    # train (15 files) has room for 840 windows of 17 bytes, val and OOD (1-3 files) for at
    # most 168: an evaluation set of 300 sequences would repeat windows.
    assert train(debug_cfg(*args, "train.val_size=56", "train.steps=1")).status == "ok"
    with pytest.raises(ConfigError) as e:
        train(debug_cfg(*args, "train.val_size=300"))
    assert e.value.key in ("task.val_fraction", "task.ood_fraction") and "train.val_size" in str(e.value)
    assert len(list((tmp_path / "runs").rglob("config.yaml"))) == 1  # refused before writing
    capsys.readouterr()
    assert main(["train", "--config", str(DEBUG), *args, "train.val_size=300",
                 f"out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and "fewer than 300" in err


def test_lab_train_on_a_folder_of_markdown_and_text(tmp_path, capsys):
    """A folder of Markdown, text and compressed files: every non-binary file trains, and
    `lab train` prints the splits (files and MB) before training."""
    import gzip

    from lab.cli import main

    rng = random.Random(0)
    words = b"the of and to in is it that for on are with as at be this from".split()
    root = tmp_path / "docs"
    for d in range(6):
        for k, name in enumerate(("README.md", "notes.txt", "copyright")):
            p = root / f"pkg{d}" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b" ".join(rng.choice(words) for _ in range(400 + 50 * k)))
        (root / f"pkg{d}" / "changelog.gz").write_bytes(gzip.compress(b"binary " * 400))
    rc = main(["train", "--config", str(DEBUG), "task.name=text", f"task.path={root}",
               "task.seq_len=16", f"task.cache_dir={tmp_path / 'cache'}", "eval.cost=false",
               "train.steps=2", f"out_dir={tmp_path / 'runs'}"])
    assert rc == 0
    shown = " ".join(capsys.readouterr().out.split())
    prov = json.loads(next((tmp_path / "runs").rglob("provenance.json")).read_text())
    p = prov["task"]["provenance"]
    assert sum(p["files"].values()) == 18 and p["skipped_binary"] == 6 and p["include"] == ["*"]
    for split in SPLITS:
        assert f"{split} {p['files'][split]} files {p['bytes'][split] / 1e6:.2f} MB" in shown
