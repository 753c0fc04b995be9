"""Checks before anything starts, and the plan that `srlib sweep --dry-run` prints.

`srlib train` and `srlib sweep` (local or Slurm) check first, so a missing dataset or SR weights, an unwritable
folder or a full disk is one `srlib: error: ...` naming every problem within seconds, not a failed run each. The
checks read a little of each input, try download hosts with a TCP connect (all at once, at most CONNECT_SECONDS)
and write nothing but a temporary file per output folder, deleted again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from .. import cost
from ..config import STUDY_SCALES, VARIANTS, TrainConfig, variant_of
from ..data import CIFAR10_URL, decoded_cache_path, default_cache_dir, locate, quick_check, stratified_subset
from ..data_sources import CANONICAL_DIR, Survey, survey_imagefolder, survey_parquet
from ..errors import DataError, SrlibError, WeightsError
from ..upscale import (
    DEFAULT_SR_MODEL,
    checkpoint_scale,
    default_weights_dir,
    local_checkpoint,
    sr_checkpoint,
    upscaled_cache_path,
)

CONNECT_SECONDS = 3.0  # a download host that does not answer a TCP connect in this time counts as unreachable
DECODED = "decoded dataset"
DISK_MARGIN_BYTES = 256 * 2**20  # beyond the caches: records, checkpoints, executed notebooks


class PreflightError(SrlibError):
    pass


@dataclass(frozen=True)
class RunPlan:
    variant: str
    seed: int
    done: bool  # a complete record of this run exists (it is reused, never retrained)
    estimate: cost.RunEstimate  # its phases: upscaling (when it builds the cache), epochs

    @property
    def seconds(self) -> float:
        return 0.0 if self.done else self.estimate.seconds


@dataclass(frozen=True)
class CachePlan:
    name: str  # e.g. "sr_x4 train" or "decoded dataset"
    images: int
    hw: tuple[int, int]  # (height, width) of its images
    present: bool
    seconds: float  # estimated time to build it (0 when present)
    basis: str

    @property
    def bytes(self) -> int:
        return self.images * 3 * self.hw[0] * self.hw[1]  # uint8 (N, 3, H, W)


@dataclass
class Plan:
    profile: str
    device: str
    out: Path
    cache_dir: Path
    runs: list[RunPlan] = field(default_factory=list)
    caches: list[CachePlan] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    data: str = ""  # what data would be used, in words
    analysis: bool = False
    free_bytes: int | None = None

    @property
    def bytes_needed(self) -> int:
        return sum(c.bytes for c in self.caches if not c.present)

    @property
    def seconds(self) -> float:
        analysis = cost.ANALYSIS_S if self.analysis else 0.0
        decode = sum(c.seconds for c in self.caches if not c.present and c.name == DECODED)
        return sum(r.seconds for r in self.runs) + decode + analysis

    @property
    def measured_here(self) -> bool:
        """The estimate rests on records of this machine, not only on the cost model's rough rates."""
        return any(r.estimate.measured_here for r in self.runs if not r.done)

    def raise_problems(self, listed_above: bool = False) -> None:
        if self.problems and listed_above:
            raise PreflightError(f"the checks found {len(self.problems)} problem(s), listed above; fix them, then "
                                 "run the same command without --dry-run")
        if len(self.problems) == 1:
            raise PreflightError(f"{self.problems[0]} (nothing was started)")
        if self.problems:
            listed = " ".join(f"({i}) {p};" for i, p in enumerate(self.problems, 1))
            raise PreflightError(f"{len(self.problems)} problems, nothing was started: {listed.rstrip(';')}")


# --- entry points ------------------------------------------------------------------------------------------

