"""What every run records about where it ran: git revision, library versions, device."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "lightning", "optuna", "optuna-integration", "tensorboard", "omegaconf",
            "rich", "matplotlib", "numpy")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.cache
def git_info() -> dict:
    rev = _git("rev-parse", "HEAD")
    # reports/ holds the lab's own output (committed results): a study writing its report
    # does not make the code of the next study's runs uncommitted.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports")
    return {"revision": rev or "unknown", "dirty": bool(status) if status is not None else None}


@functools.cache
def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict:
    import torch  # here, not at import: reading a study (report, export) needs no torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def parse_url(url: str):
    """A storage URL parsed by SQLAlchemy (`make_url`), or None when it does not parse. A
    password written with a bare '@' stays whole: a host never holds '@', so the credentials
    run to the last '@' before the host (SQLAlchemy alone would put the password's tail in
    the host, and every message naming the host would show it)."""
    if "://" not in url or url.startswith(("sqlite:", "journal:")):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if u.host and "@" in u.host:
        tail, host = u.host.rsplit("@", 1)
        u = (u.set(password=f"{u.password}@{tail}", host=host) if u.password is not None
             else u.set(username=f"{u.username}@{tail}", host=host))
    return u


def normalize_url(url: str) -> str:
    """The URL as SQLAlchemy writes it back (special characters of a password encoded), or
    unchanged when it names no server (SQLite, a journal file) or does not parse."""
    u = parse_url(url)
    return url if u is None or not u.host else u.render_as_string(hide_password=False)


def url_secrets(url: str) -> list[str]:
    """The passwords in a URL: its password and any ?password= query value."""
    u = parse_url(url)
    if u is None:
        return []
    found = [u.password] if u.password else []
    for k, v in u.query.items():
        if "password" in k.lower():
            found += [v] if isinstance(v, str) else list(v)
    return [x for x in found if x]


def redact_url(url: str) -> str:
    """The storage URL without its password (also as a ?password= query parameter)."""
    if "://" not in url or url.startswith(("sqlite:", "journal:")):
        return url
    u = parse_url(url)
    if u is None:
        return url.split("://", 1)[0] + "://***"
    u = u.set(query={k: v for k, v in u.query.items() if "password" not in k.lower()})
    return u.render_as_string(hide_password=True)


def scrub(text: str, url: str) -> str:
    """`text` (say a database driver's message about `url`) with the URL's passwords masked."""
    from urllib.parse import quote, quote_plus

    for secret in sorted(url_secrets(url), key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return text


def redact_argv(argv: list[str]) -> list[str]:
    """Command-line arguments with the password of any URL in them (storage=...) removed."""
    out = []
    for arg in argv:
        if "://" in arg:
            key, eq, value = arg.partition("=")
            if eq and "://" not in key:
                arg = f"{key}={redact_url(value)}"
            else:
                arg = redact_url(arg)
        out.append(arg)
    return out


def provenance() -> dict:
    return {
        "git": git_info(),
        "versions": versions(),
        "device": device_info(),
        "argv": redact_argv(sys.argv),
    }
