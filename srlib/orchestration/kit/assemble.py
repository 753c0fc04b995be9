"""`srlib kit assemble` (here): the kit folder filled with what the GPU machine lacks (listed in kit/__init__), sized
against what one command may copy there, and the next session's commands."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...config import PAPER_SEEDS, VARIANTS, expand_variants
from ...provenance import now
from ...runs import ROOT
from ...store import atomic_write_bytes, sha256_file
from .dataset_pieces import STAGE_DIR
from .job import FRESH_WINDOW_S, log_line
from .layout import (
    ARCHIVE,
    CKPT_DIR,
    DIFF,
    KIT_SCHEMA,
    MANIFEST,
    MANIFEST_ROOM_BYTES,
    SEND_LIMIT_BYTES,
    KitError,
    sr_checkpoints,
)


def _git(*args: str, root: Path = ROOT) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KitError(f"git {' '.join(args)} failed ({exc}); the kit is assembled from a git checkout") from exc
    if done.returncode != 0:
        raise KitError(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}; "
                       "assemble the kit inside this project's git checkout")
    return done.stdout.decode(errors="replace")


def _bytes(path: Path) -> int:
    """A file's size, or a folder's files' total (0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


@dataclass(frozen=True)
class SizeCheck:
    repo_bytes: int
    kit_bytes: int

    @property
    def total(self) -> int:
        return self.repo_bytes + self.kit_bytes

    @property
    def margin(self) -> int:
        return SEND_LIMIT_BYTES - self.total

    def describe(self) -> str:
        mib = 2**20
        return (f"files copied: repository {self.repo_bytes / mib:.2f} MiB + kit {self.kit_bytes / mib:.2f} MiB = "
                f"{self.total / mib:.2f} MiB of {SEND_LIMIT_BYTES / mib:.0f} MiB; margin {self.margin / mib:.2f} MiB")


def _require_ignored(kit: Path, root: Path) -> None:
    kit = kit.resolve()
    if root.resolve() not in kit.parents:
        raise KitError(f"the kit folder {kit} is outside the repository {root}; each command copies the "
                       "repository and some of the kit's paths inside it to the GPU machine. Use a folder such as "
                       "kit/")
    relative = kit.relative_to(root.resolve())
    if subprocess.run(["git", "check-ignore", "-q", str(relative) + "/"], cwd=root).returncode != 0:
        raise KitError(f"{relative}/ is not git-ignored, so it would be copied twice (and could be committed); "
                       f"add /{relative}/ to .gitignore")


def _copy_if_changed(source: Path, target: Path) -> None:
    same_size = target.is_file() and target.stat().st_size == source.stat().st_size
    if same_size and sha256_file(target) == sha256_file(source):
        return
    with source.open("rb") as handle:
        atomic_write_bytes(target, lambda f: shutil.copyfileobj(handle, f))


def copy_weights(weights_dir: Path, checkpoints: list, target: Path) -> dict:
    """The registered SR checkpoints the variants need (e.g. dctlsa_x2.safetensors), checked by sha256."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = {c.file for c in checkpoints}
    for old in target.iterdir():
        if old.is_file() and old.name not in wanted:  # a scale or model not run this time: don't copy it
            old.unlink()
    copied = {}
    for entry in checkpoints:
        source = weights_dir / entry.file
        if not source.is_file():
            raise KitError(f"{source} is missing: the {entry.label} SR variants need it. Set SRLIB_WEIGHTS_DIR (or "
                           f"--weights-dir) to a folder holding {entry.file}")
        if sha256_file(source) != entry.sha256:
            raise KitError(f"{source} does not have the registered sha256 ({entry.sha256[:16]}...); restore it")
        _copy_if_changed(source, target / entry.file)
        copied[entry.file] = {"model": entry.model, "scale": entry.scale, "bytes": source.stat().st_size,
                              "sha256": entry.sha256}
    return copied


def fetch_wheel(target: Path, package: str = "spandrel", version: str | None = None,
                wheel: Path | None = None, python_version: str = "3.12") -> dict:
    """The pure-Python wheel of `package` (the installed version), cached in `target`."""
    version = version or importlib.metadata.version(package)
    target.mkdir(parents=True, exist_ok=True)
    prefix = f"{package.replace('-', '_')}-"
    for old in target.glob(f"{prefix}*.whl"):
        if not old.name.startswith(f"{prefix}{version}-"):
            old.unlink()  # two versions of one package would both be installed
    if wheel is not None:
        if not wheel.name.startswith(f"{prefix}{version}-") or wheel.suffix != ".whl":
            raise KitError(f"--wheel {wheel} is not a {package} {version} wheel ({prefix}{version}-*.whl)")
        _copy_if_changed(wheel, target / wheel.name)
    cached = sorted(target.glob(f"{prefix}{version}-*.whl"))
    if not cached:
        # Short network timeouts: offline, pip would otherwise retry for minutes before saying so.
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                   python_version, "--disable-pip-version-check", "-q", "--timeout", "15", "--retries", "1",
                   f"{package}=={version}", "-d", str(target)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            done = subprocess.CompletedProcess(command, 1, "", str(exc))
        cached = sorted(target.glob(f"{prefix}{version}-*.whl"))
        if done.returncode != 0 or not cached:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise KitError(f"could not download the {package} {version} wheel for Python {python_version} "
                           f"(pip: {why[-1] if why else 'no output'}). Fix: run `srlib kit assemble` where pip "
                           f"reaches its registry, or pass --wheel PATH to a {prefix}{version}-*.whl")
    path = cached[-1]
    return {"package": package, "version": version, "file": path.name, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def source_state(root: Path = ROOT) -> tuple[dict, str]:
    """(commit, dirty, untracked files) and the diff that turns the commit into this tree ("" when clean), as
    srlib.provenance sees them: what the records made from this tree will say."""
    from ...provenance import git_info

    info = git_info(root)
    if not info.get("commit"):
        raise KitError(f"{root} is not a git checkout with a commit (git rev-parse HEAD failed); assemble the kit "
                       "inside this project's git checkout")
    diff = info.get("_diff", "")
    untracked = [n for n in _git("ls-files", "-z", "--others", "--exclude-standard", root=root).split("\0") if n]
    return {"commit": info["commit"], "dirty": bool(diff), "untracked": untracked}, diff


def _copied_bytes(kit: Path, names: list[str]) -> int:
    return sum(_bytes(kit.parent / name) for name in names)


def repo_bytes(kit: Path, root: Path = ROOT) -> int:
    """What every command copies besides the kit's paths: tracked + untracked-not-ignored files (and shared/)."""
    kit = kit.resolve()
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", root=root).split("\0")
    files = {root / n for n in names if n and (root / n).is_file() and not (root / n).is_symlink()}
    if (root / "shared").is_dir():
        files |= {p for p in (root / "shared").rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in files if kit not in p.resolve().parents)