def make_plan(configs: list[TrainConfig], out: str | os.PathLike, data: str | None = None,
              cache_dir: str | os.PathLike | None = None, notebooks_out: str | os.PathLike | None = None,
              analysis: bool = False, device: str | None = None, force: bool = False,
              dataset: str | None = None, checks: bool = True) -> Plan:
    """What running `configs` would do (runs done or to run, caches, time) and every problem that would stop it.

    `analysis`: the analysis notebooks follow (the SR-quality page needs the default SR weights at x2 and x4).
    `dataset`: the data's key (srlib.data.dataset_key): a run counts as done only on this data (None: on any,
    but the checks and caches cover every run, as one done on other data would run again). `checks=False`: the
    runs, caches and time only (no weights, hosts, folders or disk space looked at).
    """
    from ..runs import find_finished, load_records

    out, cache = Path(out), Path(cache_dir) if cache_dir is not None else default_cache_dir()
    profile = configs[0].profile if configs else ""
    plan = Plan(profile, cost.device_type(device), out, cache, analysis=analysis)
    earlier = ([r for r in load_records(out, profile, predictions=False) if cost.record_device(r) == plan.device]
               if configs else [])
    done = [not force and find_finished(out, config, dataset) is not None for config in configs]
    pending = [c for c, finished in zip(configs, done, strict=True) if not finished or dataset is None]
    hosts: dict[str, list[str]] = {}  # url -> what needs it (to name in the message)
    plan.data, download_dirs, shape = (_check_data(data, plan.problems, hosts, pending, plan.device)
                                       if pending or analysis else ("not needed", [], cost.DataShape()))
    plan.caches, builds = _caches(pending, cache, earlier, plan.device, shape)
    plan.runs = [RunPlan(c.variant, c.seed, d, cost.estimate_run(c, earlier, plan.device, builds.get(id(c), 0), shape))
                 for c, d in zip(configs, done, strict=True)]
    if not checks:
        return plan
    download_dirs += _check_weights(pending, analysis, plan.problems, hosts)
    for url, answered in ports_open(list(hosts)).items():
        if not answered:
            plan.problems.extend(hosts[url])
    folders = [("output folder", out, "--out"), ("cache folder", cache, "--cache-dir or SRLIB_CACHE_DIR")]
    if notebooks_out is not None:
        folders.append(("executed-notebook folder", Path(notebooks_out), "--notebooks-out"))
    folders += [("download folder", d, "SRLIB_DATA_DIR / SRLIB_WEIGHTS_DIR") for d in dict.fromkeys(download_dirs)]
    plan.problems += [p for what, folder, option in folders if (p := _writable_problem(folder, what, option))]
    _check_disk(plan)
    return plan


# --- data --------------------------------------------------------------------------------------------------

def _check_data(data: str | None, problems: list[str], hosts: dict[str, list[str]], configs: list[TrainConfig],
                device: str) -> tuple[str, list[Path], cost.DataShape]:
    """What data would be used, the folder a download would write to and the data's shape (for the time
    estimate); a problem when the data is missing, unreadable (or its download host is down) or cannot work for
    these runs (`_data_problems`)."""
    try:
        where = locate(data)
    except SrlibError as exc:
        problems.append(str(exc))
        return "not found", [], cost.DataShape()
    path = Path(where["path"]).absolute()
    if where["kind"] == "download":
        host = urlsplit(CIFAR10_URL).hostname
        hosts.setdefault(CIFAR10_URL, []).append(
            f"no CIFAR-10 found (--data / SRLIB_DATA not set, no {CANONICAL_DIR} in {path.parent}) and its download "
            f"host {host} does not answer within {CONNECT_SECONDS:.0f} s; put torchvision's {CANONICAL_DIR} into the "
            "data directory (SRLIB_DATA_DIR), or point --data / SRLIB_DATA at an ImageFolder tree "
            "(train/<class>/*, test/<class>/*), e.g. an offline copy: SRLIB_DATA=../shared/data/cifar10-jpeg")
        return f"canonical CIFAR-10, to be downloaded from {CIFAR10_URL} into {path}", [path.parent], cost.DataShape()
    found, problem = None, quick_check(where)
    if problem:
        problems.append(problem)
    elif where["kind"] != "canonical":
        try:
            found = _survey(where)
            problems.extend(_data_problems(found, where["path"], configs, device))
        except (SrlibError, OSError, ValueError) as exc:
            problems.append(f"cannot survey the data at {where['path']} ({exc})")
    shape = cost.DataShape()
    if found is not None and found.sizes:
        (w, h), counts = next(iter(found.sizes.values())), found.counts
        shape = cost.DataShape((h, w), int(counts["train"].sum()), int(counts["test"].sum()))
    return f"{where['kind']} dataset at {path}", [], shape


# What the SR model holds per output pixel of one image, roughly: fp32 feature maps of ~64 channels at the
# output size (DCTLSA works at the input size and upsamples at the end, so this errs on the safe side).
SR_BYTES_PER_OUTPUT_PIXEL = 64 * 4
SR_CHUNK = {"cpu": 16, "cuda": 512}  # images per SR forward pass (srlib.upscale.super_resolution's chunk_size)


