"""The job's results in one archive and back: `pack` (there, into OUT: records, predictions, sr-quality,
the probe table, timing and logs; never checkpoints), a partial run's checkpoint shipped in pieces
(kit.partial), and `srlib kit unpack` (here: records into results/paper/, never mixing two datasets)."""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from .job import KitRun, log_line, work_folder
from .layout import ARCHIVE, DIFF, LOG_KEEP_BYTES, MANIFEST, RETURN_FILE_LIMIT_BYTES, SHIP_DIR, TIMING_LOG, KitError
from .probe import PROBE_FILE

UNPACKED = ("runs/", "logs/", "timing.json", TIMING_LOG, f"kit_{MANIFEST}", f"kit_{DIFF}", PROBE_FILE)
PARTIAL_DIR = "partial"


def pack(state: KitRun, lines: list[str]) -> Path:
    """One archive in `out`: records, predictions, sr-quality, timing and logs; never checkpoints."""
    from ...provenance import DIFF_FILE
    from ...runs import PREDICTIONS, RECORD, record_paths, sr_quality_paths
    from ...store import atomic_write_bytes, write_json

    stage = Path(tempfile.mkdtemp(prefix="srlib-kit-pack-"))
    try:
        runs = state.runs
        for record in record_paths(runs):
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
        for extra in sr_quality_paths(runs):
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
        if (state.work / PROBE_FILE).is_file():
            shutil.copy2(state.work / PROBE_FILE, stage / PROBE_FILE)
        if state.window_ends:
            ship_partial(state)
        write_json(stage / "timing.json", state.timing)
        (stage / TIMING_LOG).write_text("\n".join(lines) + "\n")
        archive = state.out / ARCHIVE

        def write(f) -> None:
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                for path in sorted(stage.rglob("*")):
                    if path.is_file():
                        tar.add(path, arcname=str(path.relative_to(stage)))

        atomic_write_bytes(archive, write)
        shutil.copy2(stage / TIMING_LOG, state.out / TIMING_LOG)
        size = archive.stat().st_size
        over = "; OVER the 16 MiB a file brought back may have" if size > RETURN_FILE_LIMIT_BYTES else ""
        state.log(f"[kit] packed {archive} ({size / 2**20:.2f} MiB{over}) and {state.out / TIMING_LOG}")
        return archive
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def ship_partial(state: KitRun) -> None:
    """The session ends with a run unfinished: cut its checkpoint into pieces under work/ship; piece 1 (with the
    seal) goes into OUT now, the others with `srlib kit ship N` in the commands after this one."""
    from ...runs import CHECKPOINT, run_dirs
    from .partial import ship

    runs = state.runs
    partial = [d for d in run_dirs(runs) if (d / CHECKPOINT).is_file()]
    if not partial:
        return
    if len(partial) > 1:
        state.log(f"[kit] {len(partial)} runs are unfinished; only {partial[0].relative_to(runs)} is shipped "
                  "(one partial at a time); the others start afresh in a later session")
    seal = ship(partial[0], runs, state.work / SHIP_DIR)
    shutil.copytree(state.work / SHIP_DIR / "1", state.out / "ckpt-1")
    n = len(seal["stage"]["pieces"])
    state.timing["shipped"] = {"run": seal["run"], "epochs_done": seal["epochs_done"], "pieces": n}
    state.log(f"[kit] checkpoint of {seal['run']} after epoch {seal['epochs_done']}: piece 1 of {n} in "
              f"{state.out / 'ckpt-1'}; bring back the others now, each with a command of its own on the GPU machine: "
              + "; ".join(f"`bash scripts/gpu_paper.sh ship {i}`" for i in range(2, n + 1)))


def ship_piece(index: int, out: Path, work: Path | None = None) -> Path:
    """Piece `index` of the shipped checkpoint into `out/ckpt-<index>` (a command of its own: 64 MiB each way)."""
    source = work_folder(work) / SHIP_DIR / str(index)
    if not source.is_dir():
        raise KitError(f"{source} does not exist: no checkpoint piece {index} was cut on this machine (it went back "
                       "when the machine did; the run resumes from its last shipped checkpoint instead)")
    target = out / f"ckpt-{index}"
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


# ---------------------------------------------------------------- unpack (back here)


def _dataset_of(record: dict) -> str | None:
    return record.get("data", {}).get("dataset", {}).get("content_sha256")


def _refuse_other_data(stage: Path, results: Path) -> None:
    """Records of different datasets are never mixed in one folder: a record there on other data stays, and the
    archive is not unpacked until it has moved to its own set."""
    from ...runs import RECORD, record_paths

    for record in record_paths(stage / "runs"):
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
    from ...runs import RECORD, record_paths, sr_quality_paths
    from .partial import keep

    if not archive.is_file():
        raise KitError(f"{archive} does not exist; bring back the files the command on the GPU machine wrote to "
                       "its OUT folder first")
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
        for record in record_paths(stage / "runs"):
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
        for quality in sr_quality_paths(stage / "runs"):
            target = results / quality.relative_to(stage / "runs")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(quality, target)
            written.append(target)
        folder = results / f"gpu-{stamp}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(stage.rglob("*")):
            if path.is_file() and "runs" not in path.relative_to(stage).parts:
                target = folder / path.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                written.append(target)
        if (stage / PROBE_FILE).is_file():
            shutil.copy2(stage / PROBE_FILE, results / PROBE_FILE)
            written.append(results / PROBE_FILE)
            log(f"[kit] probe table -> {results / PROBE_FILE}")
        log(f"[kit] timing log and run logs -> {folder}")
    if pieces:
        kept = keep(pieces, results / PARTIAL_DIR)
        written.append(kept)
        log(f"[kit] checkpoint pieces -> {kept} (not a result; commit it, `srlib kit assemble` stages it back)")
    return written

