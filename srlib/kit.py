"""`srlib kit`: paper-scale runs on a borrowed GPU machine, prepared here, run there in a few calls.

The GPU machine (one H200, torch 2.11, Python 3.12, no network, no `../shared`) receives only this
repository's files (tracked + untracked-not-ignored) plus the paths a call carries, 64 MiB in all, hands
back at most 8 files of 16 MiB, and stays warm 30 s between calls. So:

- `srlib kit assemble` (here) fills a git-ignored folder (default `kit/`): the lossless data staged in
  pieces of one call each (srlib.kit_data, srlib.staging), the SR weights, the `spandrel` wheel, the commit
  and diff of this tree, the queue of runs `results/paper/` lacks on this data (srlib.gpu_plan), and a
  partial run's checkpoint to resume (srlib.partial); it prints the window's calls (carry lists, commands).
- `srlib kit probe` (there, an early call) checks the pieces that arrived and measures whether runs share
  the GPU (srlib.gpu_probe); `srlib kit run` (the last call) reassembles and hash-checks the data, plans the
  runs that end within the window's time left from measured speeds, runs them (`srlib train` processes,
  under MPS when measured faster and bit-identical) and packs records, predictions, sr-quality, the probe
  table and timings into one archive in `$OUT`; a run spanning windows ships its checkpoint (`kit ship N`).
- `srlib kit unpack ARCHIVE` (here) puts the records into `results/paper/`, from where
  `make report RECORDS=results/paper` builds the book without training.

`srlib kit run --dry-run` does the training call on a CPU with smoke-sized settings (tested in CI).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import VARIANTS
from .errors import PARTIAL_EXIT_CODE, ConfigError, SrlibError
from .gpu_plan import RUN_STARTUP_S
from .gpu_probe import BF16_PEAK_FLOPS

ROOT = Path(__file__).resolve().parent.parent
KIT_SCHEMA = 1
MANIFEST = "manifest.json"
DIFF = "source.diff"
ARCHIVE = "paper_results.tar.gz"
TIMING_LOG = "timing.log"
DEVICE_LIMIT_BYTES = 64 * 2**20  # the device tool's limit on the files sent per command
ARCHIVE_LIMIT_BYTES = 16 * 2**20  # the largest file that comes back from $OUT
# Device time the window needs after a command's training has stopped: files back and the next call's start.
RETURN_RESERVE_S = 30.0
# A resuming command's own cost: data reassembled and decoded, speeds re-checked, each run restarted (~20 s).
RESUME_COST_S = 50.0
MIN_COMMAND_S = 120.0  # less window than this after a command: no further command, partial runs ship checkpoints
# Compute time a fresh window offers (15 min minus the machine's start, the staging calls and the probe): an
# estimate from the first windows' logs; it only tells a run that waits for the next window from one that spans.
FRESH_WINDOW_S = 660.0
STAGE_CARRY = "stage"
CKPT_DIR = "ckpt"  # a shipped checkpoint's pieces staged back: kit/ckpt/<piece>
MANIFEST_ROOM_BYTES = 256 * 1024  # the manifest lists every chunk; room for it in the last call
SHIP_DIR = "ship"  # on the GPU machine: work/ship/<piece>, the checkpoint cut for the trip back
GOALS: dict[str, tuple[str, ...]] = {
    "A": ("original", "resize_x2", "sr_x2"),
    "B": ("resize_x4", "sr_x4"),
}
LOG_KEEP_BYTES = 256 * 1024  # tail of each training log that goes into the archive


class KitError(SrlibError):
    pass


def log_line(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- assemble (here)


def _git(*args: str, root: Path = ROOT, check: bool = True) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KitError(f"git {' '.join(args)} failed ({exc}); the kit is assembled from a git checkout") from exc
    if check and done.returncode != 0:
        raise KitError(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}; "
                       "assemble the kit inside this project's git checkout")
    return done.stdout.decode(errors="replace")


def sent_files(root: Path = ROOT) -> list[Path]:
    """The files the device tool sends besides carried paths: tracked + untracked-not-ignored, and shared/."""
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", root=root).split("\0")
    files = {root / n for n in names if n and (root / n).is_file() and not (root / n).is_symlink()}
    shared = root / "shared"
    if shared.is_dir():
        files |= {p for p in shared.rglob("*") if p.is_file()}
    return sorted(files)


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@dataclass(frozen=True)
class SizeCheck:
    repo_bytes: int
    kit_bytes: int
    limit_bytes: int = DEVICE_LIMIT_BYTES

    @property
    def total(self) -> int:
        return self.repo_bytes + self.kit_bytes

    @property
    def margin(self) -> int:
        return self.limit_bytes - self.total

    def describe(self) -> str:
        mib = 2**20
        return (f"files sent: repository {self.repo_bytes / mib:.2f} MiB + kit {self.kit_bytes / mib:.2f} MiB = "
                f"{self.total / mib:.2f} MiB of {self.limit_bytes / mib:.0f} MiB; margin {self.margin / mib:.2f} MiB")


def _require_ignored(kit: Path, root: Path) -> None:
    kit = kit.resolve()
    if root.resolve() not in kit.parents:
        raise KitError(f"the kit folder {kit} is outside the repository {root}; the device tool only sends the "
                       "repository and the paths its `carry` names inside it. Use a folder such as kit/")
    relative = kit.relative_to(root.resolve())
    if subprocess.run(["git", "check-ignore", "-q", str(relative) + "/"], cwd=root).returncode != 0:
        raise KitError(f"{relative}/ is not git-ignored, so it would be sent twice (and could be committed); "
                       f"add /{relative}/ to .gitignore")


def sr_scales(variants: Iterable[str]) -> list[int]:
    """Scales of the default-model (DCTLSA) SR variants: what `srlib sr-quality` measures."""
    return sorted({VARIANTS[v].scale for v in variants if VARIANTS[v].method == "sr"})


def is_sr(variant: str) -> bool:
    method = VARIANTS[variant].method
    return method == "sr" or method.startswith("sr@")


def sr_checkpoints(variants: Iterable[str]) -> list:
    """The registered SR checkpoints (srlib.upscale.SRCheckpoint) the SR variants among `variants` need."""
    from .upscale import DEFAULT_SR_MODEL, sr_checkpoint

    entries = {}
    for v in variants:
        if is_sr(v):
            method = VARIANTS[v].method
            entry = sr_checkpoint(method.split("@", 1)[1] if "@" in method else DEFAULT_SR_MODEL, VARIANTS[v].scale)
            entries[entry.file] = entry
    return sorted(entries.values(), key=lambda e: (e.scale, e.model))


def _check_variants(variants: Iterable[str]) -> list[str]:
    variants = list(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"unknown or no variant(s) {unknown}; choose from {', '.join(VARIANTS)} "
                          f"or a goal ({', '.join(GOALS)})")
    return variants


def expand(names: Iterable[str]) -> list[str]:
    """Variant names, with goals (A, B) and variant sets (srlib.config.VARIANT_SETS) expanded, in order, once."""
    from .config import expand_variants

    out: list[str] = []
    for name in names:
        out += GOALS[name] if name in GOALS else expand_variants(name)
    return _check_variants(out)


def _sha256(path: Path) -> str:
    from .store import sha256_file

    return sha256_file(path)


def _copy_if_changed(source: Path, target: Path) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size and _sha256(target) == _sha256(source):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def copy_weights(weights_dir: Path, checkpoints: list, target: Path) -> dict:
    """The registered SR checkpoints the variants need (e.g. dctlsa_x2.safetensors), checked by sha256."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = {c.file for c in checkpoints}
    for old in target.iterdir():
        if old.is_file() and old.name not in wanted:  # a scale or model not run this time: don't send it
            old.unlink()
    copied = {}
    for entry in checkpoints:
        source = weights_dir / entry.file
        if not source.is_file():
            raise KitError(f"{source} is missing: the {entry.label} SR variants need it. Set SRLIB_WEIGHTS_DIR (or "
                           f"--weights-dir) to a folder holding {entry.file}")
        if _sha256(source) != entry.sha256:
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
            "sha256": _sha256(path)}