def _survey(where: dict) -> Survey:
    """The listing or the label column, and the header of one image per class (ImageFolder) or file."""
    return survey_imagefolder(Path(where["path"])) if where["kind"] == "imagefolder" else survey_parquet(where["files"])


def _data_problems(found: Survey, path: str, configs: list[TrainConfig], device: str) -> list[str]:
    """What cannot work on the data at `path`, each in one line with its fix: fewer than 2 classes, a class too
    small for the stratified subset, images of several sizes, images too large for the SR model in the memory
    here."""
    if len(found.classes) < 2:
        return [f"the data at {path} has {len(found.classes)} class ({', '.join(found.classes)}); a "
                "classifier needs at least 2: add another class (a folder in train/ and test/, or label values)"]
    problems = []
    for split, sizes in (("train", {c.train_size for c in configs}), ("test", {c.test_size for c in configs})):
        labels = np.repeat(np.arange(len(found.classes)), found.counts[split])
        for size in sizes:
            try:
                stratified_subset(labels, size)
            except DataError as exc:
                problems.append(f"{split} split: {exc} (classes in order: {', '.join(found.classes)})")
    sizes = sorted(set(found.sizes.values()))
    if len(sizes) > 1:
        examples = "; ".join(f"{w}x{h} px ({where})" for (w, h), where in
                             {size: where for where, size in found.sizes.items()}.items())
        return [*problems, f"the images are not all one size ({examples}); srlib does not resize them: bring "
                           "every image to one size first (e.g. PIL's Image.resize)"]
    problems += [p for p in [_too_large_for_sr(sizes[0], configs, device)] if p]
    return problems


def _too_large_for_sr(size: tuple[int, int], configs: list[TrainConfig], device: str) -> str | None:
    """A rough bound: the SR model's feature maps for one chunk of images at the output size must fit in
    the memory here (GPU memory with CUDA, else RAM)."""
    scales = [v.scale for c in configs if (v := variant_of(c.variant)) is not None and v.is_sr]
    if not scales:
        return None
    memory = _memory_here(device)
    chunk = SR_CHUNK.get(device, SR_CHUNK["cpu"])
    needed = chunk * (max(scales) * max(size)) ** 2 * SR_BYTES_PER_OUTPUT_PIXEL
    if memory is None or needed <= memory:
        return None
    side = int((memory / (chunk * SR_BYTES_PER_OUTPUT_PIXEL)) ** 0.5) // max(scales)
    return (f"the images are {size[0]}x{size[1]} px: SR at x{max(scales)} on {chunk} images at a time needs about "
            f"{_size(needed)}, more than the {_size(memory)} of {device} memory here; bring the images down to "
            f"{side} px or less, or leave out the SR variants (--variants)")


def _memory_here(device: str) -> int | None:
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


# --- SR weights --------------------------------------------------------------------------------------------

def _sr_needs(configs: list[TrainConfig], analysis: bool) -> dict[tuple[str | None, int, str | None], list[str]]:
    """(registered model, scale, None) or (None, scale, --sr-weights file) -> what needs that checkpoint."""
    needs: dict[tuple[str | None, int, str | None], list[str]] = {}
    for config in configs:
        variant = VARIANTS[config.variant]
        if not variant.is_sr:
            continue
        # --sr-weights replaces the default model only
        user = config.sr_weights is not None and variant.method == "sr"
        key = (None, variant.scale, config.sr_weights) if user else (variant.sr_model, variant.scale, None)
        needs.setdefault(key, []).append(config.variant)
    if analysis and not any(model is None for model, _, _ in needs):
        for scale in STUDY_SCALES:  # the SR-quality page measures the default model at the study's scales
            needs.setdefault((DEFAULT_SR_MODEL, scale, None), []).append("the SR-quality page")
    return needs