def window_commands(kit: Path, manifest: dict, probe_table: bool) -> list[dict]:
    """The commands of one session, in order: each data / checkpoint piece copied with a command of its own (the
    first also probes when no probe table is committed), then the training command with the kit's base and the
    last data piece. Each entry: purpose, copy (paths relative to the repository root), command."""
    name = kit.name
    base = [f"{name}/{MANIFEST}", f"{name}/weights", f"{name}/wheels", f"{name}/{DIFF}"]
    pieces = [p["index"] for p in manifest["data"]["stage"]["pieces"]]
    ckpt = [p["index"] for p in (manifest.get("partial") or {}).get("stage", {}).get("pieces", [])]
    commands = [{"purpose": f"data piece {i} of {len(pieces)}", "copy": [f"{name}/{STAGE_DIR}/{i}"]}
                for i in pieces[:-1]]
    commands += [{"purpose": f"checkpoint piece {i} of {len(ckpt)} ({manifest['partial']['run']})",
                  "copy": [f"{name}/{CKPT_DIR}/{i}"]} for i in ckpt]
    for i, step in enumerate(commands):
        step["command"] = "bash scripts/gpu_paper.sh probe" + ("" if i == 0 and not probe_table else " --no-probe")
        if i == 0 and not probe_table:
            step["purpose"] += " + the sharing probe (~90 s)"
    commands.append({"purpose": f"training (data piece {pieces[-1]} of {len(pieces)} and the kit's base)",
                     "copy": [*base, f"{name}/{STAGE_DIR}/{pieces[-1]}"],
                     "command": "bash scripts/gpu_paper.sh run --window-left-s <seconds left on the GPU machine>"})
    return commands


def check_size(kit: Path, root: Path = ROOT) -> SizeCheck:
    """Bytes of the largest command of the assembled kit (the repository plus that command's kit paths)."""
    if not (kit / MANIFEST).is_file():
        raise KitError(f"{kit / MANIFEST} is missing: run `srlib kit assemble` first")
    manifest = json.loads((kit / MANIFEST).read_text())
    commands = window_commands(kit, manifest, probe_table=True)
    return SizeCheck(repo_bytes(kit, root), max(_copied_bytes(kit, c["copy"]) for c in commands))


