"""The Makefile's interface: ports for TensorBoard and the dashboard, an aligned `make help`."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args: str) -> str:
    """What `make ARGS` would run (dry run), or prints for `help`."""
    out = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args],
                         capture_output=True, text=True, check=True)
    return out.stdout


def command_of(target: str, *args: str) -> str:
    return next(line for line in make("-n", target, *args).splitlines() if "--port" in line)


def test_tensorboard_and_dashboard_serve_on_the_port_given():
    assert command_of("tensorboard", "PORT=6123").split()[-2:] == ["--port", "6123"]
    assert "--port 6006" in command_of("tensorboard")  # TensorBoard's own default
    assert "--port 9001" in command_of("dashboard", "PORT=9001")
    assert "--port 8080" in command_of("dashboard")  # optuna-dashboard's own default
    assert "--host 0.0.0.0" in command_of("tensorboard", "HOST=0.0.0.0")


def test_make_help_lists_every_target_in_one_column():
    lines = [line for line in make("help").splitlines() if line.startswith("  make ")]
    targets = [line.split()[1] for line in lines]
    assert {"sweep", "tensorboard", "dashboard", "clean-studies"} <= set(targets)
    columns = {len(line) - len(line[len("  make "):].split(maxsplit=1)[1]) for line in lines}
    assert len(columns) == 1, "descriptions do not start in one column"