def _check_weights(configs: list[TrainConfig], analysis: bool, problems: list[str],
                   hosts: dict[str, list[str]]) -> list[Path]:
    """Problems for SR checkpoints that are missing, damaged, of the wrong scale or not downloadable; returns
    the weights folders a download would write to (they must be writable)."""
    download_dirs = []
    for (model, scale, weights), users in _sr_needs(configs, analysis).items():
        who = ", ".join(dict.fromkeys(users))
        if model is None:  # --sr-weights: a file of the user's, checked for its scale
            try:
                actual = checkpoint_scale(weights)
            except SrlibError as exc:
                problems.append(f"{exc} (needed by {who})")
                continue
            if actual != scale:
                problems.append(f"--sr-weights {weights} is a x{actual} SR model, but {who} needs x{scale}; "
                                f"pass x{scale} weights")
            continue
        try:
            entry = sr_checkpoint(model, scale)
        except SrlibError as exc:
            problems.append(f"{exc} (needed by {who})")
            continue
        root = default_weights_dir().absolute()
        try:  # srlib.upscale decides what it accepts
            if local_checkpoint(entry, root) is not None:
                continue
        except WeightsError as exc:
            problems.append(f"{exc} (needed by {who})")
            continue
        except OSError as exc:
            problems.append(f"cannot read SR weights in {root} ({exc.strerror or exc}); fix their permissions "
                            f"(needed by {who})")
            continue
        if entry.url is None:
            problems.append(f"SR weights {entry.file} ({entry.label}, needed by {who}) are not in {root} and have no "
                            f"download URL; put the file there or point SRLIB_WEIGHTS_DIR at a folder that holds it")
        else:
            download_dirs.append(root)
            hosts.setdefault(entry.url, []).append(
                f"SR weights {entry.file} ({entry.label}, needed by {who}) are not in {root} and their download "
                f"host {urlsplit(entry.url).hostname} does not answer within {CONNECT_SECONDS:.0f} s; put {entry.file} "
                f"into {root} or point SRLIB_WEIGHTS_DIR at a folder that holds it (offline copy: "
                "SRLIB_WEIGHTS_DIR=../shared/weights)"
                + (", or pass --sr-weights PATH" if entry.model == DEFAULT_SR_MODEL else ", or leave that variant out"))
    return download_dirs


# --- network -----------------------------------------------------------------------------------------------