def source_state(root: Path = ROOT) -> tuple[dict, str]:
    """(commit, dirty, untracked files) and the diff that turns the commit into this tree ("" when clean)."""
    commit = _git("rev-parse", "HEAD", root=root).strip()
    tracked = _git("diff", "HEAD", "--binary", root=root)
    untracked = [n for n in _git("ls-files", "-z", "--others", "--exclude-standard", root=root).split("\0") if n]
    parts = [tracked]
    for name in untracked:  # git diff --no-index exits 1 when the files differ, which they always do here
        parts.append(_git("diff", "--no-index", "--binary", "/dev/null", name, root=root, check=False))
    diff = "".join(parts)
    return {"commit": commit, "dirty": bool(diff), "untracked": untracked}, diff


def _carried_bytes(kit: Path, names: list[str]) -> int:
    total = 0
    for name in names:
        path = kit.parent / name
        total += path.stat().st_size if path.is_file() else _tree_bytes(path)
    return total


def repo_bytes(kit: Path, root: Path = ROOT) -> int:
    """What every call sends besides its carried paths: tracked + untracked-not-ignored files (and shared/)."""
    kit = kit.resolve()
    return sum(p.stat().st_size for p in sent_files(root) if kit not in p.resolve().parents)


def window_calls(kit: Path, manifest: dict, probe_table: bool) -> list[dict]:
    """The device calls of one window, in order: each data / checkpoint piece in a call of its own (the first also
    probes when no probe table is committed), then the training call with the kit's base and the last data piece.
    Each entry: purpose, carry (paths relative to the repository root), command."""
    name = kit.name
    base = [f"{name}/{MANIFEST}", f"{name}/weights", f"{name}/wheels", f"{name}/{DIFF}"]
    pieces = [p["index"] for p in manifest["data"]["stage"]["pieces"]]
    ckpt = [p["index"] for p in (manifest.get("partial") or {}).get("stage", {}).get("pieces", [])]
    calls = [{"purpose": f"data piece {i} of {len(pieces)}", "carry": [f"{name}/{STAGE_CARRY}/{i}"]}
             for i in pieces[:-1]]
    calls += [{"purpose": f"checkpoint piece {i} of {len(ckpt)} ({manifest['partial']['run']})",
               "carry": [f"{name}/{CKPT_DIR}/{i}"]} for i in ckpt]
    for i, call in enumerate(calls):
        call["command"] = "bash scripts/gpu_paper.sh probe" + ("" if i == 0 and not probe_table else " --no-probe")
        if i == 0 and not probe_table:
            call["purpose"] += " + the sharing probe (~90 s)"
    calls.append({"purpose": f"training (data piece {pieces[-1]} of {len(pieces)} and the kit's base)",
                  "carry": [*base, f"{name}/{STAGE_CARRY}/{pieces[-1]}"],
                  "command": "bash scripts/gpu_paper.sh run --window-left-s <device seconds left (status)>"})
    return calls


def check_size(kit: Path, root: Path = ROOT) -> SizeCheck:
    """Bytes of the largest device call of the assembled kit (the repository plus that call's carried paths)."""
    if not (kit / MANIFEST).is_file():
        raise KitError(f"{kit / MANIFEST} is missing: run `srlib kit assemble` first")
    manifest = json.loads((kit / MANIFEST).read_text())
    calls = window_calls(kit, manifest, probe_table=True)
    return SizeCheck(repo_bytes(kit, root), max(_carried_bytes(kit, c["carry"]) for c in calls))


def assemble(kit: Path, parquet: Path, weights_dir: Path | None, variants: list[str], wheel: Path | None = None,
             root: Path = ROOT, check_location: bool = True, log: Callable[[str], None] = log_line,
             transport: str = "webp", results: Path | None = None, seeds: tuple[int, ...] = (0, 1, 2),
             piece_bytes: int | None = None) -> tuple[dict, SizeCheck]:
    """Fill `kit` with what the GPU machine lacks; returns the manifest and the size check of the largest call.

    The data is staged in pieces (`kit/stage/N`) of at most what a call can carry next to the repository and
    the kit's base (`piece_bytes` overrides that, for tests). `results`: the records folder whose missing runs
    make the queue (default results/paper). `check_location=False` allows a kit outside the repository, to
    size one without sending it."""
    from .gpu_plan import queue
    from .kit_data import stage_dataset
    from .partial import stage_back
    from .store import write_json

    variants = _check_variants(variants)
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
    base = _tree_bytes(kit / "weights") + _tree_bytes(kit / "wheels") + len(diff.encode()) + MANIFEST_ROOM_BYTES
    room = piece_bytes or DEVICE_LIMIT_BYTES - repo - base
    if piece_bytes is None and room < 4 * 2**20:
        raise KitError(f"only {room / 2**20:.1f} MiB per call are left for data next to the repository "
                       f"({repo / 2**20:.1f} MiB) and the kit's base ({base / 2**20:.1f} MiB); move large untracked "
                       "files out of the repository, or assemble fewer SR scales")
    data = stage_dataset(parquet, kit, room, transport, log)
    partial = stage_back(results / "partial", kit / CKPT_DIR, root, room)
    if partial:
        log(f"[kit] the unfinished run {partial['run']} goes back in {len(partial['stage']['pieces'])} piece(s)")
    wanted = queue(results, data["content_sha256"], seeds=seeds,
                   variants=tuple(v for v in VARIANTS if v in variants))
    manifest = {"schema": KIT_SCHEMA, "created": _now(), "variants": variants,
                "source": {**source, "diff": DIFF if diff else None}, "data": data, "weights": weights,
                "wheels": wheels, "queue": [[k.variant, k.seed] for k in wanted], "partial": partial}
    write_json(kit / MANIFEST, manifest)
    size = check_size(kit, root)
    log(f"[kit] commit {source['commit'][:12]}{' + diff of the working tree' if diff else ''}; largest call: "
        f"{size.describe()}")
    if size.margin < 0:
        raise KitError(f"{size.describe()}: over the device tool's limit. Run fewer SR scales (--variants), or "
                       "move large untracked files out of the repository")
    return manifest, size


