"""The GPU kit: assemble (here), a CPU dry run of `run` (there), unpack (back here), and the size limit."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLASSES, _image

from srlib import kit
from srlib.cli import main

# `pip download --no-deps --only-binary=:all: --python-version 3.12 spandrel==0.4.2`, measured on the prepared
# machine on 2026-11-28: the size the limit test counts when pip cannot reach its registry (CI may not).
SPANDREL_WHEEL_BYTES = 320_811


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
    manifest, size = kit.assemble(repo / "kit", parquet, None, ["original", "resize_x2"],
                                  wheel=spandrel_wheel(tmp_path / "w"), root=repo, log=lambda *_: None)
    k = repo / "kit"
    assert sorted(manifest["data"]["files"]) == ["plain_text/test-00000-of-00001.parquet",
                                                 "plain_text/train-00000-of-00001.parquet"]
    assert (k / "data" / "plain_text" / "train-00000-of-00001.parquet").is_file()
    assert manifest["weights"] == {}  # no SR variant: no weights travel
    assert manifest["source"]["commit"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, text=True,
                                                          capture_output=True).stdout.strip()
    assert manifest["source"]["dirty"] and manifest["source"]["untracked"] == ["new.py"]
    diff = (k / kit.DIFF).read_text()
    assert "+x = 2" in diff and "+y = 3" in diff
    sent = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert size.total == sent and size.margin == kit.DEVICE_LIMIT_BYTES - sent


def test_assemble_refuses_a_kit_folder_that_is_not_ignored_and_a_missing_dataset(repo, tmp_path):
    parquet = write_parquet(tmp_path / "pq")
    with pytest.raises(kit.KitError, match="not git-ignored"):
        kit.assemble(repo / "other", parquet, None, ["original"], root=repo, log=lambda *_: None)
    with pytest.raises(kit.KitError, match="SRLIB_DATA_PARQUET"):
        kit.assemble(repo / "kit", tmp_path / "nothing", None, ["original"], root=repo, log=lambda *_: None)
    with pytest.raises(kit.KitError, match="SRLIB_WEIGHTS_DIR"):
        kit.assemble(repo / "kit", parquet, tmp_path, ["sr_x2"], root=repo, log=lambda *_: None)


def test_fetch_wheel_fails_clearly_when_pip_cannot_download(tmp_path, monkeypatch):
    def offline(command, **_):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version that satisfies")

    monkeypatch.setattr(kit.subprocess, "run", offline)
    with pytest.raises(kit.KitError, match="--wheel PATH"):
        kit.fetch_wheel(tmp_path / "wheels", version="0.4.2")
    # a cached wheel of that version needs no download
    fake_wheel(tmp_path / "wheels", "spandrel", "0.4.2")
    assert kit.fetch_wheel(tmp_path / "wheels", version="0.4.2")["file"] == "spandrel-0.4.2-py3-none-any.whl"


def test_install_wheels_puts_missing_packages_into_a_site_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # install_wheels puts the site folder first
    fake_wheel(tmp_path / "kit" / "wheels", "srlib_kit_probe", "0.0.1")
    spandrel_wheel(tmp_path / "kit" / "wheels")  # installed already, at this version: skipped
    installed = kit.install_wheels(tmp_path / "kit", tmp_path / "site", log=lambda *_: None)
    assert installed == ["srlib_kit_probe-0.0.1-py3-none-any.whl"]
    assert (tmp_path / "site" / "srlib_kit_probe" / "__init__.py").is_file()


def test_plan_starts_complete_pairs_first_and_only_what_fits():
    probes = {32: kit.Probe(32, 30, 1.0, 4000.0, 0.05), 64: kit.Probe(64, 30, 1.0, 6000.0, 0.30)}
    sr_speed = {"sr x2": 5000.0}
    est = {v: kit.estimate_run(v, 45, 50_000, 10_000, probes, sr_speed) for v in ("original", "resize_x2", "sr_x2")}
    # original alone: 45 epochs x (50,000 + 10,000/3 test images) / 4000 img/s = 600 s of steps
    assert est["original"].compute_s == pytest.approx(600.0)
    assert est["resize_x2"].compute_s == pytest.approx(400.0)
    assert est["sr_x2"].upscale_s == pytest.approx(12.0)
    # the pair shares the GPU at the best efficiency seen: 20 + 400 + 412 = 832 s; original's work counts at
    # 0.05 / 0.30 of its 600 s, so all three take 932 s; times the sharing safety factor
    assert kit.shared_wall_s([est["resize_x2"], est["sr_x2"]]) == pytest.approx(832 * kit.SHARING_SAFETY)
    assert kit.shared_wall_s(list(est.values())) == pytest.approx(932 * kit.SHARING_SAFETY)
    variants = ["original", "resize_x2", "sr_x2"]
    assert kit.plan(est, variants, seconds=1100)[0] == ["resize_x2", "sr_x2", "original"]
    chosen, skipped = kit.plan(est, variants, seconds=1000)
    assert chosen == ["resize_x2", "sr_x2"] and "not started" in skipped["original"]
    chosen, skipped = kit.plan(est, variants, seconds=800)  # the pair does not fit, original alone does
    assert chosen == ["original"] and set(skipped) == {"resize_x2", "sr_x2"}
    assert kit.plan(est, variants, seconds=100)[0] == []
    assert kit.plan(est, variants, seconds=100, start_all=True)[0] == ["resize_x2", "sr_x2", "original"]


def test_dry_run_end_to_end_then_unpack(repo, tmp_path, one_thread):
    """`srlib kit run --dry-run` on a CPU: wheel check, probe, plan, parallel `srlib train` with a deadline,
    sr-quality when weights are at hand, one archive; then `srlib kit unpack` and a rerun that trains nothing."""
    weights = Path(os.environ.get("SRLIB_WEIGHTS_DIR", "weights"))
    variants = ["original", "resize_x2"] + (["sr_x2"] if (weights / "dctlsa_x2.safetensors").is_file() else [])
    kit.assemble(repo / "kit", write_parquet(tmp_path / "pq"), weights, variants,
                 wheel=spandrel_wheel(tmp_path / "w"), root=repo, log=lambda *_: None)
    out, work = tmp_path / "OUT", tmp_path / "work"
    args = ["kit", "run", "--dry-run", "--kit", str(repo / "kit"), "--out", str(out), "--work", str(work),
            "--budget", "300"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [kit.ARCHIVE, kit.TIMING_LOG]
    with tarfile.open(out / kit.ARCHIVE) as tar:
        names = tar.getnames()
    assert not [n for n in names if n.endswith(".pt")]  # no checkpoints come back
    for v in variants:
        assert f"runs/smoke/{v}/seed0/record.json" in names and f"runs/smoke/{v}/seed0/predictions.npz" in names
    assert ("runs/smoke/sr_quality.json" in names) == ("sr_x2" in variants)
    log = (out / kit.TIMING_LOG).read_text()
    assert "probe train  32 px" in log and "probe train  64 px" in log and "of bf16 peak" in log
    timing = json.loads(tar_member(out / kit.ARCHIVE, "timing.json"))
    # A complete resize/SR pair goes first; without the SR weights there is no pair, so the order is as given.
    assert timing["chosen"] == (["resize_x2", "sr_x2", "original"] if "sr_x2" in variants else variants)
    assert all(timing["runs"][v]["status"] == "complete" for v in variants)
    record = json.loads(tar_member(out / kit.ARCHIVE, "runs/smoke/original/seed0/record.json"))
    assert record["provenance"]["git"]["commit"]  # the repo here has .git; on the GPU the kit fills it in

    results = tmp_path / "results"
    assert main(["kit", "unpack", str(out / kit.ARCHIVE), "--results", str(results)]) == 0
    for v in variants:
        assert (results / "smoke" / v / "seed0" / "record.json").is_file()
    assert len(list(results.glob("gpu-*/timing.log"))) == 1

    # Run again on the same work folder (a warm machine): every run is complete, nothing is started.
    assert main(args) == 0
    timing = json.loads(tar_member(out / kit.ARCHIVE, "timing.json"))
    assert timing["chosen"] == [] and all(e["epochs_left"] == 0 for e in timing["estimates"].values())


def tar_member(archive: Path, name: str) -> str:
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read().decode()


def test_unpack_keeps_a_complete_record_and_refuses_foreign_entries(tmp_path):
    def archive(path: Path, files: dict[str, str]) -> Path:
        with tarfile.open(path, "w:gz") as tar:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    timing = json.dumps({"started": "2026-11-28T21:00:00+00:00"})
    results = tmp_path / "results"
    complete = json.dumps({"status": "complete", "epochs": [{}] * 45})
    kit.unpack(archive(tmp_path / "a.tar.gz", {"runs/paper/sr_x2/seed0/record.json": complete,
                                               "timing.json": timing}), results, log=lambda *_: None)
    partial = json.dumps({"status": "partial", "epochs": [{}] * 3})
    kit.unpack(archive(tmp_path / "b.tar.gz", {"runs/paper/sr_x2/seed0/record.json": partial,
                                               "timing.json": timing}), results, log=lambda *_: None)
    assert json.loads((results / "paper/sr_x2/seed0/record.json").read_text())["status"] == "complete"
    assert (results / "gpu-2026-11-28T210000Z" / "timing.json").is_file()
    for bad in ("../evil.json", "runs/paper/sr_x2/seed0/checkpoint.pt", "other.txt"):
        with pytest.raises(kit.KitError, match="unexpected entry"):
            kit.unpack(archive(tmp_path / "c.tar.gz", {bad: "x", "timing.json": timing}), results)


@pytest.mark.slow
def test_the_kit_for_all_five_variants_and_this_repository_fit_the_device_limit(real_parquet, weights_dir, tmp_path):
    """What one device command sends: this checkout's files + the kit with both SR scales, under 64 MiB."""
    extra = 0
    try:
        wheel = tmp_path / "wheels" / kit.fetch_wheel(tmp_path / "wheels")["file"]
    except kit.KitError as exc:  # no registry: count the real wheel's measured size instead
        print(f"pip download failed ({exc}); counting the measured {SPANDREL_WHEEL_BYTES} bytes")
        wheel = spandrel_wheel(tmp_path / "fake")
        extra = SPANDREL_WHEEL_BYTES - wheel.stat().st_size
    _, size = kit.assemble(tmp_path / "kit", Path(real_parquet), weights_dir, kit.expand(["study"]), wheel=wheel,
                           check_location=False, log=print)
    size = kit.SizeCheck(size.repo_bytes, size.kit_bytes + extra)
    print(size.describe())
    assert size.kit_bytes > 55 * 2**20  # the whole dataset and both scales' weights are in it
    assert size.margin > 0, size.describe()