def ports_open(urls: list[str], timeout: float = CONNECT_SECONDS) -> dict[str, bool]:
    """For each URL, whether its host accepts a TCP connection within `timeout` seconds (name lookup included);
    all at once, so several unreachable hosts still cost `timeout` in all."""
    answered = set()

    def connect(url: str) -> None:
        parts = urlsplit(url)
        with contextlib.suppress(OSError), socket.create_connection(
                (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), timeout=timeout):
            answered.add(url)

    # Threads, because a name lookup ignores socket timeouts; daemons, so a hung lookup never delays exit.
    threads = [threading.Thread(target=connect, args=(url,), daemon=True) for url in urls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {url: url in answered for url in urls}


# --- folders and disk --------------------------------------------------------------------------------------

def _existing_ancestor(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _writable_problem(folder: Path, what: str, option: str) -> str | None:
    """Creates and deletes a temporary file in `folder` (or in its nearest existing parent, if not made yet)."""
    where = _existing_ancestor(folder)
    if not where.is_dir():
        return f"the {what} {folder} cannot be created: {where} is a file; choose another folder ({option})"
    try:
        fd, name = tempfile.mkstemp(dir=where, prefix=".srlib-preflight-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return (f"the {what} {folder} is not writable ({exc.strerror or exc} in {where}); fix its permissions or "
                f"choose another folder ({option})")
    return None


def _check_disk(plan: Plan) -> None:
    needed = plan.bytes_needed + (DISK_MARGIN_BYTES if any(not r.done for r in plan.runs) else 0)
    try:
        plan.free_bytes = shutil.disk_usage(_existing_ancestor(plan.cache_dir)).free
    except OSError:
        return  # the folder check above reports an unusable cache folder
    if needed > plan.free_bytes:
        building = ", ".join(f"{c.name} {_size(c.bytes)}" for c in plan.caches if not c.present)
        plan.problems.append(
            f"not enough disk space: the caches to build ({building or 'none'}) and about {_size(DISK_MARGIN_BYTES)} "
            f"for records and checkpoints need {_size(needed)}, {plan.cache_dir} has {_size(plan.free_bytes)} free; "
            "free some space or point --cache-dir / SRLIB_CACHE_DIR at a larger disk")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# --- caches and time ---------------------------------------------------------------------------------------

def _caches(pending: list[TrainConfig], cache: Path, earlier: list[dict], device: str,
            shape: cost.DataShape) -> tuple[list[CachePlan], dict[int, int]]:
    """The upscaled arrays the pending runs read, present or to build (shared by all seeds of a variant), and
    the images each run builds (by id of its config: the first pending run of a variant builds its cache)."""
    caches, seen, builds = [], set(), {}
    decoded = decoded_cache_path(cache)
    if pending and not list(decoded.parent.glob(decoded.name)):
        images = shape.train + shape.test
        caches.append(CachePlan(DECODED, images, shape.hw, False, images / cost.ROUGH_DECODE_RATE, "rough rate"))
    for config in pending:
        variant = VARIANTS[config.variant]
        key = (variant.method, variant.scale, config.sr_weights, config.train_size, config.test_size)
        if variant.method == "none" or key in seen:
            continue
        seen.add(key)
        sizes = dict(zip(("train", "test"), cost.split_sizes(config, shape), strict=True))
        hw = (shape.hw[0] * variant.scale, shape.hw[1] * variant.scale)
        missing = [s for s, n in sizes.items() if not _cache_present(cache, variant.method, variant.scale, (n, 3, *hw))]
        images = sum(sizes[s] for s in missing or sizes)
        estimate = cost.estimate_run(config, earlier, device, images, shape)
        if missing:
            builds[id(config)] = images
        caches.append(CachePlan(f"{config.variant} ({'+'.join(missing or sizes)})", images, hw, not missing,
                                estimate.upscale_s if missing else 0.0, estimate.upscale_basis))
    return caches, builds


def _cache_present(cache: Path, method: str, scale: int, shape: tuple[int, ...]) -> bool:
    """A cache of this method and scale whose `images` array has `shape` exists (by name and the shape in the
    array's header, not by content)."""
    pattern = upscaled_cache_path(cache, method, scale)
    for path in pattern.parent.glob(pattern.name):
        try:
            with zipfile.ZipFile(path) as archive, archive.open("images.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                if tuple(read(f)[0]) == shape:
                    return True
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
    return False


# --- the plan in words -------------------------------------------------------------------------------------

def format_plan(plan: Plan) -> str:
    """What `srlib sweep --dry-run` prints."""
    todo = [r for r in plan.runs if not r.done]
    lines = [f"plan: profile {plan.profile}, {len(plan.runs)} run(s) on {plan.device}, records in {plan.out}",
             f"data: {plan.data}"]
    width = max((len(r.variant) for r in plan.runs), default=0)
    for r in plan.runs:
        lines.append(f"  {r.variant:<{width}}  seed {r.seed}  {_run_state(r)}")
    build = [c for c in plan.caches if not c.present]
    for c in plan.caches:
        state = "present" if c.present else f"to build, ~{_duration(c.seconds)} ({c.basis})"
        lines.append(f"  cache {c.name}: {c.images:,} images x 3 x {c.hw[0]} x {c.hw[1]} = {_size(c.bytes)}, {state}")
    free = f", {_size(plan.free_bytes)} free" if plan.free_bytes is not None else ""
    lines.append(f"disk: {_size(plan.bytes_needed)} of new caches in {plan.cache_dir}{free}")
    if plan.analysis:
        lines.append("then: the analysis notebooks (sr_quality.ipynb, compare.ipynb)")
    lines.append(f"{estimate_line(plan)}; {len(todo)} run(s) to train and {len(build)} cache(s) to build, "
                 f"{len(plan.runs) - len(todo)} run(s) already done")
    if plan.problems:
        lines.append(f"problems ({len(plan.problems)}):")
        lines += [f"  - {p}" for p in plan.problems]
    else:
        lines.append("checks: data, SR weights, folders and disk space are fine")
    return "\n".join(lines)


def estimate_line(plan: Plan) -> str:
    """The estimated total on this machine and what it rests on: the dry run's and the sweep's first line."""
    basis = ("no run left to train (each has its record)" if all(r.done for r in plan.runs) else
             "from measured on this machine (earlier records)" if plan.measured_here else
             "from the cost model's rough rates: nothing measured on this machine yet, the ETA calibrates on the "
             "first epochs")
    return f"estimated time on this {plan.device}: ~{_duration(plan.seconds)}, {basis}"


def _run_state(run: RunPlan) -> str:
    if run.done:
        return "done (record found, reused)"
    e = run.estimate
    upscale = f"upscaling {e.upscale_images:,} images ~{_duration(e.upscale_s)} + " if e.upscale_images else ""
    return (f"to run: {upscale}{e.epochs} epochs x {_duration(e.epoch_s)} + start-up = {_duration(run.seconds)} "
            f"({e.basis})")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"
