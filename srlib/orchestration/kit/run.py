"""`srlib kit run` (on the GPU machine), the whole job of one command: it reassembles and hash-checks the data,
resumes a checkpoint staged back, measures speeds (kit.speeds), schedules the runs that end within the session's time
left (kit.schedule), runs them (kit.pool) and packs everything into one archive in OUT (kit.archive), whatever
happened. `--dry-run` does all of it on a CPU, smoke-sized."""

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

from ...config import VARIANTS, expand_variants
from ...errors import PARTIAL_EXIT_CODE
from ...provenance import now
from ...runs import ROOT, load_record
from ...store import write_json
from .archive import pack
from .job import (
    COMMAND_BUDGET_S,
    DRY_RUN,
    FRESH_WINDOW_S,
    MIN_COMMAND_S,
    PACK_RESERVE_S,
    PAPER,
    RESUME_COST_S,
    RETURN_RESERVE_S,
    KitRun,
    Settings,
    log_line,
    run_config,
    work_folder,
)
from .layout import CKPT_DIR, KIT_SCHEMA, MANIFEST, KitError, sr_checkpoints
from .pool import Launched, run_schedule
from .probe import H200_BF16_FLOPS, PROBE_FILE, peak_fraction
from .schedule import RunKey, RunNeed, schedule_window
from .speeds import check_graphs, measure_upscaling, speed_table, upscaler_key


