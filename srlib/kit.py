"""`srlib kit`: paper-scale runs on a borrowed GPU machine, prepared here, run there in one command.

The GPU machine (one H200, torch 2.11, Python 3.12, no network, no `../shared`) receives only this
repository's files (tracked + untracked-not-ignored) plus the paths its caller carries, 64 MiB in all,
and hands back at most 8 files of 16 MiB. So:

- `srlib kit assemble` (here) fills a git-ignored folder of the repository (default `kit/`) with what the
  machine lacks: the Parquet copy of CIFAR-10, the DCTLSA weights of the scales being run, the `spandrel`
  wheel, and the commit and diff of this tree (no `.git` travels); then checks the 64 MiB limit.
- `srlib kit run` (there; `scripts/gpu_paper.sh`) installs the wheel into a temporary site folder, probes
  the training and upscaling speed, starts the runs its measured speed says will finish before the
  deadline (complete resize/SR pairs first), several sharing the GPU as `srlib train` subprocesses, and
  packs records, predictions, sr-quality and timings into one archive in `$OUT` (no checkpoints).
- `srlib kit unpack ARCHIVE` (here) puts the records into `results/paper/`, from where
  `make report RECORDS=results/paper` builds the book without training.

`srlib kit run --dry-run` does all of it on a CPU with smoke-sized settings (tested in CI).
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

ROOT = Path(__file__).resolve().parent.parent
KIT_SCHEMA = 1
MANIFEST = "manifest.json"
DIFF = "source.diff"
ARCHIVE = "paper_results.tar.gz"
TIMING_LOG = "timing.log"
DEVICE_LIMIT_BYTES = 64 * 2**20  # the device tool's limit on the files sent per command
ARCHIVE_LIMIT_BYTES = 16 * 2**20  # the largest file that comes back from $OUT
BF16_PEAK_FLOPS = 790e12  # measured on the H200 (8192^3 bf16 matmul); the yardstick of "fraction of peak"
# ResNet-18 (CIFAR) at width 64: ~1.11 GFLOP forward per 32 px image, ~3x that for a training step.
# Convolutions dominate, so the cost grows with the pixel count and (about) with the square of the width.
TRAIN_FLOPS_32PX = 3.3e9
EVAL_COST = 1 / 3  # a test image costs about a forward pass, a third of a training step
RUN_STARTUP_S = 20.0  # a `srlib train` process: import torch, CUDA context, data from the cache to the GPU
SHARING_SAFETY = 1.15  # runs sharing one GPU interfere a little; the estimate says so
GOALS: dict[str, tuple[str, ...]] = {
    "A": ("original", "resize_x2", "sr_x2"),  # one 600 s command
    "B": ("resize_x4", "sr_x4"),  # two back-to-back commands, the second resuming
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


def check_size(kit: Path, root: Path = ROOT) -> SizeCheck:
    """Bytes that one device command would send with `kit` carried."""
    kit = kit.resolve()
    repo = sum(p.stat().st_size for p in sent_files(root) if kit not in p.resolve().parents)
    return SizeCheck(repo, _tree_bytes(kit))


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


def copy_parquet(source: Path, target: Path) -> dict:
    """Copy a Hugging Face-layout Parquet dataset (`*/train-*.parquet`, `*/test-*.parquet`) into `target`."""
    if not source.is_dir():
        raise KitError(f"Parquet dataset folder {source} does not exist; pass --parquet DIR or set "
                       "SRLIB_DATA_PARQUET (e.g. to the shared cifar10-jpeg-parquet copy)")
    files = sorted(p for p in source.rglob("*.parquet") if p.is_file())
    relative = [p.relative_to(source) for p in files]
    for split in ("train", "test"):
        if not any(r.name.startswith(f"{split}-") for r in relative):
            raise KitError(f"{source} has no {split}-*.parquet file; expected the Hugging Face layout "
                           "<config>/train-*.parquet and <config>/test-*.parquet")
    wanted = set(relative)
    for old in (target.rglob("*.parquet") if target.is_dir() else []):
        if old.relative_to(target) not in wanted:  # another dataset assembled earlier
            old.unlink()
    copied = {}
    for path, rel in zip(files, relative, strict=True):
        _copy_if_changed(path, target / rel)
        copied[str(rel)] = {"bytes": path.stat().st_size, "sha256": _sha256(target / rel)}
    if (source / "SOURCE.md").is_file():
        _copy_if_changed(source / "SOURCE.md", target / "SOURCE.md")
    return {"source": str(source.resolve()), "files": copied}


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


def assemble(kit: Path, parquet: Path, weights_dir: Path | None, variants: list[str], wheel: Path | None = None,
             root: Path = ROOT, check_location: bool = True,
             log: Callable[[str], None] = log_line) -> tuple[dict, SizeCheck]:
    """Fill `kit` with what the GPU machine lacks; returns the manifest and the size check.

    `check_location=False` allows a kit outside the repository, to size one without sending it."""
    variants = _check_variants(variants)
    kit = kit.resolve()
    if check_location:
        _require_ignored(kit, root)
    kit.mkdir(parents=True, exist_ok=True)
    checkpoints = sr_checkpoints(variants)
    log(f"[kit] data: {parquet} -> {kit / 'data'}")
    data = copy_parquet(parquet, kit / "data")
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
    manifest = {"schema": KIT_SCHEMA, "created": _now(), "variants": variants,
                "source": {**source, "diff": DIFF if diff else None}, "data": data, "weights": weights,
                "wheels": wheels}
    from .store import write_json

    write_json(kit / MANIFEST, manifest)
    size = check_size(kit, root)
    log(f"[kit] commit {source['commit'][:12]}{' + diff of the working tree' if diff else ''}; {size.describe()}")
    if size.margin < 0:
        raise KitError(f"{size.describe()}: over the device tool's limit. Run fewer SR scales (--variants), or "
                       "move large untracked files out of the repository")
    return manifest, size


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


def train_flops_per_image(px: int, width: int) -> float:
    return TRAIN_FLOPS_32PX * (px / 32) ** 2 * (width / 64) ** 2


@dataclass
class Probe:
    px: int
    steps: int
    seconds: float
    images_per_s: float
    peak_fraction: float  # of BF16_PEAK_FLOPS
    deterministic: bool = True  # torch deterministic algorithms on (the protocol's default) or off
    cuda_graphs: bool = False  # the step replayed as a CUDA graph (srlib.train.GraphedStep)


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


def probe_training(px_list: list[int], settings: Settings, config, device,
                   log: Callable[[str], None]) -> list[Probe]:
    """Images/s of the training step alone (srlib.train's make_batch + train_step, and on CUDA also replayed as
    a CUDA graph) at each input size, with deterministic algorithms on and off."""
    import torch

    graphs = (False, True) if device.type == "cuda" and config.cuda_graphs else (False,)
    rows = []
    for deterministic in (config.deterministic, not config.deterministic):
        for px in px_list:
            for graphed in graphs:
                rows.append(_probe_one(px, deterministic, graphed, settings, config, device))
                log(f"[kit] probe train {px:>3} px: {rows[-1].images_per_s:9.1f} img/s "
                    f"({rows[-1].peak_fraction:.1%} of bf16 peak; {rows[-1].steps} steps of {config.batch_size}, "
                    f"deterministic {'on' if deterministic else 'off'}, {'CUDA graph' if graphed else 'eager'})")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _probe_setup(px: int, config, device, numerics, n_batches: int = 4):
    import torch

    from .model import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10, width=config.width).to(
        device, memory_format=torch.channels_last if numerics.channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    model.train()
    # Pixel values do not change the speed; random images avoid upscaling before the probe.
    g = torch.Generator().manual_seed(1)
    n = config.batch_size * n_batches
    x_all = torch.randint(0, 256, (n, 3, px, px), dtype=torch.uint8, generator=g).to(device)
    y_all = torch.randint(0, 10, (n,), generator=g).to(device)
    flips = (torch.rand(n, generator=g) < 0.5).to(device)
    return model, optimizer, x_all, y_all, flips


def _steps(px: int, graphed: bool, config, device, k: int, numerics, model=None, optimizer=None):
    """Run k training steps (eager or graphed) on fixed random batches; returns (model, run) for timing."""
    import torch

    from .train import GraphedStep, make_batch, train_step

    model_, optimizer_, x_all, y_all, flips = _probe_setup(px, config, device, numerics)
    model, optimizer = model or model_, optimizer or optimizer_
    graph = GraphedStep(model, optimizer, numerics.bf16) if graphed else None
    batch = config.batch_size

    def run(count: int) -> None:
        for i in range(count):
            idx = torch.arange(i % 4 * batch, (i % 4 + 1) * batch, device=device)
            x, y = make_batch(x_all, y_all, idx, flips, numerics.channels_last)
            if graph is not None:
                graph(x, y)
            else:
                train_step(model, optimizer, x, y, numerics.bf16)

    return model, run


def _probe_one(px: int, deterministic: bool, graphed: bool, settings: Settings, config, device) -> Probe:
    from .numerics import deterministic_algorithms, resolve_numerics

    numerics = resolve_numerics(config, device)
    steps = settings.probe_steps
    with deterministic_algorithms(deterministic):
        _, run = _steps(px, graphed, config, device, steps, numerics)
        run(max(1, steps // 5))  # kernel selection, allocator growth, graph capture
        seconds = _timed(lambda: run(steps), device)
    img_s = steps * config.batch_size / seconds
    return Probe(px, steps, seconds, img_s, img_s * train_flops_per_image(px, config.width) / BF16_PEAK_FLOPS,
                 deterministic, graphed)


def check_graphs(config, device, log: Callable[[str], None], steps: int = 12) -> dict:
    """The same steps eagerly and as CUDA graphs, from the same start: do the weights agree afterwards?"""
    import torch

    from .numerics import deterministic_algorithms, resolve_numerics

    numerics = resolve_numerics(config, device)
    result: dict = {"steps": steps}
    try:
        with deterministic_algorithms(config.deterministic):
            finals = []
            for graphed in (False, True):
                model, run = _steps(32, graphed, config, device, steps, numerics)
                run(steps)
                finals.append(torch.cat([p.detach().float().flatten() for p in model.state_dict().values()
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


def choose_numerics(rows: list[Probe], config, graphs_ok: bool, px_list: list[int]) -> tuple[list[str], dict]:
    """The fastest measured numerics for the runs (the protocol itself never changes): `srlib train` options
    and the probes that plan them. Deterministic kernels are kept unless dropping them is >= 25% faster."""
    usable = [p for p in rows if graphs_ok or not p.cuda_graphs]
    graphs = graphs_ok and any(p.cuda_graphs for p in usable)
    largest = max(px_list)

    def speed(deterministic: bool) -> float:
        return next(p.images_per_s for p in usable if p.px == largest and p.deterministic == deterministic
                    and p.cuda_graphs == graphs)

    deterministic = config.deterministic
    if speed(not deterministic) >= 1.25 * speed(deterministic):
        deterministic = not deterministic
    options = ([] if graphs == config.cuda_graphs else ["--no-cuda-graphs"]) + (
        [] if deterministic == config.deterministic else
        ["--deterministic" if deterministic else "--no-deterministic"])
    probes = {p.px: p for p in usable if p.deterministic == deterministic and p.cuda_graphs == graphs}
    return options, probes


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


@dataclass
class Estimate:
    variant: str
    px: int
    epochs_left: int
    upscale_s: float
    compute_s: float  # training and evaluation, this run alone on the GPU
    peak_fraction: float

    @property
    def alone_s(self) -> float:
        return RUN_STARTUP_S + self.upscale_s + self.compute_s


def estimate_run(variant: str, epochs_left: int, n_train: int, n_test: int, probes: dict[int, Probe],
                 sr_speed: dict[str, float]) -> Estimate:
    px = 32 * VARIANTS[variant].scale
    probe = probes[px]
    # Bicubic and nearest upscaling take a second or two; SR of 60,000 images is what counts.
    upscale_s = (n_train + n_test) / sr_speed[upscaler_key(variant)] if is_sr(variant) else 0.0
    compute_s = epochs_left * (n_train + EVAL_COST * n_test) / probe.images_per_s
    return Estimate(variant, px, epochs_left, upscale_s, compute_s, probe.peak_fraction)


def shared_wall_s(estimates: list[Estimate]) -> float:
    """Estimated seconds until every run in `estimates` ends, all started together on one GPU.

    No run can end sooner than it would alone; and the GPU cannot do their combined work faster than the
    best efficiency (fraction of peak) the probe saw at any size. Small-image runs are bound by kernel
    launches, not FLOPs, which is what sharing the GPU recovers, so their work counts at the efficiency
    they reach, measured against that best one."""
    if not estimates:
        return 0.0
    best = max(e.peak_fraction for e in estimates) or 1.0
    work = sum(e.upscale_s + e.compute_s * e.peak_fraction / best for e in estimates)
    return SHARING_SAFETY * max(max(e.alone_s for e in estimates), RUN_STARTUP_S + work)


def priority_groups(variants: list[str]) -> list[list[str]]:
    """Complete resize/SR pairs first (smaller scale first), then every other variant on its own."""
    groups, used = [], set()
    for scale in sorted({VARIANTS[v].scale for v in variants if VARIANTS[v].scale > 1}):
        pair = [f"resize_x{scale}", f"sr_x{scale}"]
        if all(p in variants for p in pair):
            groups.append(pair)
            used |= set(pair)
    groups += [[v] for v in variants if v not in used]
    return groups


def plan(estimates: dict[str, Estimate], variants: list[str], seconds: float,
         start_all: bool = False) -> tuple[list[str], dict[str, str]]:
    """The variants to start (in priority order) and, for the others, why not."""
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for group in priority_groups(variants):
        trial = chosen + group
        wall = shared_wall_s([estimates[v] for v in trial])
        if start_all or wall <= seconds:
            chosen = trial
        else:
            for v in group:
                skipped[v] = (f"not started: with it the runs would take ~{wall:.0f} s, {seconds:.0f} s are left "
                              f"(alone it needs ~{estimates[v].alone_s:.0f} s)")
    return chosen, skipped


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


def _deadline_text(deadline: float) -> str:
    return dt.datetime.fromtimestamp(deadline, tz=dt.timezone.utc).isoformat()


def _record_of(runs: Path, profile: str, variant: str) -> dict | None:
    from .runs import load_record

    return load_record(runs, profile, variant, 0)


def _epochs_left(runs: Path, settings: Settings, variant: str, epochs: int) -> int:
    record = _record_of(runs, settings.profile, variant)
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
    deadline: float  # when training must have stopped (the end minus the packing reserve)
    end: float
    log: Callable[[str], None]
    timing: dict = field(default_factory=dict)

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    def left(self) -> float:
        return self.deadline - time.time()


def run_kit(kit: Path, out: Path, variants: list[str] | None = None, budget_s: float = 560.0,
            pack_reserve_s: float = 40.0, dry_run: bool = False, work: Path | None = None,
            start_all: bool = False, train_args: list[str] | None = None, probe_steps: int | None = None,
            log: Callable[[str], None] = log_line) -> int:
    """The whole GPU-side job; returns 0 (all started runs complete), PARTIAL_EXIT_CODE or 1 (a failure)."""
    started = time.time()
    kit = kit.resolve()
    manifest_path = kit / MANIFEST
    if not manifest_path.is_file():
        raise KitError(f"{manifest_path} is missing: run `srlib kit assemble` on the prepared machine first and "
                       "send the kit folder along (device tool: carry [\"kit\"])")
    manifest = json.loads(manifest_path.read_text())
    settings = DRY_RUN if dry_run else PAPER
    if probe_steps:
        settings = Settings(**{**asdict(settings), "probe_steps": probe_steps})
    variants = _check_variants(variants or manifest["variants"])
    missing = [c.file for c in sr_checkpoints(variants) if c.file not in manifest["weights"]]
    if missing:
        raise KitError(f"the kit holds no SR weights for {', '.join(missing)}; assemble it with these variants")
    end = started + budget_s
    work = (work or Path(tempfile.gettempdir()) / "srlib-kit").resolve()  # fixed: a rerun resumes from it
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(message: str) -> None:
        lines.append(f"[{time.time() - started:6.1f}s] {message}")
        log(message)

    state = KitRun(kit, out, work, settings, variants, started, end - pack_reserve_s, end, say,
                   {"schema": KIT_SCHEMA, "started": _now(), "dry_run": dry_run, "variants": variants,
                    "budget_s": budget_s, "pack_reserve_s": pack_reserve_s, "kit": manifest["source"]})
    code = 1
    try:
        with _restored_environment():
            code = _run(state, start_all, train_args or [])
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
    env["SRLIB_DATA"] = str(state.kit / "data")
    env["SRLIB_WEIGHTS_DIR"] = str(state.kit / "weights")
    env.setdefault("SRLIB_CACHE_DIR", str(state.work / "cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(state: KitRun, start_all: bool, train_args: list[str]) -> int:
    say, settings = state.log, state.settings
    config = run_config(settings, train_args)  # bad --train-args stop the job here, before any work
    state.work.mkdir(parents=True, exist_ok=True)
    installed = install_wheels(state.kit, state.work / "site", say)
    env = _environment(state, state.work / "site")
    os.environ.update({k: env[k] for k in ("SRLIB_DATA", "SRLIB_WEIGHTS_DIR", "SRLIB_CACHE_DIR")})
    import torch

    from .data import load_dataset, stratified_subset
    from .numerics import resolve_device

    if settings.device == "cuda" and not torch.cuda.is_available():
        raise KitError("torch sees no CUDA GPU; `srlib kit run` is for the GPU machine (use --dry-run on a CPU)")
    device = resolve_device(settings.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    say(f"[kit] {gpu or 'CPU (dry run)'}; torch {torch.__version__}; {os.cpu_count()} cores; variants "
        f"{', '.join(state.variants)}; training must stop by +{state.deadline - state.started:.0f}s")
    t0 = time.perf_counter()
    dataset = load_dataset(env["SRLIB_DATA"], cache_dir=env["SRLIB_CACHE_DIR"])  # decoded once, cached for all runs
    decode_s = time.perf_counter() - t0
    n_train = len(stratified_subset(dataset.train_y, config.train_size))
    n_test = len(stratified_subset(dataset.test_y, config.test_size))
    say(f"[kit] data: {dataset.identity.get('source')} {n_train:,} / {n_test:,} images "
        f"(decoded in {decode_s:.1f}s), sha256 {dataset.identity.get('content_sha256', '')[:16]}")

    px_list = sorted({32 * VARIANTS[v].scale for v in state.variants})
    rows = probe_training(px_list, settings, config, device, say)
    graph_check = check_graphs(config, device, say) if device.type == "cuda" and config.cuda_graphs else None
    numerics_args, probes = choose_numerics(rows, config, bool(graph_check and graph_check["ok"]), px_list)
    train_args = [*train_args, *numerics_args]
    say(f"[kit] numerics for the runs: {shlex.join(numerics_args) or 'the protocol defaults'}")
    sr_speed = probe_upscaling(state.variants, dataset.test_x, settings, device, say)
    estimates = {v: estimate_run(v, _epochs_left(state.runs, settings, v, config.epochs), n_train, n_test, probes,
                                 sr_speed) for v in state.variants}
    todo = [v for v in state.variants if estimates[v].epochs_left > 0]
    chosen, skipped = plan(estimates, todo, state.left(), start_all)
    for v in state.variants:
        e = estimates[v]
        status = ("already complete" if e.epochs_left == 0 else "start" if v in chosen else skipped[v])
        say(f"[kit] plan {v:>10}: {e.epochs_left} epochs left at {e.px} px, ~{e.alone_s:.0f} s alone "
            f"(upscaling ~{e.upscale_s:.0f} s); {status}")
    if chosen:
        say(f"[kit] estimated ~{shared_wall_s([estimates[v] for v in chosen]):.0f} s for the {len(chosen)} run(s) "
            f"sharing the GPU; {state.left():.0f} s left before the training deadline")
    state.timing.update({
        "device": gpu or "cpu", "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "installed_wheels": installed, "decode_seconds": decode_s, "train_images": n_train, "test_images": n_test,
        "dataset_sha256": dataset.identity.get("content_sha256"),
        "probe": [asdict(p) for p in rows], "sr_probe_images_per_s": sr_speed,
        "graph_check": graph_check, "numerics_args": numerics_args,
        "bf16_peak_flops": BF16_PEAK_FLOPS, "train_flops_per_image_32px_width64": TRAIN_FLOPS_32PX,
        "estimates": {v: {**asdict(e), "alone_s": e.alone_s} for v, e in estimates.items()},
        "chosen": chosen, "skipped": skipped,
    })
    del dataset
    launched = launch(state, chosen, env, train_args)
    quality = _sr_quality(state, chosen, env)
    wait(state, launched + ([quality] if quality else []))
    return _report(state, launched, estimates, quality)


def launch(state: KitRun, variants: list[str], env: dict, train_args: list[str]) -> list[Launched]:
    """One `srlib train` subprocess per variant, all sharing the GPU, each with the training deadline."""
    logs = state.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, (os.cpu_count() or 2) // max(1, len(variants))))
    launched = []
    for variant in variants:
        command = [sys.executable, "-m", "srlib", "train", "--variant", variant, "--profile", state.settings.profile,
                   "--seed", "0", "--out", str(state.runs), "--device", state.settings.device,
                   "--deadline", _deadline_text(state.deadline), *state.settings.train_options(), *train_args]
        path = logs / f"train_{variant}.log"
        handle = path.open("a")
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=ROOT, env={**env, "OMP_NUM_THREADS": threads}, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        handle.close()  # the child holds its own copy
        launched.append(Launched(variant, process, path, time.time()))
        state.log(f"[kit] started {variant} (pid {process.pid}, log {path.name})")
    return launched


def _sr_quality(state: KitRun, chosen: list[str], env: dict) -> Launched | None:
    """PSNR/SSIM of SR vs bicubic for the SR scales being trained, in a subprocess beside the runs."""
    scales = sr_scales(chosen)
    if not scales:
        return None
    target = state.runs / state.settings.profile / "sr_quality.json"
    from .upscale import DEFAULT_SR_MODEL

    # The default model only: the kit holds the weights of the scales and models being trained, no others.
    command = [sys.executable, "-m", "srlib", "sr-quality", "--scales", *map(str, scales), "--models",
               DEFAULT_SR_MODEL, "--n", str(state.settings.sr_quality_images), "--out", str(target)]
    path = state.work / "logs" / "sr_quality.log"
    with path.open("a") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "2"}, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    state.log(f"[kit] started sr-quality x{', x'.join(map(str, scales))} (pid {process.pid})")
    return Launched("sr_quality", process, path, time.time())


def wait(state: KitRun, launched: list[Launched], grace_s: float = 10.0) -> None:
    """Wait for every process; past the packing reserve's start, interrupt (then kill) what still runs.

    `srlib train` stops by itself before its deadline; the interrupt is for an epoch that ran long. An
    interrupted run keeps its checkpoint of the finished epochs, so a rerun resumes it."""
    hard_stop = state.deadline + max(0.0, (state.end - state.deadline) / 2 - grace_s)
    interrupted: dict[int, float] = {}
    while any(item.ended is None for item in launched):
        for item in launched:
            if item.ended is None and item.process.poll() is not None:
                item.ended = time.time()
                state.log(f"[kit] {item.variant} ended with exit code {item.process.returncode} after "
                          f"{item.ended - item.started:.0f} s")
        now = time.time()
        for item in launched:
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


def _report(state: KitRun, launched: list[Launched], estimates: dict[str, Estimate],
            quality: Launched | None) -> int:
    """Per-variant outcome and speed into the timing log; the exit code of the whole job."""
    rows, code = {}, 0
    for v in state.variants:
        record = _record_of(state.runs, state.settings.profile, v)
        item = next((x for x in launched if x.variant == v), None)
        row = {"started": item is not None, "exit_code": item.process.returncode if item else None,
               "wall_s": (item.ended - item.started) if item and item.ended else None,
               "estimated_alone_s": estimates[v].alone_s}
        if record is not None:
            epochs = record.get("epochs", [])
            width, px = record["config"]["width"], record.get("input_px", 32 * VARIANTS[v].scale)
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
                "max_test_acc": record.get("summary", {}).get("max_test_acc"),
                "final_test_acc": record.get("summary", {}).get("final_test_acc"),
            })
        else:
            row["status"] = "not run" if item is None else "failed"
        rows[v] = row
        stopped = item is not None and item.process.returncode in (0, PARTIAL_EXIT_CODE, 130, -signal.SIGKILL)
        if item is not None and not stopped:
            code = 1  # a failed run: its log is in the archive
        elif row["status"] != "complete" and code == 0:
            code = PARTIAL_EXIT_CODE  # stopped at the deadline, or not started: rerun to resume / start it
        state.log(_row_text(v, row))
    sharing = [rows[v]["peak_fraction"] for v in rows if rows[v].get("peak_fraction") and rows[v]["started"]]
    if len(sharing) > 1:
        state.timing["started_runs_peak_fraction_sum"] = sum(sharing)
        state.log(f"[kit] the {len(sharing)} runs sharing the GPU reached {sum(sharing):.1%} of bf16 peak together "
                  "(sum of their mean rates; they did not all run for the whole time)")
    if quality is not None:
        state.timing["sr_quality_exit_code"] = quality.process.returncode
        state.log(f"[kit] sr-quality exit code {quality.process.returncode}")
    state.timing["runs"] = rows
    return code


def _row_text(variant: str, row: dict) -> str:
    if "epochs_done" not in row:
        return f"[kit] result {variant:>10}: {row['status']}"
    fmt = (lambda v, spec: "-" if v is None else format(v, spec))  # noqa: E731
    return (f"[kit] result {variant:>10}: {row['status']}, {row['epochs_done']}/{row['epochs']} epochs at "
            f"{row['px']} px, {fmt(row['mean_epoch_s'], '.1f')} s/epoch (+{fmt(row['mean_eval_s'], '.1f')} s eval), "
            f"{fmt(row['train_images_per_s'], '.0f')} img/s = {fmt(row['peak_fraction'], '.1%')} of bf16 peak, "
            f"upscaling {fmt(row['upscale_s'], '.0f')} s; max {fmt(row['max_test_acc'], '.2f')}%, "
            f"final {fmt(row['final_test_acc'], '.2f')}%")


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


# ---------------------------------------------------------------- unpack (back here)

UNPACKED = ("runs/", "logs/", "timing.json", TIMING_LOG, f"kit_{MANIFEST}", f"kit_{DIFF}")


def unpack(archive: Path, results: Path, log: Callable[[str], None] = log_line) -> list[Path]:
    """Records (and predictions, sr-quality) to `results/<profile>/<variant>/seed<k>/`, the rest to
    `results/gpu-<start time>/`. A complete record is never replaced by a partial one."""
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
        log(f"[kit] timing log and run logs -> {window}")
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
    a.add_argument("--variants", nargs="+", default=["A"],
                   help="variants, goals (A = original resize_x2 sr_x2; B = resize_x4 sr_x4) or sets "
                        "(study = all five)")
    a.add_argument("--wheel", help="a spandrel wheel to use instead of downloading one")
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
    u.set_defaults(func=cmd_unpack)


def cmd_assemble(args: argparse.Namespace) -> int:
    if not args.parquet:
        raise KitError("no Parquet dataset given: pass --parquet DIR or set SRLIB_DATA_PARQUET "
                       "(e.g. to the shared cifar10-jpeg-parquet copy)")
    assemble(Path(args.kit), Path(args.parquet), Path(args.weights_dir) if args.weights_dir else None,
             expand(args.variants), Path(args.wheel) if args.wheel else None)
    print(f"kit ready; on the GPU machine run `bash scripts/gpu_paper.sh` with carry [\"{Path(args.kit).name}\"]")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    size = check_size(Path(args.kit))
    print(size.describe())
    return 0 if size.margin >= 0 else 1


def cmd_run(args: argparse.Namespace) -> int:
    return run_kit(Path(args.kit), Path(args.out), expand(args.variants) if args.variants else None,
                   budget_s=args.budget, pack_reserve_s=args.pack_reserve, dry_run=args.dry_run,
                   work=Path(args.work) if args.work else None, start_all=args.start_all,
                   train_args=shlex.split(args.train_args), probe_steps=args.probe_steps)


def cmd_unpack(args: argparse.Namespace) -> int:
    written = unpack(Path(args.archive), Path(args.results))
    print(f"{len(written)} file(s) written under {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(["kit", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
