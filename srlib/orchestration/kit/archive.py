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


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    return target


def pack(state: KitRun, lines: list[str]) -> Path:
    """One archive in `out`: records, predictions, sr-quality, timing and logs; never checkpoints."""
    from ...provenance import DIFF_FILE
    from ...runs import PREDICTIONS, RECORD, record_paths, sr_quality_paths
    from ...store import atomic_write_bytes, write_json

    with tempfile.TemporaryDirectory(prefix="srlib-kit-pack-", ignore_cleanup_errors=True) as tmp:
        stage, runs = Path(tmp), state.runs
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
            _copy(extra, stage / "runs" / extra.relative_to(runs))
        for path in sorted((state.work / "logs").glob("*.log")):
            (stage / "logs").mkdir(exist_ok=True)
            (stage / "logs" / path.name).write_bytes(path.read_bytes()[-LOG_KEEP_BYTES:])
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


def unpack(archive: Path, results: Path, log: Callable[[str], None] = log_line,
           pieces: list[Path] | None = None) -> list[Path]:
    """Records (and predictions, sr-quality) to `results/<profile>/<dataset>/<variant>/seed<k>/`, the probe table
    to `results/gpu_probe.json`, the rest to `results/gpu-<start time>/`. A complete record is never replaced by a
    partial one (in either layout; an old-layout folder a new record replaces is removed); records on other data
    land beside it. `pieces`: the shipped checkpoint's piece folders (ckpt-N), kept under `results/partial/` until
    the run completes."""
    from ...runs import load_record, record_dataset, record_paths, run_dir, sr_quality_paths
    from .partial import keep

    if not archive.is_file():
        raise KitError(f"{archive} does not exist; bring back the files the command on the GPU machine wrote to "
                       "its OUT folder first")
    written = []
    with tempfile.TemporaryDirectory(prefix="srlib-kit-unpack-") as tmp, tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            name = Path(member.name)
            if (not member.isfile() or name.is_absolute() or ".." in name.parts
                    or not any(member.name == k or member.name.startswith(k) for k in UNPACKED)
                    or name.suffix == ".pt"):
                raise KitError(f"{archive} holds an unexpected entry {member.name!r}; not unpacked. Was it made "
                               "by `srlib kit run`?")
        # Every member was checked above (plain files, relative, known names); the data filter checks again.
        tar.extractall(tmp, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        stage = Path(tmp)
        timing = json.loads((stage / "timing.json").read_text())
        stamp = timing["started"].replace(":", "").replace("+0000", "Z").replace("+00:00", "Z")
        for record in record_paths(stage / "runs"):
            new = json.loads(record.read_text())
            profile, *_, variant, seed = record.parent.relative_to(stage / "runs").parts  # either layout
            dataset = record_dataset(new)
            target = run_dir(results, profile, dataset, variant, int(seed.removeprefix("seed")))
            relative = target.relative_to(results)
            old = load_record(results, profile, variant, int(seed.removeprefix("seed")), dataset)
            if old is not None and old.get("status") == "complete" and new.get("status") != "complete":
                log(f"[kit] kept the complete record in {Path(old['_path']).parent} (the archive's is "
                    f"{new.get('status')})")
                continue
            written += [_copy(path, target / path.name) for path in sorted(record.parent.iterdir())]
            log(f"[kit] {relative}: {new.get('status')}, {len(new.get('epochs', []))} epochs -> {target}")
            if old is not None and Path(old["_path"]).parent != target:  # the old layout's copy of this run
                shutil.rmtree(Path(old["_path"]).parent)
                log(f"[kit] moved to the layout with the dataset: removed {Path(old['_path']).parent}")
            done = results / PARTIAL_DIR / relative.as_posix().replace("/", "-")
            if new.get("status") == "complete" and done.is_dir():
                shutil.rmtree(done)  # its checkpoint stays in git history
                log(f"[kit] {relative} completed: removed its checkpoint pieces {done}")
        written += [_copy(q, results / q.relative_to(stage / "runs")) for q in sr_quality_paths(stage / "runs")]
        folder = results / f"gpu-{stamp}"  # timing.json at least goes there
        written += [_copy(path, folder / path.relative_to(stage)) for path in sorted(stage.rglob("*"))
                    if path.is_file() and "runs" not in path.relative_to(stage).parts]
        if (stage / PROBE_FILE).is_file():
            written.append(_copy(stage / PROBE_FILE, results / PROBE_FILE))
            log(f"[kit] probe table -> {results / PROBE_FILE}")
        log(f"[kit] timing log and run logs -> {folder}")
    if pieces:
        kept = keep(pieces, results / PARTIAL_DIR)
        written.append(kept)
        log(f"[kit] checkpoint pieces -> {kept} (not a result; commit it, `srlib kit assemble` stages it back)")
    return written