def assemble(kit: Path, parquet: Path, weights_dir: Path | None, variants: list[str], wheel: Path | None = None,
             root: Path = ROOT, check_location: bool = True, log: Callable[[str], None] = log_line,
             transport: str = "webp", results: Path | None = None, seeds: tuple[int, ...] = PAPER_SEEDS,
             piece_bytes: int | None = None) -> tuple[dict, SizeCheck]:
    """Fill `kit` with what the GPU machine lacks; returns the manifest and the size check of the largest command.
    The data goes in pieces (`kit/stage/N`) of at most what a command may copy beside the repository and the kit's
    base (`piece_bytes` overrides that, for tests); `results`: the records whose missing runs make the queue (default
    results/paper); `check_location=False` allows a kit outside the repository, to size one without sending it."""
    from ...store import write_json
    from .dataset_pieces import stage_dataset
    from .partial import stage_back
    from .schedule import queue

    variants = expand_variants(variants)
    kit = kit.resolve()
    results = results or root / "results" / "paper"
    if check_location:
        _require_ignored(kit, root)
    kit.mkdir(parents=True, exist_ok=True)
    checkpoints = sr_checkpoints(variants)
    if checkpoints and weights_dir is None:
        raise KitError("the SR variants need their weights: set SRLIB_WEIGHTS_DIR or pass --weights-dir")
    log(f"[kit] weights: {', '.join(c.file for c in checkpoints) or 'none'} from {weights_dir}")
    weights = copy_weights(weights_dir or kit, checkpoints, kit / "weights")
    log("[kit] wheels: spandrel")
    wheels = [fetch_wheel(kit / "wheels", wheel=wheel)]
    source, diff = source_state(root)
    (kit / DIFF).unlink(missing_ok=True)
    if diff:
        (kit / DIFF).write_text(diff)
    repo = repo_bytes(kit, root)
    base = _bytes(kit / "weights") + _bytes(kit / "wheels") + len(diff.encode()) + MANIFEST_ROOM_BYTES
    room = piece_bytes or SEND_LIMIT_BYTES - repo - base
    if piece_bytes is None and room < 4 * 2**20:
        raise KitError(f"only {room / 2**20:.1f} MiB per command are left for data next to the repository "
                       f"({repo / 2**20:.1f} MiB) and the kit's base ({base / 2**20:.1f} MiB); move large untracked "
                       "files out of the repository, or assemble fewer SR scales")
    data = stage_dataset(parquet, kit, room, transport, log)
    partial = stage_back(results / "partial", kit / CKPT_DIR, root, room)
    if partial:
        log(f"[kit] the unfinished run {partial['run']} goes back in {len(partial['stage']['pieces'])} piece(s)")
    wanted = queue(results, data["content_sha256"], seeds=seeds,
                   variants=tuple(v for v in VARIANTS if v in variants))
    manifest = {"schema": KIT_SCHEMA, "created": now(), "variants": variants,
                "source": {**source, "diff": DIFF if diff else None}, "data": data, "weights": weights,
                "wheels": wheels, "queue": [[k.variant, k.seed] for k in wanted], "partial": partial}
    write_json(kit / MANIFEST, manifest)
    size = check_size(kit, root)
    log(f"[kit] commit {source['commit'][:12]}{' + diff of the working tree' if diff else ''}; largest command: "
        f"{size.describe()}")
    if size.margin < 0:
        raise KitError(f"{size.describe()}: over what one command may copy. Run fewer SR scales (--variants), or "
                       "move large untracked files out of the repository")
    return manifest, size


def describe_window(kit: Path, manifest: dict, results: Path) -> list[str]:
    """The next session's commands (what to copy, what to run) and, from the committed probe table, its schedule."""
    from ...config import make_config
    from .probe import PROBE_FILE
    from .schedule import RunKey, RunNeed, SpeedTable, schedule_window

    probe_path = results / PROBE_FILE
    lines = ["next session on the GPU machine, command by command (each within 30 s of the last, so that the "
             "machine keeps what the earlier ones copied):"]
    for i, step in enumerate(window_commands(kit, manifest, probe_path.is_file()), start=1):
        size = _copied_bytes(kit, step["copy"]) + repo_bytes(kit)
        lines.append(f"  command {i}: {step['purpose']}; {size / 2**20:.1f} MiB")
        lines.append(f"    copy there, beside this repository's files: {' '.join(step['copy'])}")
        lines.append(f"    run there: {step['command']}")
    lines.append(f"  then bring back the files it wrote to its OUT folder ({ARCHIVE}, ckpt-* when a run spans "
                 f"sessions) and run here: srlib kit unpack {ARCHIVE} [--pieces ckpt-*]")
    queue = [RunKey(v, s) for v, s in manifest["queue"]]
    lines.append("queue: " + (", ".join(map(str, queue)) or "empty: every run is done"))
    if probe_path.is_file() and queue:
        table = SpeedTable.from_json(json.loads(probe_path.read_text())["rows"])
        epochs = make_config("original", "paper").epochs
        needs = [RunNeed.of(k, epochs, manifest["data"]["train_count"], manifest["data"]["test_count"]) for k in queue]
        schedule = schedule_window(needs, table, FRESH_WINDOW_S, FRESH_WINDOW_S)
        lines += [f"schedule for a fresh session (~{FRESH_WINDOW_S:.0f} s of compute, SR time not counted): {line}"
                  for line in schedule.describe()]
    elif queue:
        lines.append("schedule: made there from the probe's measurements (no probe table is committed yet)")
    return lines