def describe_window(kit: Path, manifest: dict, results: Path) -> list[str]:
    """What the next window runs: its calls (carry, command) and, from the committed probe table, the plan."""
    from .gpu_plan import RunKey, RunNeed, SpeedTable, plan_window
    from .gpu_probe import PROBE_FILE

    probe_path = results / PROBE_FILE
    lines = ["next window, call by call (each within 30 s of the last: the machine stays warm that long):"]
    for i, call in enumerate(window_calls(kit, manifest, probe_path.is_file()), start=1):
        size = _carried_bytes(kit, call["carry"]) + repo_bytes(kit)
        lines.append(f"  call {i}: {call['purpose']}; {size / 2**20:.1f} MiB sent")
        lines.append(f"    carry {json.dumps(call['carry'])}")
        lines.append(f"    command: {call['command']}")
    lines.append("  then here: srlib kit unpack <files_at>/paper_results.tar.gz [--pieces <files_at>/ckpt-*]")
    queue = [RunKey(v, s) for v, s in manifest["queue"]]
    lines.append("queue: " + (", ".join(map(str, queue)) or "empty: every run is done"))
    if probe_path.is_file() and queue:
        table = SpeedTable.from_json(json.loads(probe_path.read_text())["rows"])
        needs = [RunNeed.of(k, 45, manifest["data"]["train_count"], manifest["data"]["test_count"]) for k in queue]
        plan = plan_window(needs, table, FRESH_WINDOW_S, FRESH_WINDOW_S)
        lines += [f"plan for a fresh window (~{FRESH_WINDOW_S:.0f} s of compute, SR time not counted): {line}"
                  for line in plan.describe()]
    elif queue:
        lines.append("plan: made there from the probe's measurements (no probe table is committed yet)")
    return lines


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- run (there): settings, probe, plan


@dataclass(frozen=True)
class Settings:
    """What differs between the real run and the CPU dry run."""

    profile: str
    device: str
    overrides: dict  # TrainConfig overrides passed to every run
    probe_steps: int
    sr_probe_images: int
    sr_quality_images: int

    def train_options(self) -> list[str]:
        options = []
        for key, value in self.overrides.items():
            options += [f"--{key.replace('_', '-')}", str(value)]
        return options


PAPER = Settings("paper", "cuda", {}, probe_steps=30, sr_probe_images=1024, sr_quality_images=1000)
DRY_RUN = Settings("smoke", "cpu", dict(epochs=1, width=4, train_size=20, test_size=10), probe_steps=2,
                   sr_probe_images=2, sr_quality_images=10)


def run_config(settings: Settings, train_args: list[str]):
    """The TrainConfig the `srlib train` processes will get (profile, overrides, then `--train-args`)."""
    from .cli import build_parser, config_overrides
    from .config import make_config

    try:
        args = build_parser().parse_args(["train", "--variant", "original", "--profile", settings.profile,
                                          *settings.train_options(), *train_args])
    except SystemExit as exc:  # argparse has printed what is wrong
        raise KitError(f"--train-args {shlex.join(train_args)!r} are not valid `srlib train` options") from exc
    return make_config("original", settings.profile, 0, **config_overrides(args))


def check_graphs(config, device, log: Callable[[str], None], steps: int = 12) -> dict:
    """The same steps eagerly and as CUDA graphs, from the same start: do the weights agree afterwards?"""
    from dataclasses import replace

    import torch

    from .gpu_probe import ProbeRun
    from .numerics import deterministic_algorithms, resolve_numerics

    numerics = resolve_numerics(config, device)
    result: dict = {"steps": steps}
    try:
        with deterministic_algorithms(config.deterministic):
            finals = []
            for graphed in (False, True):
                run = ProbeRun(32, config, device, replace(numerics, cuda_graphs=graphed))
                for i in range(steps):
                    run.step(i)
                finals.append(torch.cat([p.detach().float().flatten() for p in run.model.state_dict().values()
                                         if p.is_floating_point()]))
        diff = (finals[0] - finals[1]).abs().max().item()
        scale = finals[0].abs().max().item()
        result.update(max_abs_diff=diff, max_abs_weight=scale, identical=bool(torch.equal(*finals)),
                      ok=bool(torch.isfinite(finals[1]).all()) and diff <= 1e-3 * max(scale, 1.0))
    except Exception as exc:  # noqa: BLE001 - any failure means: train eagerly
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    log(f"[kit] CUDA graph check ({steps} steps, graph vs eager): "
        + (f"max |diff| {result['max_abs_diff']:.3g} of weights up to {result['max_abs_weight']:.3g}, "
           f"{'bit-identical' if result['identical'] else 'not bit-identical'}; "
           if "max_abs_diff" in result else result.get("error", "") + "; ")
        + ("graphs used" if result["ok"] else "training eagerly"))
    return result


def upscaler_key(variant: str) -> str:
    v = VARIANTS[variant]
    return f"{v.method} x{v.scale}"


def probe_upscaling(variants: list[str], images, settings: Settings, device,
                    log: Callable[[str], None]) -> dict[str, float]:
    """Images/s of each SR upscaler the variants use (srlib.upscale, as training calls it), by upscaler_key."""
    from .upscale import build_upscaler, upscale

    speeds = {}
    batch = images[:settings.sr_probe_images]
    for variant in variants:
        key = upscaler_key(variant)
        if not is_sr(variant) or key in speeds:
            continue
        upscaler = build_upscaler(VARIANTS[variant].method, VARIANTS[variant].scale, device=device)
        upscale(batch[:upscaler.chunk_size], upscaler, progress=False)  # warm-up: weights, kernels
        seconds = _timed(lambda u=upscaler: upscale(batch, u, progress=False), device)
        speeds[key] = len(batch) / seconds
        log(f"[kit] probe {key}: {speeds[key]:9.1f} img/s ({len(batch)} images of 32 px)")
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    return speeds


