"""Where a result came from: code version, packages, machine."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "numpy", "spandrel", "safetensors", "pillow", "papermill")
DIFF_FILE = "code.diff"


def git_info(cwd: str | Path | None = None) -> dict:
    """Commit and dirtiness of the code; when dirty, the diff against the commit (`_diff`, not for the record).

    Without a git checkout (e.g. a copy sent to a GPU machine) SRLIB_SOURCE_COMMIT and SRLIB_SOURCE_DIFF (a file
    holding `git diff HEAD` made where the copy came from) stand in for it."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    top = _git(cwd, "rev-parse", "--show-toplevel")
    if top:  # paths (of new files) relative to the repository, wherever it was asked from
        cwd = Path(top.strip())
    commit = _git(cwd, "rev-parse", "HEAD")
    if commit is None and os.environ.get("SRLIB_SOURCE_COMMIT"):
        diff_file = os.environ.get("SRLIB_SOURCE_DIFF")
        diff = Path(diff_file).read_text() if diff_file and Path(diff_file).is_file() else ""
        return _with_diff({"commit": os.environ["SRLIB_SOURCE_COMMIT"], "dirty": bool(diff)}, diff)
    status = _git(cwd, "status", "--porcelain")
    info = {"commit": commit.strip() if commit else None, "dirty": bool(status.strip()) if status is not None else None}
    if not info["dirty"]:
        return info
    # New files are part of the code too: `git diff HEAD` alone would leave them out.
    untracked = (_git(cwd, "ls-files", "--others", "--exclude-standard", "-z") or "").split("\0")
    # an untracked file diffed against nothing: exit code 1 means "differs", which it always does
    new = [_git(cwd, "diff", "--no-index", "--binary", "--", "/dev/null", n, ok=(0, 1)) or "" for n in untracked if n]
    return _with_diff(info, (_git(cwd, "diff", "HEAD", "--binary") or "") + "".join(new))


def _git(cwd: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str | None:
    """git's output in `cwd`, or None when git is missing or fails (`ok`: the exit codes that are no failure)."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode in ok else None


def _with_diff(info: dict, diff: str) -> dict:
    if diff:
        info["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
        info["diff_file"] = DIFF_FILE
        info["_diff"] = diff
    return info


def save_code_diff(info: dict, directory: str | Path | None) -> dict:
    """Write a dirty tree's diff beside a result (so its code can be recovered; `None`: nowhere); return `info`
    fit for JSON."""
    from .store import atomic_write_bytes

    info = dict(info)
    diff = info.pop("_diff", None)
    if diff and directory is not None:
        atomic_write_bytes(Path(directory) / DIFF_FILE, lambda f: f.write(diff.encode()))
    return info


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def provenance(device: torch.device, directory: str | Path | None = None) -> dict:
    """Where a result came from; with `directory`, a dirty tree's diff is saved there as code.diff."""
    git = git_info()
    return {
        "git": save_code_diff(git, directory),
        "versions": versions(),
        "device": device_info(device),
        "host": platform.node(),
        "platform": platform.platform(),
        "argv": sys.argv,
    }
