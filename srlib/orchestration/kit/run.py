"""`srlib kit run` (on the GPU machine): the whole job of one call.

It reassembles and hash-checks the data, resumes a checkpoint staged back, measures speeds (kit.speeds), plans
the runs that end within the window's time left (kit.schedule), runs them (kit.pool) and packs everything into
one archive in $OUT (kit.archive), whatever happened. `--dry-run` does all of it on a CPU, smoke-sized.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ...config import VARIANTS
from ...errors import PARTIAL_EXIT_CODE
from ...runs import ROOT
from .archive import pack
from .common import (
    CKPT_DIR,
    DRY_RUN,
    FRESH_WINDOW_S,
    KIT_SCHEMA,
    MANIFEST,
    MIN_COMMAND_S,
    PAPER,
    RESUME_COST_S,
    RETURN_RESERVE_S,
    KitError,
    KitRun,
    Settings,
    check_variants,
    log_line,
    now,
    run_config,
    sr_checkpoints,
    work_folder,
)
from .pool import Launched, run_plan
from .probe import BF16_PEAK_FLOPS, PROBE_FILE, peak_fraction, write_table
from .speeds import check_graphs, probe_upscaling, speed_table, upscaler_key

if TYPE_CHECKING:
    from .schedule import RunKey


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


def _epochs_left(runs: Path, settings: Settings, key: RunKey, epochs: int) -> int:
    from ...runs import load_record

    record = load_record(runs, settings.profile, key.variant, key.seed)
    if record is None:
        return epochs
    if record.get("status") == "complete":
        return 0
    return max(0, epochs - len(record.get("epochs", [])))


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
    variants = check_variants(variants or manifest["variants"])
    missing = [c.file for c in sr_checkpoints(variants) if c.file not in manifest["weights"]]
    if missing:
        raise KitError(f"the kit holds no SR weights for {', '.join(missing)}; assemble it with these variants")
    window = window_left_s if window_left_s is not None else budget_s
    end = started + min(budget_s, max(0.0, window - RETURN_RESERVE_S))
    work = work_folder(work)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(message: str) -> None:
        lines.append(f"[{time.time() - started:6.1f}s] {message}")
        log(message)

    state = KitRun(kit, out, work, settings, variants, started, end - pack_reserve_s, end, say,
                   {"schema": KIT_SCHEMA, "started": now(), "dry_run": dry_run, "variants": variants,
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


def _queue(manifest: dict, variants: list[str]) -> list[RunKey]:
    from .schedule import RunKey

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

    from ...data import load_dataset, stratified_subset
    from ...numerics import resolve_device
    from .data import unstage
    from .partial import restore
    from .schedule import RunNeed, plan_window

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
    px_list = sorted({VARIANTS[k.variant].px for k in keys})
    table, probe_table = speed_table(state, config, device, px_list)
    graph_check = check_graphs(config, device, say) if device.type == "cuda" and config.cuda_graphs else None
    if graph_check is not None and not graph_check["ok"]:
        train_args = [*train_args, "--no-cuda-graphs"]
    sr_speed = probe_upscaling(sorted({k.variant for k in keys}), dataset.test_x, settings, device, say)
    needs = []
    for key in keys:
        left = _epochs_left(state.runs, settings, key, config.epochs)
        upscale_s = (n_train + n_test) / sr_speed[upscaler_key(key.variant)] if VARIANTS[key.variant].is_sr else 0.0
        if left:
            needs.append(RunNeed.of(key, left, n_train, n_test, upscale_s, width=config.width))
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
        write_table(probe_table, state.work / PROBE_FILE)
    del dataset
    launched = run_plan(state, plan, env, train_args)
    return _report(state, launched, [n.key for n in needs])


def _report(state: KitRun, launched: list[Launched], keys: list[RunKey]) -> int:
    """Per-run outcome and speed into the timing log; the exit code of the whole job."""
    from ...runs import load_record

    rows, code = {}, 0
    quality = next((x for x in launched if x.variant == "sr_quality"), None)
    for key in keys:
        record = load_record(state.runs, state.settings.profile, key.variant, key.seed)
        item = next((x for x in launched if x.variant == key.variant and x.seed == key.seed), None)
        row = {"started": item is not None, "exit_code": item.process.returncode if item else None,
               "wall_s": (item.ended - item.started) if item and item.ended else None}
        if record is not None:
            epochs = record.get("epochs", [])
            width, px = record["config"]["width"], record.get("input_px", VARIANTS[key.variant].px)
            img_s = [e["train_images_per_s"] for e in epochs]
            mean_img_s = sum(img_s) / len(img_s) if img_s else None
            row.update({
                "status": record.get("status"), "epochs_done": len(epochs), "epochs": record["config"]["epochs"],
                "px": px, "mean_epoch_s": (sum(e["seconds"] for e in epochs) / len(epochs)) if epochs else None,
                "mean_eval_s": (sum(e.get("eval_seconds", 0.0) for e in epochs) / len(epochs)) if epochs else None,
                "train_images_per_s": mean_img_s,
                "peak_fraction": peak_fraction(mean_img_s, px, width) if mean_img_s else None,
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

