"""The GPU kit: assemble (here), a CPU dry run of `run` (there), unpack (back here), and the size limit."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLASSES, _image, write_tar
from test_data import CANONICAL_CIFAR10_SHA256

from srlib.cli import main
from srlib.config import expand_variants
from srlib.data import dataset_key
from srlib.errors import SrlibError
from srlib.orchestration.kit import archive as kit_archive
from srlib.orchestration.kit import assemble as kit_assemble
from srlib.orchestration.kit import job as kit_job
from srlib.orchestration.kit import layout as kit_layout
from srlib.orchestration.kit import run as kit_run


def write_parquet(root: Path, train_per_class: int = 6, test_per_class: int = 3) -> Path:
    """A tiny CIFAR-like dataset in the Hugging Face layout (plain_text/{train,test}-00000-of-00001.parquet)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    features = {"img": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        images, labels = [], []
        for label in range(len(CLASSES)):
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(_image(rng, label)).save(buffer, format="PNG")
                images.append({"bytes": buffer.getvalue(), "path": f"{split}/{CLASSES[label]}/{i:04d}.png"})
                labels.append(label)
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({"img": pa.array(images, type=image_type), "label": pa.array(labels, type=pa.int64())})
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        (root / "plain_text").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "plain_text" / f"{split}-00000-of-00001.parquet")
    return root


def fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel: a module `name` with VERSION, and its dist-info."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return path


