import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"

torch.set_num_threads(1)
os.environ.setdefault("PYTHONHASHSEED", "0")


def pytest_collection_modifyitems(config, items):
    # Tests marked gpu need a CUDA device: skipped (and listed as such) without one.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def debug_cfg(tmp_path):
    """Load the tiny debug config, with runs written under tmp_path."""
    from lab.config import load_config

    def make(*overrides: str, files=()):
        return load_config([DEBUG, *files], [f"out_dir={tmp_path / 'runs'}", *overrides])

    return make


@pytest.fixture(autouse=True, scope="session")
def _lab_cache(tmp_path_factory):
    # Task caches (the text task's corpus arrays) go to one temporary directory per session.
    old = os.environ.get("LAB_CACHE")
    os.environ["LAB_CACHE"] = str(tmp_path_factory.mktemp("lab_cache"))
    yield
    if old is None:
        os.environ.pop("LAB_CACHE", None)
    else:
        os.environ["LAB_CACHE"] = old


@pytest.fixture(autouse=True)
def _chdir_tmp(tmp_path, monkeypatch):
    # Anything a test writes by default (runs/, studies/, reports/) lands in tmp_path.
    monkeypatch.chdir(tmp_path)
    yield