def install_wheels(kit: Path, site: Path, log: Callable[[str], None]) -> list[str]:
    """pip-install the kit's wheels whose exact version is not importable here into `site`; their names."""
    wanted = []
    for wheel in sorted((kit / "wheels").glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            if importlib.metadata.version(name) == version:
                continue
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


def _epochs_left(runs: Path, settings: Settings, key: RunKey, epochs: int, dataset: str) -> int:
    record = load_record(runs, settings.profile, key.variant, key.seed, dataset)
    if record is None:
        return epochs
    if record.get("status") == "complete":
        return 0
    return max(0, epochs - len(record.get("epochs", [])))


def run_kit(kit: Path, out: Path, variants: list[str] | None = None, dry_run: bool = False, work: Path | None = None,
            train_args: list[str] | None = None, window_left_s: float | None = None,
            log: Callable[[str], None] = log_line) -> int:
    """The whole GPU-side job; returns 0 (all started runs complete, or nothing to run), PARTIAL_EXIT_CODE or 1
    (a failure). `window_left_s`: the session's time left on the GPU machine when the command starts; runs are
    scheduled to end within it, and training stops at the earlier of COMMAND_BUDGET_S and the session's end."""
    started = time.time()
    kit = kit.resolve()
    manifest_path = kit / MANIFEST
    if not manifest_path.is_file():
        raise KitError(f"{manifest_path} is missing: run `srlib kit assemble` on the prepared machine first, and "
                       "copy the kit paths it printed for the training command to the GPU machine")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("schema") != KIT_SCHEMA:
        raise KitError(f"{manifest_path} is from another srlib (schema {manifest.get('schema')}); assemble it again")
    variants = expand_variants(variants or manifest["variants"])
    missing = [c.file for c in sr_checkpoints(variants) if c.file not in manifest["weights"]]
    if missing:
        raise KitError(f"the kit holds no SR weights for {', '.join(missing)}; assemble it with these variants")
    window = window_left_s if window_left_s is not None else COMMAND_BUDGET_S
    end = started + min(COMMAND_BUDGET_S, max(0.0, window - RETURN_RESERVE_S))
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(message: str) -> None:
        lines.append(f"[{time.time() - started:6.1f}s] {message}")
        log(message)

    state = KitRun(kit, out, work_folder(work), DRY_RUN if dry_run else PAPER, variants, started,
                   end - PACK_RESERVE_S, end, say,
                   {"schema": KIT_SCHEMA, "started": now(), "dry_run": dry_run, "variants": variants,
                    "budget_s": COMMAND_BUDGET_S, "window_left_s": window_left_s, "pack_reserve_s": PACK_RESERVE_S,
                    "kit": manifest["source"], "data": {k: v for k, v in manifest["data"].items() if k != "stage"}},
                   window_ends=window - (end - started) < MIN_COMMAND_S)
    code = 1
    try:
        with _restored_environment():
            code = _run(state, manifest, train_args or [], window)
    except BaseException as exc:  # the archive's timing log says why the job ended early, then it goes on up
        say(f"[kit] stopped by {type(exc).__name__}: {exc}")
        raise
    finally:
        state.timing.update(wall_s=time.time() - started, exit_code=code)
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


def _run(state: KitRun, manifest: dict, train_args: list[str], window_s: float) -> int:
    say, settings = state.log, state.settings
    config = run_config(settings, train_args)  # bad --train-args stop the job here, before any work
    # The kit's queue (the runs the results lacked when it was assembled) among the variants; may be empty.
    keys = [RunKey(v, s) for v, s in manifest["queue"] if v in state.variants]
    if not keys:
        say(f"[kit] the queue holds no run of {', '.join(state.variants)}: every run was done when the kit was "
            "assembled; nothing to train")
        return 0
    state.work.mkdir(parents=True, exist_ok=True)
    installed = install_wheels(state.kit, state.work / "site", say)
    env = {**os.environ, "SRLIB_WEIGHTS_DIR": str(state.kit / "weights"), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(state.work / "site"), str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("SRLIB_CACHE_DIR", str(state.work / "cache"))
    # The data keeps its name (records and pages name a dataset by name and content hash, not by this path)
    env["SRLIB_DATA"] = str(state.work / "data" / manifest["data"]["name"])
    os.environ.update({k: env[k] for k in ("SRLIB_DATA", "SRLIB_WEIGHTS_DIR", "SRLIB_CACHE_DIR")})
    import torch

    from ...data import dataset_key, load_dataset, stratified_subset
    from ...numerics import resolve_device
    from .dataset_pieces import unstage
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
    data_key = dataset_key(dataset.identity)  # the runs' folders: <profile>/<data_key>/<variant>/seed<k>
    if (state.kit / CKPT_DIR / "1").is_dir():  # a run that spans sessions: its checkpoint, staged back
        say(f"[kit] checkpoint staged back and verified: {restore(state.kit / CKPT_DIR, state.runs)}")
    n_train = len(stratified_subset(dataset.train_y, config.train_size))
    n_test = len(stratified_subset(dataset.test_y, config.test_size))
    say(f"[kit] data: {manifest['data']['name']} via {manifest['data']['transport']}, {n_train:,} / {n_test:,} "
        f"images (reassembled and decoded in {decode_s:.1f}s), content sha256 "
        f"{dataset.identity['content_sha256'][:16]}... verified")

    px_list = sorted({VARIANTS[k.variant].px for k in keys})
    table, probe_table = speed_table(state, config, device, px_list)
    graph_check = check_graphs(config, device, say) if device.type == "cuda" and config.cuda_graphs else None
    if graph_check is not None and not graph_check["ok"]:
        train_args = [*train_args, "--no-cuda-graphs"]
    sr_speed = measure_upscaling(sorted({k.variant for k in keys}), dataset.test_x, settings, device, say)
    needs = []
    for key in keys:
        left = _epochs_left(state.runs, settings, key, config.epochs, data_key)
        upscale_s = (n_train + n_test) / sr_speed[upscaler_key(key.variant)] if VARIANTS[key.variant].is_sr else 0.0
        if left:
            needs.append(RunNeed.of(key, left, n_train, n_test, upscale_s))
    # Runs end within this command when no further command fits the session; otherwise within the session, and the
    # next command (the same one, on the same machine) resumes what this one stopped at its deadline.
    seconds = state.left() if state.window_ends else (
        window_s - RETURN_RESERVE_S - (state.end - state.deadline) - (time.time() - state.started)
        - RESUME_COST_S)
    schedule = schedule_window(needs, table, seconds, FRESH_WINDOW_S)
    for line in schedule.describe():
        say(f"[kit] schedule: {line}")
    state.timing.update({
        "device": gpu or "cpu", "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "installed_wheels": installed, "decode_seconds": decode_s, "train_images": n_train, "test_images": n_test,
        "dataset_sha256": dataset.identity.get("content_sha256"), "probe_table": probe_table is not None,
        "speeds": [asdict(r) for r in table.rows], "sr_images_per_s": sr_speed, "graph_check": graph_check,
        "h200_bf16_flops": H200_BF16_FLOPS,
        "schedule": {"mode": schedule.mode, "slots": schedule.slots, "runs": [str(k) for k in schedule.runs],
                     "span": str(schedule.span) if schedule.span else None, "numerics": schedule.numerics,
                     "estimated_s": schedule.estimated_s, "skipped": schedule.skipped, "seconds": seconds},
    })
    if probe_table is not None:
        write_json(state.work / PROBE_FILE, probe_table)
    del dataset
    launched = run_schedule(state, schedule, env, train_args, data_key)
    return _report(state, launched, [n.key for n in needs], data_key)


def _report(state: KitRun, launched: list[Launched], keys: list[RunKey], dataset: str) -> int:
    """Per-run outcome and speed into the timing log; the exit code of the whole job."""
    rows, code = {}, 0
    quality = next((x for x in launched if x.variant == "sr_quality"), None)
    for key in keys:
        record = load_record(state.runs, state.settings.profile, key.variant, key.seed, dataset)
        item = next((x for x in launched if x.variant == key.variant and x.seed == key.seed), None)
        row = {"started": item is not None, "exit_code": item.process.returncode if item else None,
               "wall_s": (item.ended - item.started) if item and item.ended else None}
        if record is not None:
            epochs, summary = record.get("epochs", []), record.get("summary", {})
            px = record.get("input_px", VARIANTS[key.variant].px)
            img_s = _mean(epochs, "train_images_per_s")
            row.update({
                "status": record.get("status"), "epochs_done": len(epochs), "epochs": record["config"]["epochs"],
                "px": px, "mean_epoch_s": _mean(epochs, "seconds"), "mean_eval_s": _mean(epochs, "eval_seconds"),
                "train_images_per_s": img_s,
                "peak_fraction": peak_fraction(img_s, px, record["config"]["width"]) if img_s else None,
                "upscale_s": record.get("upscale_seconds"), "numerics": record.get("numerics"),
                "max_test_acc": summary.get("max_test_acc"), "final_test_acc": summary.get("final_test_acc"),
            })
        else:
            row["status"] = "not run" if item is None else "failed"
        rows[str(key)] = row
        state.log(_row_text(str(key), row))
        if item is not None and not _clean_stop(item):
            code = 1  # a failed run, or one killed by something else than the kit (the out-of-memory killer, say)
            row["log"] = f"logs/{item.log.name}"
            log = item.log.read_text(errors="replace") if item.log.is_file() else "(no log)"
            state.log(f"[kit] {key} FAILED ({_exit_text(item.process.returncode)}); the end of its log "
                      f"({row['log']} in the archive):\n" + "\n".join(f"    {x}" for x in log.splitlines()[-15:]))
        elif row["status"] != "complete" and code == 0 and item is not None:
            code = PARTIAL_EXIT_CODE  # stopped at the deadline: rerun to resume
    if quality is not None:
        state.timing["sr_quality_exit_code"] = quality.process.returncode
        state.log(f"[kit] sr-quality exit code {quality.process.returncode}")
    state.timing["runs"] = rows
    return code


def _mean(epochs: list[dict], name: str) -> float | None:
    return sum(e.get(name, 0.0) for e in epochs) / len(epochs) if epochs else None


def _clean_stop(item: Launched) -> bool:
    """Finished, stopped itself before the deadline, or stopped by the kit's own deadline interrupt (SIGINT, then
    SIGKILL when it did not stop in time). Any other signal, SIGKILL included, is a failure."""
    returncode = item.process.returncode
    if returncode in (0, PARTIAL_EXIT_CODE):
        return True
    return item.stopped_by_kit and returncode in (130, -signal.SIGINT, -signal.SIGKILL)


def _exit_text(returncode: int) -> str:
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def _row_text(name: str, row: dict) -> str:
    if "epochs_done" not in row:
        return f"[kit] result {name:>13}: {row['status']}"
    f = {k: "-" if row[k] is None else format(row[k], spec) for k, spec in [
        ("mean_epoch_s", ".1f"), ("mean_eval_s", ".1f"), ("train_images_per_s", ".0f"), ("peak_fraction", ".1%"),
        ("upscale_s", ".0f"), ("wall_s", ".0f"), ("max_test_acc", ".2f"), ("final_test_acc", ".2f")]}
    return (f"[kit] result {name:>13}: {row['status']}, {row['epochs_done']}/{row['epochs']} epochs at "
            f"{row['px']} px, {f['mean_epoch_s']} s/epoch (+{f['mean_eval_s']} s eval), {f['train_images_per_s']} "
            f"img/s = {f['peak_fraction']} of H200 bf16 peak, upscaling {f['upscale_s']} s, wall {f['wall_s']} s; "
            f"max {f['max_test_acc']}%, final {f['final_test_acc']}%")