def git_repo(root: Path) -> Path:
    """A one-commit repository that ignores kit/, like the project."""
    root.mkdir(parents=True)
    (root / ".gitignore").write_text("/kit/\n")
    (root / "code.py").write_text("x = 1\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    return root


def wheel_from_installed(folder: Path, package: str = "spandrel") -> Path:
    """A wheel of the installed package, zipped (deflate, as pip's wheels are) from its installed files: the size
    the limit test counts when pip cannot reach its registry, measured instead of typed in."""
    from importlib.metadata import distribution

    dist = distribution(package)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for file in dist.files or []:
            if file.suffix != ".pyc" and "__pycache__" not in file.parts and Path(file.locate()).is_file():
                z.write(file.locate(), str(file))
    return path


def spandrel_wheel(folder: Path) -> Path:
    """A stand-in named like the installed spandrel's wheel, so no test needs the network; never installed,
    because `kit run` installs only wheels whose exact version is missing."""
    from importlib.metadata import version

    return fake_wheel(folder, "spandrel", version("spandrel"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return git_repo(tmp_path / "repo")


def test_assemble_fills_the_kit_and_records_commit_and_diff(repo, tmp_path):
    parquet = write_parquet(tmp_path / "pq")
    (repo / "code.py").write_text("x = 2\n")  # a dirty tree: the diff travels
    (repo / "new.py").write_text("y = 3\n")  # untracked, not ignored: in the diff too
    manifest, size = kit_assemble.assemble(repo / "kit", parquet, None, ["original", "resize_x2"],
                                           wheel=spandrel_wheel(tmp_path / "w"), root=repo, log=lambda *_: None)
    k = repo / "kit"
    assert sorted(manifest["data"]["stage"]["files"]) == ["plain_text/test-00000-of-00001.parquet",
                                                          "plain_text/train-00000-of-00001.parquet"]
    assert manifest["data"]["transport"] == "webp" and manifest["data"]["lossy"] is False
    assert [p["index"] for p in manifest["data"]["stage"]["pieces"]] == [1] and (k / "stage" / "1").is_dir()
    assert manifest["queue"] == [["original", s] if i % 2 == 0 else ["resize_x2", s]
                                 for s in (0, 1, 2) for i in range(2)]  # nothing done yet, in study order
    assert manifest["weights"] == {}  # no SR variant: no weights travel
    assert manifest["source"]["commit"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, text=True,
                                                          capture_output=True).stdout.strip()
    assert manifest["source"]["dirty"] and manifest["source"]["untracked"] == ["new.py"]
    diff = (k / kit_layout.DIFF).read_text()
    assert "+x = 2" in diff and "+y = 3" in diff
    # One call (one data piece): the repository's files and the kit, but not the WebP copy made on the way
    sent = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts
               and "transport" not in p.parts)
    assert size.total == sent and size.margin == kit_layout.SEND_LIMIT_BYTES - sent
    calls = kit_assemble.window_commands(k, manifest, probe_table=False)
    assert len(calls) == 1 and calls[0]["copy"][-1] == "kit/stage/1" and "run --window-left-s" in calls[0]["command"]


def test_data_staged_in_pieces_goes_one_call_each_and_a_missing_piece_stops_the_run(repo, tmp_path):
    """Three pieces: two staging calls (the first probes), then training with the last piece; each call carries
    only its own piece folder. On the GPU side a missing piece is one clear error before anything trains."""
    parquet = write_parquet(tmp_path / "pq", train_per_class=20)
    total = sum(p.stat().st_size for p in (tmp_path / "pq").rglob("*.parquet"))
    manifest, _ = kit_assemble.assemble(repo / "kit", parquet, None, ["original"],
                                        wheel=spandrel_wheel(tmp_path / "w"), root=repo, log=lambda *_: None,
                                        transport="png", piece_bytes=total // 3 + 1)
    calls = kit_assemble.window_commands(repo / "kit", manifest, probe_table=False)
    assert [c["copy"] for c in calls[:2]] == [["kit/stage/1"], ["kit/stage/2"]]
    assert calls[0]["command"] == "bash scripts/gpu_paper.sh probe" and calls[1]["command"].endswith("--no-probe")
    assert calls[2]["copy"][-1] == "kit/stage/3" and "kit" not in calls[2]["copy"]  # never the parent folder
    lines = kit_assemble.describe_window(repo / "kit", manifest, repo / "results" / "paper")
    assert sum(line.startswith("  command ") for line in lines) == 3
    assert "queue: original s0, original s1, original s2" in lines
    from srlib.orchestration.kit.dataset_pieces import unstage
    from srlib.orchestration.kit.staging import StagingError

    shutil.rmtree(repo / "kit" / "stage" / "2")  # the command that should have brought it did not happen
    with pytest.raises(StagingError, match=r"data piece 2 of 3 .* is missing: copy the folder kit/stage/2 to the GPU "
                                           "machine in a command of its own"):
        unstage(repo / "kit", manifest["data"], tmp_path / "data", tmp_path / "cache")
    assert not (tmp_path / "data").exists()


def test_assemble_refuses_a_kit_folder_that_is_not_ignored_and_a_missing_dataset(repo, tmp_path):
    parquet = write_parquet(tmp_path / "pq")
    with pytest.raises(kit_layout.KitError, match="not git-ignored"):
        kit_assemble.assemble(repo / "other", parquet, None, ["original"], root=repo, log=lambda *_: None)
    with pytest.raises(SrlibError, match="SRLIB_DATA_PARQUET"):
        kit_assemble.assemble(repo / "kit", tmp_path / "nothing", None, ["original"], root=repo, log=lambda *_: None)
    with pytest.raises(kit_layout.KitError, match="SRLIB_WEIGHTS_DIR"):
        kit_assemble.assemble(repo / "kit", parquet, tmp_path, ["sr_x2"], root=repo, log=lambda *_: None)


def test_fetch_wheel_fails_clearly_when_pip_cannot_download(tmp_path, monkeypatch):
    def offline(command, **_):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version that satisfies")

    monkeypatch.setattr(kit_assemble.subprocess, "run", offline)
    with pytest.raises(kit_layout.KitError, match="--wheel PATH"):
        kit_assemble.fetch_wheel(tmp_path / "wheels", version="0.4.2")
    # a cached wheel of that version needs no download
    fake_wheel(tmp_path / "wheels", "spandrel", "0.4.2")
    assert kit_assemble.fetch_wheel(tmp_path / "wheels", version="0.4.2")["file"] == "spandrel-0.4.2-py3-none-any.whl"


def test_install_wheels_puts_missing_packages_into_a_site_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # install_wheels puts the site folder first
    fake_wheel(tmp_path / "kit" / "wheels", "srlib_kit_probe", "0.0.1")
    spandrel_wheel(tmp_path / "kit" / "wheels")  # installed already, at this version: skipped
    installed = kit_run.install_wheels(tmp_path / "kit", tmp_path / "site", log=lambda *_: None)
    assert installed == ["srlib_kit_probe-0.0.1-py3-none-any.whl"]
    assert (tmp_path / "site" / "srlib_kit_probe" / "__init__.py").is_file()


def _bare_kit(kit: Path, queue: list) -> Path:
    """A kit folder with only its manifest: enough for `kit run` to reach its queue."""
    kit.mkdir(parents=True)
    manifest = {"schema": kit_layout.KIT_SCHEMA, "variants": ["original", "resize_x2"], "weights": {}, "queue": queue,
                "source": {"commit": "abc", "dirty": False}, "data": {"name": "cifar10"}}
    (kit / kit_layout.MANIFEST).write_text(json.dumps(manifest))
    return kit


def test_an_empty_queue_runs_nothing_and_says_so(tmp_path):
    """Every run was done when the kit was assembled: the job trains nothing (it used to retrain every variant
    at seed 0), says so, and still packs its archive."""
    lines = []
    kit, out = _bare_kit(tmp_path / "kit", queue=[]), tmp_path / "OUT"
    assert kit_run.run_kit(kit, out, dry_run=True, work=tmp_path / "work", log=lines.append) == 0
    assert any("nothing to train" in line for line in lines) and not any("started" in line for line in lines)
    assert "nothing to train" in (out / kit_layout.TIMING_LOG).read_text() and (out / kit_layout.ARCHIVE).is_file()


def _ended(command: str, log: Path, stopped_by_kit: bool = False):
    """A Launched for a real process that has ended (its log written), as kit.pool leaves it."""
    from srlib.orchestration.kit.pool import Launched

    log.write_text("epoch 3/45 ...\nsomething the run printed last\n")
    process = subprocess.Popen([sys.executable, "-c", command])
    process.wait()
    return Launched("original", process, log, 0.0, 1.0, seed=0, stopped_by_kit=stopped_by_kit)


def test_a_run_killed_by_a_signal_that_is_not_the_kits_deadline_stop_is_a_failure_with_its_log(tmp_path):
    """SIGKILL from the out-of-memory killer is a failure (exit code 1, the log's end in the timing log); the same
    signal sent by the kit's own deadline stop is a clean stop that a rerun resumes."""
    from srlib.errors import PARTIAL_EXIT_CODE
    from srlib.orchestration.kit.schedule import RunKey

    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    lines = []
    state = kit_job.KitRun(tmp_path / "kit", tmp_path / "OUT", tmp_path / "work", kit_job.DRY_RUN, ["original"],
                           0.0, 0.0, 0.0, lines.append)
    oom = _ended(killed, tmp_path / "train_original_seed0.log")
    assert kit_run._report(state, [oom], [RunKey("original", 0)], "data-00000000") == 1
    text = "\n".join(lines)
    assert "FAILED (killed by SIGKILL)" in text and "something the run printed last" in text
    assert state.timing["runs"]["original s0"]["log"] == "logs/train_original_seed0.log"
    lines.clear()
    deadline = _ended(killed, tmp_path / "train_original_seed0.log", stopped_by_kit=True)
    assert kit_run._report(state, [deadline], [RunKey("original", 0)], "data-00000000") == \
        PARTIAL_EXIT_CODE
    assert not any("FAILED" in line for line in lines)


@pytest.mark.slow
def test_dry_run_end_to_end_then_unpack(repo, tmp_path, one_thread):
    """`srlib kit run --dry-run` on a CPU: wheel check, probe, plan, parallel `srlib train` with a deadline,
    sr-quality when weights are at hand, one archive; then `srlib kit unpack` and a rerun that trains nothing."""
    weights = Path(os.environ.get("SRLIB_WEIGHTS_DIR", "weights"))
    variants = ["original", "resize_x2"] + (["sr_x2"] if (weights / "dctlsa_x2.safetensors").is_file() else [])
    kit_assemble.assemble(repo / "kit", write_parquet(tmp_path / "pq"), weights, variants,
                          wheel=spandrel_wheel(tmp_path / "w"), root=repo, log=lambda *_: None, seeds=(0,))
    out, work = tmp_path / "OUT", tmp_path / "work"
    args = ["kit", "run", "--dry-run", "--kit", str(repo / "kit"), "--out", str(out), "--work", str(work)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [kit_layout.ARCHIVE, kit_layout.TIMING_LOG]
    with tarfile.open(out / kit_layout.ARCHIVE) as tar:
        names = tar.getnames()
    assert not [n for n in names if n.endswith(".pt")]  # no checkpoints come back
    timing = json.loads(tar_member(out / kit_layout.ARCHIVE, "timing.json"))
    key = dataset_key(timing["data"])  # the runs' folders: <profile>/<dataset>/<variant>/seed<k>
    for v in variants:
        run = f"runs/smoke/{key}/{v}/seed0"
        assert f"{run}/record.json" in names and f"{run}/predictions.npz" in names
    assert (f"runs/smoke/{key}/sr_quality.json" in names) == ("sr_x2" in variants)
    log = (out / kit_layout.TIMING_LOG).read_text()
    assert "speed alone  32 px" in log and "speed alone  64 px" in log and "of H200 bf16 peak" in log
    assert "content sha256" in log and "verified" in log  # the staged data was checked before training
    # The queue's order (the study's); measured speeds alone only, so one run after another
    assert timing["schedule"]["runs"] == [f"{v} s0" for v in variants] and timing["schedule"]["mode"] == "alone"
    assert all(timing["runs"][f"{v} s0"]["status"] == "complete" for v in variants)
    record = json.loads(tar_member(out / kit_layout.ARCHIVE, f"runs/smoke/{key}/original/seed0/record.json"))
    assert record["provenance"]["git"]["commit"]  # the repo here has .git; on the GPU the kit fills it in

    results = tmp_path / "results"
    assert main(["kit", "unpack", str(out / kit_layout.ARCHIVE), "--results", str(results)]) == 0
    for v in variants:
        assert (results / "smoke" / key / v / "seed0" / "record.json").is_file()
    assert len(list(results.glob("gpu-*/timing.log"))) == 1

    # Run again on the same work folder (a warm machine): every run is complete, nothing is started.
    assert main(args) == 0
    timing = json.loads(tar_member(out / kit_layout.ARCHIVE, "timing.json"))
    assert timing["schedule"]["runs"] == [] and all(r["status"] == "complete" for r in timing["runs"].values())


def tar_member(archive: Path, name: str) -> str:
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read().decode()


def test_unpack_keeps_a_complete_record_and_refuses_foreign_entries(tmp_path):
    timing = json.dumps({"started": "2026-11-28T21:00:00+00:00"})
    results = tmp_path / "results"
    complete = json.dumps({"status": "complete", "epochs": [{}] * 45})
    kit_archive.unpack(write_tar(tmp_path / "a.tar.gz", {"runs/paper/sr_x2/seed0/record.json": complete,
                                                       "timing.json": timing}), results, log=lambda *_: None)
    partial = json.dumps({"status": "partial", "epochs": [{}] * 3})
    kit_archive.unpack(write_tar(tmp_path / "b.tar.gz", {"runs/paper/sr_x2/seed0/record.json": partial,
                                                       "timing.json": timing}), results, log=lambda *_: None)
    assert json.loads((results / "paper/dataset-unknown/sr_x2/seed0/record.json").read_text())["status"] == "complete"
    assert (results / "gpu-2026-11-28T210000Z" / "timing.json").is_file()
    for bad in ("../evil.json", "runs/paper/sr_x2/seed0/checkpoint.pt", "other.txt"):
        with pytest.raises(kit_layout.KitError, match="unexpected entry"):
            kit_archive.unpack(write_tar(tmp_path / "c.tar.gz", {bad: "x", "timing.json": timing}), results)


@pytest.mark.slow
def test_the_lossless_kit_for_all_five_variants_fits_each_call(real_parquet, weights_dir, tmp_path):
    """Every call of a window (this checkout's files + the call's carried paths) stays under 64 MiB, with the
    lossless data in two WebP pieces (or three PNG ones) and both SR scales' weights."""
    try:
        wheel = tmp_path / "wheels" / kit_assemble.fetch_wheel(tmp_path / "wheels")["file"]
    except kit_layout.KitError as exc:  # no registry here: a wheel zipped from the installed package instead
        print(f"pip download failed ({exc}); using a wheel made from the installed spandrel")
        wheel = wheel_from_installed(tmp_path / "fake")
    sizes = {}
    for transport, pieces in (("webp", 2), ("png", 3)):
        manifest, size = kit_assemble.assemble(tmp_path / "kit", Path(real_parquet), weights_dir,
                                               expand_variants(["study"]), wheel=wheel, check_location=False,
                                               log=print, transport=transport)
        assert manifest["data"]["content_sha256"] == CANONICAL_CIFAR10_SHA256 and not manifest["data"]["lossy"]
        assert len(manifest["data"]["stage"]["pieces"]) == pieces, transport
        calls = kit_assemble.window_commands(tmp_path / "kit", manifest, probe_table=False)
        sizes[transport] = [size.repo_bytes + kit_assemble._copied_bytes(tmp_path / "kit", c["copy"]) for c in calls]
        assert max(sizes[transport]) <= kit_layout.SEND_LIMIT_BYTES, size.describe()
    print({t: [f"{b / 2**20:.1f} MiB" for b in v] for t, v in sizes.items()})


@pytest.mark.slow
def test_sweep_with_records_renders_them_names_the_missing_and_never_trains(imagefolder, tmp_path, monkeypatch,
                                                                           one_thread):
    """`srlib sweep --records DIR`: the train notebooks show DIR's records; with no data anywhere it still works,
    a variant without a record is named as not run, and nothing is trained or written into DIR."""
    from srlib.config import make_config
    from srlib.errors import ConfigError
    from srlib.orchestration.request import SweepRequest
    from srlib.orchestration.sweep import sweep
    from srlib.runs import record_dataset, records_profile
    from srlib.train import train

    overrides = dict(epochs=1, width=4, train_size=20, test_size=10)
    records = tmp_path / "results"
    key = record_dataset(train(make_config("original", "smoke", 0, **overrides), out=records, data=str(imagefolder),
                               device="cpu", progress=False, log=lambda *_: None))
    before = {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()}
    monkeypatch.setenv("SRLIB_DATA", str(tmp_path / "no-data"))  # training would stop at once: no dataset
    notebooks = tmp_path / "executed"
    result = sweep(SweepRequest("smoke", 1, ["original", "resize_x2"], records, notebooks, overrides=overrides,
                                analysis=False, records_only=True), live=False, log=lambda *_: None)
    assert not result.failed and result.missing == [f"smoke-{key}-resize_x2-seed0"]  # the records' one dataset
    assert {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()} == before  # only read
    assert not (records / "smoke" / key / "resize_x2").exists()
    shown = (notebooks / "train" / f"smoke-{key}-original-seed0.ipynb").read_text()
    assert "Max test accuracy" in shown and "commit" in shown  # run_summary and provenance_table
    missing = (notebooks / "train" / f"smoke-{key}-resize_x2-seed0.ipynb").read_text()
    assert "was not run" in missing and "srlib train --variant resize_x2" in missing
    # `srlib sweep --records DIR` without --profile takes the one profile DIR has records of
    assert records_profile(records) == "smoke"
    with pytest.raises(ConfigError, match="holds no records"):
        records_profile(tmp_path / "executed")


def test_unpack_keeps_records_of_two_datasets_side_by_side_and_moves_an_old_layout_run(tmp_path):
    from srlib.data import dataset_key

    def record(sha: str, status: str = "complete") -> str:
        return json.dumps({"status": status, "epochs": [{}] * 45, "data": {"dataset": {"content_sha256": sha}}})

    jpeg, lossless = "653ddc0f" + "0" * 56, "c8cc1b78" + "0" * 56
    timing = json.dumps({"started": "2026-11-29T10:00:00+00:00"})
    results = tmp_path / "results"
    old = results / "paper/original/seed0"  # a committed record in the layout without the dataset
    old.mkdir(parents=True)
    (old / "record.json").write_text(record(jpeg))
    partial = {"runs/paper/original/seed0/record.json": record(jpeg, "partial"), "timing.json": timing}
    kit_archive.unpack(write_tar(tmp_path / "a.tar.gz", partial), results, log=lambda *_: None)
    assert json.loads((old / "record.json").read_text())["status"] == "complete"  # never replaced by a partial
    other = {"runs/paper/original/seed0/record.json": record(lossless), "timing.json": timing,
             "gpu_probe.json": json.dumps({"rows": []})}
    pieces = tmp_path / "ckpt-1"
    pieces.mkdir()
    (pieces / "piece.json").write_text(json.dumps({"index": 1}))
    (pieces / "seal.json").write_text(json.dumps({"run": "paper/sr_x4/seed0"}))
    kit_archive.unpack(write_tar(tmp_path / "b.tar.gz", other), results, log=lambda *_: None, pieces=[pieces])
    lossless_run = results / "paper" / dataset_key({"content_sha256": lossless}) / "original/seed0"
    assert "c8cc" in (lossless_run / "record.json").read_text()
    assert "653d" in (old / "record.json").read_text()  # the other dataset's record stays
    assert (results / "gpu_probe.json").is_file() and (results / "partial/paper-sr_x4-seed0/1/piece.json").is_file()
    new = f"paper/{dataset_key({'content_sha256': jpeg})}/original/seed0"
    archive = write_tar(tmp_path / "c.tar.gz", {f"runs/{new}/record.json": record(jpeg), "timing.json": timing})
    kit_archive.unpack(archive, results, log=lambda *_: None)
    assert (results / new / "record.json").is_file() and not old.exists()  # moved to the layout with the dataset


def test_a_window_that_ends_ships_the_unfinished_runs_checkpoint_in_calls(tmp_path):
    """Piece 1 (with the seal) goes into $OUT with the archive; `kit ship 2` brings the next; both unpack into
    results/partial, and they never exceed what a call returns (8 files, 16 MiB each)."""
    from srlib.orchestration.kit import partial

    work, out = tmp_path / "work", tmp_path / "OUT"
    run = work / "runs" / "paper" / "sr_x4" / "seed0"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(np.random.default_rng(2).integers(0, 256, 70 * 2**20 // 7, np.uint8).tobytes())
    (run / "record.json").write_text(json.dumps({"status": "partial", "epochs": [{}] * 20}))
    out.mkdir()
    state = kit_job.KitRun(tmp_path / "kit", out, work, kit_job.PAPER, ["sr_x4"], 0.0, 0.0, 0.0,
                              lambda *_: None, window_ends=True)
    kit_archive.ship_partial(state)
    assert state.timing["shipped"] == {"run": "paper/sr_x4/seed0", "epochs_done": 20, "pieces": 1}
    files = [p for p in (out / "ckpt-1").iterdir()]
    assert len(files) + 2 <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)  # + archive + timing.log
    with pytest.raises(kit_layout.KitError, match="no checkpoint piece 2"):
        kit_archive.ship_piece(2, out, work)
    big = work / "runs" / "paper" / "sr_x4" / "seed0" / "checkpoint.pt"
    big.write_bytes(np.random.default_rng(3).integers(0, 256, 89_000_000, np.uint8).tobytes())  # paper size
    shutil.rmtree(out / "ckpt-1")
    kit_archive.ship_partial(state)
    assert state.timing["shipped"]["pieces"] == 2
    second = kit_archive.ship_piece(2, tmp_path / "OUT2", work)
    for folder in (out / "ckpt-1", second):
        sizes = [p.stat().st_size for p in folder.iterdir()]
        assert len(sizes) <= 6 and max(sizes) <= 16 * 2**20 and sum(sizes) <= 62 * 2**20
    kept = partial.keep([out / "ckpt-1", second], tmp_path / "results" / "partial")
    assert partial.restore(kept, tmp_path / "later").joinpath("checkpoint.pt").read_bytes() == big.read_bytes()