def _timed(fn: Callable[[], object], device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


# ---------------------------------------------------------------- run (there): install, launch, pack


def install_wheels(kit: Path, site: Path, log: Callable[[str], None]) -> list[str]:
    """pip-install the kit's wheels whose exact version is not importable here into `site`; their names."""
    wanted = []
    for wheel in sorted((kit / "wheels").glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != version:
            wanted.append(wheel)
    if not wanted:
        return []
    site.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
               "--disable-pip-version-check", "--target", str(site), *map(str, wanted)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise KitError(f"installing {', '.join(w.name for w in wanted)} failed: {done.stderr.strip()[-500:]}")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    log(f"[kit] installed {', '.join(w.name for w in wanted)} into {site}")
    return [w.name for w in wanted]


@dataclass
class Launched:
    variant: str
    process: subprocess.Popen
    log: Path
    started: float
    ended: float | None = None
    seed: int = 0


def _deadline_text(deadline: float) -> str:
    return dt.datetime.fromtimestamp(deadline, tz=dt.timezone.utc).isoformat()


def _record_of(runs: Path, profile: str, variant: str, seed: int = 0) -> dict | None:
    from .runs import load_record

    return load_record(runs, profile, variant, seed)


def _epochs_left(runs: Path, settings: Settings, key, epochs: int) -> int:
    record = _record_of(runs, settings.profile, key.variant, key.seed)
    if record is None:
        return epochs
    if record.get("status") == "complete":
        return 0
    return max(0, epochs - len(record.get("epochs", [])))


@dataclass
class KitRun:
    kit: Path
    out: Path
    work: Path
    settings: Settings
    variants: list[str]
    started: float
    deadline: float  # when training must have stopped in this command (the end minus the packing reserve)
    end: float
    log: Callable[[str], None]
    timing: dict = field(default_factory=dict)
    window_ends: bool = False  # the window has no time for another command: partial runs ship their checkpoint

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    def left(self) -> float:
        return self.deadline - time.time()


def run_kit(kit: Path, out: Path, variants: list[str] | None = None, budget_s: float = 560.0,
            pack_reserve_s: float = 40.0, dry_run: bool = False, work: Path | None = None,
            start_all: bool = False, train_args: list[str] | None = None, probe_steps: int | None = None,
            window_left_s: float | None = None, log: Callable[[str], None] = log_line) -> int:
    """The whole GPU-side job; returns 0 (all started runs complete), PARTIAL_EXIT_CODE or 1 (a failure).

    `window_left_s`: the device time left in this window when the command starts (the device tool's status); runs
    are planned to end within it, and this command trains until the earlier of its own budget and the window."""
    started = time.time()
    kit = kit.resolve()
    manifest_path = kit / MANIFEST
    if not manifest_path.is_file():
        raise KitError(f"{manifest_path} is missing: run `srlib kit assemble` on the prepared machine first and "
                       "send the kit's last call along (device tool: the carry list `assemble` printed)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("schema") != KIT_SCHEMA:
        raise KitError(f"{manifest_path} is from another srlib (schema {manifest.get('schema')}); assemble it again")
    settings = DRY_RUN if dry_run else PAPER
    if probe_steps:
        settings = Settings(**{**asdict(settings), "probe_steps": probe_steps})
    variants = _check_variants(variants or manifest["variants"])
    missing = [c.file for c in sr_checkpoints(variants) if c.file not in manifest["weights"]]
    if missing:
        raise KitError(f"the kit holds no SR weights for {', '.join(missing)}; assemble it with these variants")
    window = window_left_s if window_left_s is not None else budget_s
    end = started + min(budget_s, max(0.0, window - RETURN_RESERVE_S))
    work = (work or Path(tempfile.gettempdir()) / "srlib-kit").resolve()  # fixed: a rerun resumes from it
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(message: str) -> None:
        lines.append(f"[{time.time() - started:6.1f}s] {message}")
        log(message)

    state = KitRun(kit, out, work, settings, variants, started, end - pack_reserve_s, end, say,
                   {"schema": KIT_SCHEMA, "started": _now(), "dry_run": dry_run, "variants": variants,
                    "budget_s": budget_s, "window_left_s": window_left_s, "pack_reserve_s": pack_reserve_s,
                    "kit": manifest["source"], "data": {k: v for k, v in manifest["data"].items() if k != "stage"}},
                   window_ends=window - (end - started) < MIN_COMMAND_S)
    code = 1
    try:
        with _restored_environment():
            code = _run(state, manifest, start_all, train_args or [], window)
    except BaseException as exc:  # the archive's timing log says why the job ended early, then it goes on up
        say(f"[kit] stopped by {type(exc).__name__}: {exc}")
        raise
    finally:
        state.timing["wall_s"] = time.time() - started
        state.timing["exit_code"] = code
        pack(state, lines)
    return code


@contextlib.contextmanager
def _restored_environment() -> Iterator[None]:
    """The job points SRLIB_* at the kit and puts the wheels' site folder on sys.path; a caller in the same
    process (a test) gets its own settings back."""
    environ, path = dict(os.environ), list(sys.path)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path


def _environment(state: KitRun, site: Path) -> dict:
    env = dict(os.environ)
    paths = [str(site), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["SRLIB_WEIGHTS_DIR"] = str(state.kit / "weights")
    env.setdefault("SRLIB_CACHE_DIR", str(state.work / "cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _queue(manifest: dict, variants: list[str]):
    from .gpu_plan import RunKey

    keys = [RunKey(v, s) for v, s in manifest.get("queue") or [(v, 0) for v in manifest["variants"]]]
    return [k for k in keys if k.variant in variants]


def _run(state: KitRun, manifest: dict, start_all: bool, train_args: list[str], window_s: float) -> int:
    say, settings = state.log, state.settings
    config = run_config(settings, train_args)  # bad --train-args stop the job here, before any work
    state.work.mkdir(parents=True, exist_ok=True)
    installed = install_wheels(state.kit, state.work / "site", say)
    env = _environment(state, state.work / "site")
    # The data keeps its name (records and pages name a dataset by name and content hash, not by this path)
    env["SRLIB_DATA"] = str(state.work / "data" / manifest["data"]["name"])
    os.environ.update({k: env[k] for k in ("SRLIB_DATA", "SRLIB_WEIGHTS_DIR", "SRLIB_CACHE_DIR")})
    import torch

    from .data import load_dataset, stratified_subset
    from .gpu_plan import RunNeed, plan_window
    from .kit_data import unstage
    from .numerics import resolve_device
    from .partial import restore

    if settings.device == "cuda" and not torch.cuda.is_available():
        raise KitError("torch sees no CUDA GPU; `srlib kit run` is for the GPU machine (use --dry-run on a CPU)")
    device = resolve_device(settings.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    say(f"[kit] {gpu or 'CPU (dry run)'}; torch {torch.__version__}; {os.cpu_count()} cores; variants "
        f"{', '.join(state.variants)}; training must stop by +{state.deadline - state.started:.0f}s "
        f"(window: {window_s:.0f} s left at the start)")
    t0 = time.perf_counter()
    unstage(state.kit, manifest["data"], Path(env["SRLIB_DATA"]), Path(env["SRLIB_CACHE_DIR"]))
    dataset = load_dataset(env["SRLIB_DATA"], cache_dir=env["SRLIB_CACHE_DIR"])  # decoded once, cached for all runs
    decode_s = time.perf_counter() - t0
    if (state.kit / CKPT_DIR / "1").is_dir():  # a run that spans windows: its checkpoint, staged back
        say(f"[kit] checkpoint staged back and verified: {restore(state.kit / CKPT_DIR, state.runs)}")
    n_train = len(stratified_subset(dataset.train_y, config.train_size))
    n_test = len(stratified_subset(dataset.test_y, config.test_size))
    say(f"[kit] data: {manifest['data']['name']} via {manifest['data']['transport']}, {n_train:,} / {n_test:,} "
        f"images (reassembled and decoded in {decode_s:.1f}s), content sha256 "
        f"{dataset.identity['content_sha256'][:16]}... verified")

    keys = _queue(manifest, state.variants)
    px_list = sorted({32 * VARIANTS[k.variant].scale for k in keys})
    table, probe_table = speed_table(state, config, device, px_list)
    graph_check = check_graphs(config, device, say) if device.type == "cuda" and config.cuda_graphs else None
    if graph_check is not None and not graph_check["ok"]:
        train_args = [*train_args, "--no-cuda-graphs"]
    sr_speed = probe_upscaling(sorted({k.variant for k in keys}), dataset.test_x, settings, device, say)
    needs = []
    for key in keys:
        left = _epochs_left(state.runs, settings, key, config.epochs)
        upscale_s = (n_train + n_test) / sr_speed[upscaler_key(key.variant)] if is_sr(key.variant) else 0.0
        if left:
            needs.append(RunNeed.of(key, left, n_train, n_test, upscale_s))
    # Runs end within this command when no further command fits the window; otherwise within the window, and the
    # next command (the same one, on the warm machine) resumes what this one stopped at its deadline.
    seconds = state.left() if state.window_ends else (
        window_s - RETURN_RESERVE_S - (state.end - state.deadline) - (time.time() - state.started)
        - RESUME_COST_S)
    plan = plan_window(needs, table, seconds, FRESH_WINDOW_S)
    if start_all:
        plan.runs += [n.key for n in needs if n.key not in plan.runs and n.key != plan.span]
    for line in plan.describe():
        say(f"[kit] plan: {line}")
    state.timing.update({
        "device": gpu or "cpu", "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "installed_wheels": installed, "decode_seconds": decode_s, "train_images": n_train, "test_images": n_test,
        "dataset_sha256": dataset.identity.get("content_sha256"), "probe_table": probe_table is not None,
        "speeds": [asdict(r) for r in table.rows], "sr_probe_images_per_s": sr_speed, "graph_check": graph_check,
        "bf16_peak_flops": BF16_PEAK_FLOPS, "plan": {"mode": plan.mode, "slots": plan.slots,
                                                      "runs": [str(k) for k in plan.runs],
                                                      "span": str(plan.span) if plan.span else None,
                                                      "numerics": plan.numerics, "estimated_s": plan.estimated_s,
                                                      "skipped": plan.skipped, "seconds": seconds},
    })
    if probe_table is not None:
        from .gpu_probe import PROBE_FILE, write_table

        write_table(probe_table, state.work / PROBE_FILE)
    del dataset
    launched = run_plan(state, plan, env, train_args)
    return _report(state, launched, [n.key for n in needs])


def speed_table(state: KitRun, config, device, px_list: list[int]):
    """(SpeedTable for the plan, the probe table when one was measured in this window). On the GPU: this window's
    probe (`srlib kit probe` in an earlier call), else the committed one re-checked at one size, else a probe now.
    Dry run: each size timed alone on the CPU."""
    from dataclasses import replace

    from .gpu_plan import Speed, SpeedTable
    from .gpu_probe import PROBE_FILE, probe, recheck, table_lines, time_in_process

    if device.type != "cuda":
        rows = [Speed("alone", px, 1, time_in_process(px, 1, config, device, state.settings.probe_steps)[0])
                for px in px_list]
        for r in rows:
            state.log(f"[kit] probe alone {r.px:>3} px: {r.images_per_s:9.1f} img/s (CPU dry run)")
        return SpeedTable(rows), None
    here, committed = state.work / PROBE_FILE, ROOT / "results" / "paper" / PROBE_FILE
    if here.is_file():
        table = json.loads(here.read_text())
        state.log(f"[kit] speeds: this window's probe ({here})")
        fresh = table
    elif committed.is_file():
        table = json.loads(committed.read_text())
        ratio = recheck(table, config, max(px_list), log=state.log)
        table = {**table, "rows": [{**r, "images_per_s": r["images_per_s"] * ratio} for r in table["rows"]]}
        fresh = None
    else:
        state.log("[kit] no probe table yet: probing now (up to ~90 s)")
        table = fresh = probe(config, log=state.log)
    for line in table_lines(table):
        state.log(f"[kit] speeds {line}")
    speeds = SpeedTable.from_json(table["rows"])
    return SpeedTable([replace(r) for r in speeds.rows]), fresh


def _launch_one(state: KitRun, key, env: dict, train_args: list[str], threads: str) -> Launched:
    logs = state.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "srlib", "train", "--variant", key.variant, "--profile", state.settings.profile,
               "--seed", str(key.seed), "--out", str(state.runs), "--device", state.settings.device,
               "--deadline", _deadline_text(state.deadline), *state.settings.train_options(), *train_args]
    path = logs / f"train_{key.variant}_seed{key.seed}.log"
    with path.open("a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=ROOT, env={**env, "OMP_NUM_THREADS": threads}, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    options = f", {shlex.join(train_args)}" if train_args else ""
    state.log(f"[kit] started {key} (pid {process.pid}, log {path.name}{options})")
    return Launched(key.variant, process, path, time.time(), seed=key.seed)


def run_plan(state: KitRun, plan, env: dict, train_args: list[str]) -> list[Launched]:
    """Start the plan's runs, at most `plan.slots` at a time (under MPS when the plan says so), and wait for all."""
    from .gpu_probe import find_mps_control, mps_daemon

    pending = [*plan.runs, *([plan.span] if plan.span else [])]
    binary = find_mps_control() if plan.mode == "mps" else None
    if plan.mode == "mps" and binary is None:
        state.log("[kit] the plan wanted MPS but nvidia-cuda-mps-control is gone: running the runs one at a time")
        plan.slots = 1
    threads = str(max(1, (os.cpu_count() or 2) // max(1, plan.slots)))
    with mps_daemon(binary) if binary else contextlib.nullcontext(env) as run_env:
        run_env = {**env, **{k: v for k, v in run_env.items() if k.startswith("CUDA_MPS")}}
        launched: list[Launched] = []
        quality = _sr_quality(state, [k.variant for k in pending], env)
        extra = [quality] if quality else []

        def start_next() -> None:
            while pending and sum(x.ended is None for x in launched) < plan.slots:
                if state.left() < RUN_STARTUP_S:
                    state.log(f"[kit] not started, too close to the deadline: {', '.join(map(str, pending))}")
                    pending.clear()
                    return
                key = pending.pop(0)
                launched.append(_launch_one(state, key, run_env, [*train_args, *plan.train_args(key)], threads))

        start_next()
        wait(state, launched, extra, start_next)
    return launched + extra


def _sr_quality(state: KitRun, chosen: list[str], env: dict) -> Launched | None:
    """PSNR/SSIM of SR vs bicubic for the SR scales being trained, in a subprocess beside the runs."""
    scales = sr_scales(chosen)
    if not scales or (state.runs / state.settings.profile / "sr_quality.json").is_file():
        return None
    target = state.runs / state.settings.profile / "sr_quality.json"
    from .upscale import DEFAULT_SR_MODEL

    # The default model only: the kit holds the weights of the scales and models being trained, no others.
    command = [sys.executable, "-m", "srlib", "sr-quality", "--scales", *map(str, scales), "--models",
               DEFAULT_SR_MODEL, "--n", str(state.settings.sr_quality_images), "--out", str(target)]
    (state.work / "logs").mkdir(parents=True, exist_ok=True)
    path = state.work / "logs" / "sr_quality.log"
    with path.open("a") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "2"}, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    state.log(f"[kit] started sr-quality x{', x'.join(map(str, scales))} (pid {process.pid})")
    return Launched("sr_quality", process, path, time.time())


def wait(state: KitRun, launched: list[Launched], extra: list[Launched], start_next: Callable[[], None],
         grace_s: float = 10.0) -> None:
    """Wait for every process, starting queued runs as slots free up; past the packing reserve's start,
    interrupt (then kill) what still runs.

    `srlib train` stops by itself before its deadline; the interrupt is for an epoch that ran long. An
    interrupted run keeps its checkpoint of the finished epochs, so a rerun resumes it."""
    hard_stop = state.deadline + max(0.0, (state.end - state.deadline) / 2 - grace_s)
    interrupted: dict[int, float] = {}
    while any(item.ended is None for item in launched + extra):
        for item in launched + extra:
            if item.ended is None and item.process.poll() is not None:
                item.ended = time.time()
                state.log(f"[kit] {item.variant} seed {item.seed} ended with exit code {item.process.returncode} "
                          f"after {item.ended - item.started:.0f} s")
                start_next()
        now = time.time()
        for item in launched + extra:
            if item.ended is not None:
                continue
            pid = item.process.pid
            if now >= hard_stop and pid not in interrupted:
                state.log(f"[kit] {item.variant} still running at the packing deadline: interrupting it")
                _signal(item.process, signal.SIGINT)
                interrupted[pid] = now
            elif pid in interrupted and now - interrupted[pid] > grace_s:
                _signal(item.process, signal.SIGKILL)
        time.sleep(0.5)


def _signal(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # its own session: the run and anything it started


def _report(state: KitRun, launched: list[Launched], keys: list) -> int:
    """Per-run outcome and speed into the timing log; the exit code of the whole job."""
    from .flops import train_flops_per_image

    rows, code = {}, 0
    quality = next((x for x in launched if x.variant == "sr_quality"), None)
    for key in keys:
        record = _record_of(state.runs, state.settings.profile, key.variant, key.seed)
        item = next((x for x in launched if x.variant == key.variant and x.seed == key.seed), None)
        row = {"started": item is not None, "exit_code": item.process.returncode if item else None,
               "wall_s": (item.ended - item.started) if item and item.ended else None}
        if record is not None:
            epochs = record.get("epochs", [])
            width, px = record["config"]["width"], record.get("input_px", 32 * VARIANTS[key.variant].scale)
            img_s = [e["train_images_per_s"] for e in epochs]
            mean_img_s = sum(img_s) / len(img_s) if img_s else None
            row.update({
                "status": record.get("status"), "epochs_done": len(epochs), "epochs": record["config"]["epochs"],
                "px": px, "mean_epoch_s": (sum(e["seconds"] for e in epochs) / len(epochs)) if epochs else None,
                "mean_eval_s": (sum(e.get("eval_seconds", 0.0) for e in epochs) / len(epochs)) if epochs else None,
                "train_images_per_s": mean_img_s,
                "peak_fraction": (mean_img_s * train_flops_per_image(px, width) / BF16_PEAK_FLOPS
                                  if mean_img_s else None),
                "upscale_s": record.get("upscale_seconds"),
                "numerics": record.get("numerics"),
                "max_test_acc": record.get("summary", {}).get("max_test_acc"),
                "final_test_acc": record.get("summary", {}).get("final_test_acc"),
            })
        else:
            row["status"] = "not run" if item is None else "failed"
        rows[str(key)] = row
        stopped = item is not None and item.process.returncode in (0, PARTIAL_EXIT_CODE, 130, -signal.SIGKILL)
        if item is not None and not stopped:
            code = 1  # a failed run: its log is in the archive
        elif row["status"] != "complete" and code == 0 and item is not None:
            code = PARTIAL_EXIT_CODE  # stopped at the deadline: rerun to resume
        state.log(_row_text(str(key), row))
    if quality is not None:
        state.timing["sr_quality_exit_code"] = quality.process.returncode
        state.log(f"[kit] sr-quality exit code {quality.process.returncode}")
    state.timing["runs"] = rows
    return code


def _row_text(name: str, row: dict) -> str:
    if "epochs_done" not in row:
        return f"[kit] result {name:>13}: {row['status']}"
    fmt = (lambda v, spec: "-" if v is None else format(v, spec))  # noqa: E731
    return (f"[kit] result {name:>13}: {row['status']}, {row['epochs_done']}/{row['epochs']} epochs at "
            f"{row['px']} px, {fmt(row['mean_epoch_s'], '.1f')} s/epoch (+{fmt(row['mean_eval_s'], '.1f')} s eval), "
            f"{fmt(row['train_images_per_s'], '.0f')} img/s = {fmt(row['peak_fraction'], '.1%')} of bf16 peak, "
            f"upscaling {fmt(row['upscale_s'], '.0f')} s, wall {fmt(row['wall_s'], '.0f')} s; "
            f"max {fmt(row['max_test_acc'], '.2f')}%, final {fmt(row['final_test_acc'], '.2f')}%")


def pack(state: KitRun, lines: list[str]) -> Path:
    """One archive in `out`: records, predictions, sr-quality, timing and logs; never checkpoints."""
    from .provenance import DIFF_FILE
    from .runs import PREDICTIONS, RECORD
    from .store import write_json

    stage = Path(tempfile.mkdtemp(prefix="srlib-kit-pack-"))
    try:
        runs = state.runs
        for record in sorted(runs.glob(f"*/*/seed*/{RECORD}")) if runs.is_dir() else []:
            target = stage / "runs" / record.parent.relative_to(runs)
            target.mkdir(parents=True)
            data = json.loads(record.read_text())
            git = data.get("provenance", {}).get("git", {})
            if not git.get("commit"):  # no .git on the GPU machine: the kit knows the commit and the diff
                data.setdefault("provenance", {})["git"] = {
                    "commit": state.timing["kit"]["commit"], "dirty": state.timing["kit"]["dirty"],
                    "from": "kit manifest (the GPU machine has no .git)"}
            write_json(target / RECORD, data)
            for name in (PREDICTIONS, DIFF_FILE):  # the diff: a dirty tree's code, beside what it made
                if (record.parent / name).is_file():
                    shutil.copy2(record.parent / name, target / name)
        for extra in sorted(runs.glob("*/sr_quality.json")) if runs.is_dir() else []:
            target = stage / "runs" / extra.relative_to(runs)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, target)
        logs = state.work / "logs"
        for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            (stage / "logs").mkdir(exist_ok=True)
            data = path.read_bytes()[-LOG_KEEP_BYTES:]
            (stage / "logs" / path.name).write_bytes(data)
        for name in (MANIFEST, DIFF):
            if (state.kit / name).is_file():
                shutil.copy2(state.kit / name, stage / f"kit_{name}")
        from .gpu_probe import PROBE_FILE

        if (state.work / PROBE_FILE).is_file():
            shutil.copy2(state.work / PROBE_FILE, stage / PROBE_FILE)
        if state.window_ends:
            ship_partial(state)
        write_json(stage / "timing.json", state.timing)
        (stage / TIMING_LOG).write_text("\n".join(lines) + "\n")
        archive = state.out / ARCHIVE
        tmp = archive.with_name(archive.name + ".partial")
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(stage.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(stage)))
        os.replace(tmp, archive)
        shutil.copy2(stage / TIMING_LOG, state.out / TIMING_LOG)
        size = archive.stat().st_size
        over = "; OVER the 16 MiB a returned file may have" if size > ARCHIVE_LIMIT_BYTES else ""
        state.log(f"[kit] packed {archive} ({size / 2**20:.2f} MiB{over}) and {state.out / TIMING_LOG}")
        return archive
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def ship_partial(state: KitRun) -> None:
    """The window ends with a run unfinished: cut its checkpoint into pieces under work/ship; piece 1 (with the
    seal) goes into $OUT now, the others with `srlib kit ship N` in the calls after this one."""
    from .partial import ship
    from .runs import CHECKPOINT

    runs = state.runs
    partial = [c.parent for c in sorted(runs.glob(f"*/*/seed*/{CHECKPOINT}"))] if runs.is_dir() else []
    if not partial:
        return
    if len(partial) > 1:
        state.log(f"[kit] {len(partial)} runs are unfinished; only {partial[0].relative_to(runs)} is shipped "
                  "(one partial at a time); the others start afresh in a later window")
    seal = ship(partial[0], runs, state.work / SHIP_DIR)
    shutil.copytree(state.work / SHIP_DIR / "1", state.out / "ckpt-1")
    n = len(seal["stage"]["pieces"])
    state.timing["shipped"] = {"run": seal["run"], "epochs_done": seal["epochs_done"], "pieces": n}
    state.log(f"[kit] checkpoint of {seal['run']} after epoch {seal['epochs_done']}: piece 1 of {n} in "
              f"{state.out / 'ckpt-1'}; fetch the others now, each in its own call: "
              + "; ".join(f"`bash scripts/gpu_paper.sh ship {i}`" for i in range(2, n + 1)))


def ship_piece(index: int, out: Path, work: Path | None = None) -> Path:
    """Piece `index` of the shipped checkpoint into `out/ckpt-<index>` (a call of its own: 64 MiB each way)."""
    work = (work or Path(tempfile.gettempdir()) / "srlib-kit").resolve()
    source = work / SHIP_DIR / str(index)
    if not source.is_dir():
        raise KitError(f"{source} does not exist: no checkpoint piece {index} was cut on this machine (it went back "
                       "when the machine did; the run resumes from its last shipped checkpoint instead)")
    target = out / f"ckpt-{index}"
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


# ---------------------------------------------------------------- unpack (back here)

UNPACKED = ("runs/", "logs/", "timing.json", TIMING_LOG, f"kit_{MANIFEST}", f"kit_{DIFF}", "gpu_probe.json")
PARTIAL_DIR = "partial"


def _dataset_of(record: dict) -> str | None:
    return record.get("data", {}).get("dataset", {}).get("content_sha256")


def _refuse_other_data(stage: Path, results: Path) -> None:
    """Records of different datasets are never mixed in one folder: a record there on other data stays, and the
    archive is not unpacked until it has moved to its own set."""
    from .runs import RECORD

    for record in sorted((stage / "runs").glob(f"*/*/seed*/{RECORD}")):
        target = results / record.parent.relative_to(stage / "runs") / RECORD
        if target.is_file():
            old, new = json.loads(target.read_text()), json.loads(record.read_text())
            if _dataset_of(old) != _dataset_of(new):
                raise KitError(f"{target.parent} holds a record on other data (content sha256 "
                               f"{str(_dataset_of(old))[:16]}..., the archive's is {str(_dataset_of(new))[:16]}...); "
                               f"move those records to their own set (e.g. {results.name}-jpeg75/) first; nothing "
                               "was unpacked")


def unpack(archive: Path, results: Path, log: Callable[[str], None] = log_line,
           pieces: list[Path] | None = None) -> list[Path]:
    """Records (and predictions, sr-quality) to `results/<profile>/<variant>/seed<k>/`, the probe table to
    `results/gpu_probe.json`, the rest to `results/gpu-<start time>/`. A complete record is never replaced by a
    partial one, nor a record by one on other data. `pieces`: the shipped checkpoint's piece folders (ckpt-N),
    kept under `results/partial/` until the run completes."""
    from .partial import keep
    from .runs import RECORD

    if not archive.is_file():
        raise KitError(f"{archive} does not exist; fetch the files the GPU command wrote to $OUT first")
    written = []
    with tempfile.TemporaryDirectory(prefix="srlib-kit-unpack-") as tmp, tarfile.open(archive, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            name = Path(member.name)
            if (not member.isfile() or name.is_absolute() or ".." in name.parts
                    or not any(member.name == k or member.name.startswith(k) for k in UNPACKED)
                    or name.suffix == ".pt"):
                raise KitError(f"{archive} holds an unexpected entry {member.name!r}; not unpacked. Was it made "
                               "by `srlib kit run`?")
            members.append(member)
        # Every member was checked above (plain files, relative, known names); the data filter checks again.
        tar.extractall(tmp, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        stage = Path(tmp)
        _refuse_other_data(stage, results)
        timing = json.loads((stage / "timing.json").read_text())
        stamp = timing["started"].replace(":", "").replace("+0000", "Z").replace("+00:00", "Z")
        for record in sorted((stage / "runs").glob(f"*/*/seed*/{RECORD}")):
            relative = record.parent.relative_to(stage / "runs")
            target = results / relative
            new = json.loads(record.read_text())
            if (target / RECORD).is_file():
                old = json.loads((target / RECORD).read_text())
                if old.get("status") == "complete" and new.get("status") != "complete":
                    log(f"[kit] kept the complete record in {target} (the archive's is {new.get('status')})")
                    continue
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(record.parent.iterdir()):
                shutil.copy2(path, target / path.name)
                written.append(target / path.name)
            log(f"[kit] {relative}: {new.get('status')}, {len(new.get('epochs', []))} epochs -> {target}")
            done = results / PARTIAL_DIR / relative.as_posix().replace("/", "-")
            if new.get("status") == "complete" and done.is_dir():
                shutil.rmtree(done)  # its checkpoint stays in git history
                log(f"[kit] {relative} completed: removed its checkpoint pieces {done}")
        for quality in sorted((stage / "runs").glob("*/sr_quality.json")):
            target = results / quality.relative_to(stage / "runs")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(quality, target)
            written.append(target)
        window = results / f"gpu-{stamp}"
        window.mkdir(parents=True, exist_ok=True)
        for path in sorted(stage.rglob("*")):
            if path.is_file() and "runs" not in path.relative_to(stage).parts:
                target = window / path.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                written.append(target)
        if (stage / "gpu_probe.json").is_file():
            shutil.copy2(stage / "gpu_probe.json", results / "gpu_probe.json")
            written.append(results / "gpu_probe.json")
            log(f"[kit] probe table -> {results / 'gpu_probe.json'}")
        log(f"[kit] timing log and run logs -> {window}")
    if pieces:
        kept = keep(pieces, results / PARTIAL_DIR)
        written.append(kept)
        log(f"[kit] checkpoint pieces -> {kept} (not a result; commit it, `srlib kit assemble` stages it back)")
    return written


# ---------------------------------------------------------------- command line


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kit", help="paper-scale runs on a GPU machine: assemble here, run there, unpack here")
    kit_sub = p.add_subparsers(dest="kit_command", required=True)

    a = kit_sub.add_parser("assemble", help="fill the kit folder (data, weights, wheel, commit + diff); size check")
    a.add_argument("--kit", default=str(ROOT / "kit"), help="a git-ignored folder of the repository (default: kit)")
    a.add_argument("--parquet", default=os.environ.get("SRLIB_DATA_PARQUET"),
                   help="the Parquet copy of CIFAR-10 (default: $SRLIB_DATA_PARQUET)")
    a.add_argument("--weights-dir", default=os.environ.get("SRLIB_WEIGHTS_DIR"),
                   help="folder with dctlsa_x{2,4}.safetensors (default: $SRLIB_WEIGHTS_DIR)")
    a.add_argument("--variants", nargs="+", default=["study"],
                   help="variants the queue may hold (default: study = all five; goals A = original resize_x2 "
                        "sr_x2, B = resize_x4 sr_x4); the queue itself is what --results lacks")
    a.add_argument("--wheel", help="a spandrel wheel to use instead of downloading one")
    a.add_argument("--transport", choices=["webp", "png"], default="webp",
                   help="how the data travels: lossless WebP (default; 2 calls for CIFAR-10) or the PNG files (3)")
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds the queue holds (default 0 1 2)")
    a.add_argument("--results", default=str(ROOT / "results" / "paper"),
                   help="the records whose missing runs make the queue (default: results/paper)")
    a.set_defaults(func=cmd_assemble)

    c = kit_sub.add_parser("check", help="only the size check of the files one device command would send")
    c.add_argument("--kit", default=str(ROOT / "kit"))
    c.set_defaults(func=cmd_check)

    r = kit_sub.add_parser("run", help="on the GPU machine: probe, plan, train, pack into OUT")
    r.add_argument("--kit", default=str(ROOT / "kit"))
    r.add_argument("--out", default=os.environ.get("OUT", "results/gpu"), help="where the archive goes ($OUT)")
    r.add_argument("--variants", nargs="+", help="variants or goals (default: those the kit was assembled for)")
    r.add_argument("--budget", type=float, default=560.0,
                   help="seconds for the whole job, packing included (default 560, for a 600 s command)")
    r.add_argument("--pack-reserve", type=float, default=40.0, help="seconds kept at the end for packing")
    r.add_argument("--window-left-s", type=float,
                   help="device seconds left in this window when the command starts (device tool status: "
                        "budget_left_s); runs start only if they end within it (default: --budget)")
    r.add_argument("--work", help="work folder; keep it for a rerun to resume (default: $TMPDIR/srlib-kit)")
    r.add_argument("--start-all", action="store_true",
                   help="start every variant even when the estimate says it will not finish (a rerun resumes)")
    r.add_argument("--train-args", default="",
                   help='extra `srlib train` options in one string, e.g. --train-args="--compile --no-deterministic"')
    r.add_argument("--probe-steps", type=int, help="timed steps per input size (default 30; dry run 2)")
    r.add_argument("--dry-run", action="store_true", help="on a CPU, smoke-sized: checks every step end to end")
    r.set_defaults(func=cmd_run)

    u = kit_sub.add_parser("unpack", help="records of an archive from the GPU into results/paper")
    u.add_argument("archive", help=f"the {ARCHIVE} that `srlib kit run` wrote")
    u.add_argument("--results", default=str(ROOT / "results" / "paper"))
    u.add_argument("--pieces", nargs="*", default=[], help="ckpt-N folders of a shipped checkpoint (all calls')")
    u.set_defaults(func=cmd_unpack)

    q = kit_sub.add_parser("probe", help="on the GPU machine: check the staged pieces present; the sharing probe")
    q.add_argument("--kit", default=str(ROOT / "kit"))
    q.add_argument("--out", default=os.environ.get("OUT", "results/gpu"))
    q.add_argument("--work", help="work folder shared with `kit run` (default: $TMPDIR/srlib-kit)")
    q.add_argument("--no-probe", action="store_true", help="only check the pieces (a committed table exists)")
    q.add_argument("--budget", type=float, default=90.0, help="seconds for the probe (default 90)")
    q.set_defaults(func=cmd_probe)

    s = kit_sub.add_parser("ship", help="on the GPU machine: piece N of a shipped checkpoint into OUT/ckpt-N")
    s.add_argument("index", type=int)
    s.add_argument("--out", default=os.environ.get("OUT", "results/gpu"))
    s.add_argument("--work", help="work folder of `kit run` (default: $TMPDIR/srlib-kit)")
    s.set_defaults(func=cmd_ship)


def cmd_assemble(args: argparse.Namespace) -> int:
    if not args.parquet:
        raise KitError("no Parquet dataset given: pass --parquet DIR or set SRLIB_DATA_PARQUET "
                       "(the lossless cifar10-png-parquet copy)")
    kit, results = Path(args.kit), Path(args.results)
    manifest, _ = assemble(kit, Path(args.parquet), Path(args.weights_dir) if args.weights_dir else None,
                           expand(args.variants), Path(args.wheel) if args.wheel else None,
                           transport=args.transport, results=results, seeds=tuple(args.seeds))
    print("\n".join(describe_window(kit.resolve(), manifest, results)))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    size = check_size(Path(args.kit))
    print(size.describe())
    return 0 if size.margin >= 0 else 1


def cmd_run(args: argparse.Namespace) -> int:
    return run_kit(Path(args.kit), Path(args.out), expand(args.variants) if args.variants else None,
                   budget_s=args.budget, pack_reserve_s=args.pack_reserve, dry_run=args.dry_run,
                   work=Path(args.work) if args.work else None, start_all=args.start_all,
                   train_args=shlex.split(args.train_args), probe_steps=args.probe_steps,
                   window_left_s=args.window_left_s)


def cmd_probe(args: argparse.Namespace) -> int:
    """Check every staged piece this machine holds; unless --no-probe, run the sharing probe and keep its table
    in the work folder (for `kit run` in the next call) and in OUT."""
    from .gpu_probe import PROBE_FILE, probe, table_lines, write_table
    from .staging import verify_piece

    kit = Path(args.kit)
    for folder in sorted((kit / STAGE_CARRY).iterdir()) if (kit / STAGE_CARRY).is_dir() else []:
        print(f"[kit] {verify_piece(folder)}", flush=True)
    for folder in sorted((kit / CKPT_DIR).iterdir()) if (kit / CKPT_DIR).is_dir() else []:
        print(f"[kit] {verify_piece(folder)}", flush=True)
    if args.no_probe:
        return 0
    settings = PAPER
    config = run_config(settings, [])
    table = probe(config, budget_s=args.budget, log=lambda m: print(m, flush=True))
    work = (Path(args.work) if args.work else Path(tempfile.gettempdir()) / "srlib-kit").resolve()
    write_table(table, work / PROBE_FILE, Path(args.out) / PROBE_FILE)
    print("\n".join(table_lines(table)))
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    target = ship_piece(args.index, Path(args.out), Path(args.work) if args.work else None)
    print(f"[kit] checkpoint piece {args.index} -> {target}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    written = unpack(Path(args.archive), Path(args.results), pieces=[Path(p) for p in args.pieces])
    print(f"{len(written)} file(s) written under {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(["kit", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