@pytest.mark.slow
def test_sweep_with_records_renders_them_names_the_missing_and_never_trains(imagefolder, tmp_path, monkeypatch,
                                                                           one_thread):
    """`srlib sweep --records DIR`: the train notebooks show DIR's records; with no data anywhere it still works,
    a variant without a record is named as not run, and nothing is trained or written into DIR."""
    from srlib.config import make_config
    from srlib.errors import ConfigError
    from srlib.sweep import records_profile, sweep
    from srlib.train import train

    overrides = dict(epochs=1, width=4, train_size=20, test_size=10)
    records = tmp_path / "results"
    train(make_config("original", "smoke", 0, **overrides), out=records, data=str(imagefolder), device="cpu",
          progress=False, log=lambda *_: None)
    before = {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()}
    monkeypatch.setenv("SRLIB_DATA", str(tmp_path / "no-data"))  # training would stop at once: no dataset
    notebooks = tmp_path / "executed"
    result = sweep("smoke", 1, ["original", "resize_x2"], records, notebooks, overrides=overrides, analysis=False,
                   live=False, records_only=True, log=lambda *_: None)
    assert not result.failed and result.missing == ["smoke-resize_x2-seed0"]
    assert {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()} == before  # only read
    assert not (records / "smoke" / "resize_x2").exists()
    shown = (notebooks / "train" / "smoke-original-seed0.ipynb").read_text()
    assert "Max test accuracy" in shown and "commit" in shown  # run_summary and provenance_table
    missing = (notebooks / "train" / "smoke-resize_x2-seed0.ipynb").read_text()
    assert "was not run" in missing and "srlib train --variant resize_x2" in missing
    # `srlib sweep --records DIR` without --profile takes the one profile DIR has records of
    assert records_profile(records) == "smoke"
    with pytest.raises(ConfigError, match="holds no records"):
        records_profile(tmp_path / "executed")
