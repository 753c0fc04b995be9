"""`srlib <command>`: what each command does on generated data, and its one-line error on bad input.

Every command of the parser is exercised here (conftest fails a full run that leaves one undispatched); deeper checks
of one area live beside it (test_preflight: the checks and the plan; test_kit: the GPU kit; test_quality,
test_bench, test_report, test_runs)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, unexercised_commands, write_tar

from srlib.cli import main

ROOT = Path(__file__).resolve().parent.parent


def error_line(capsys) -> str:
    """The command's error: one `srlib: error:` line, last on stderr (progress bars may come before it)."""
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1] if err else ""
    assert line.startswith("srlib: error: "), err
    return line


def tree(folder: Path) -> dict[Path, int]:
    """Every file under `folder` with its mtime; lock files, which a command holds while it runs, left out."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


# --- data ------------------------------------------------------------------------------------------------

def test_data_names_the_source_and_decodes_only_when_asked(imagefolder, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["data", "--data", str(imagefolder), "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.strip() == f"imagefolder CIFAR-10 at {imagefolder}"
    assert not cache.exists()  # naming the source decodes nothing

    assert main(["data", "--load", "--data", str(imagefolder), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    identity = json.loads(out[out.index("{"):])
    assert identity["source"] == "imagefolder" and identity["path"] == str(imagefolder.resolve())
    assert (identity["train_count"], identity["test_count"], identity["classes"]) == (60, 30, CLASSES)
    (cached,) = (cache / "datasets").glob("*.npz")
    before = cached.stat().st_mtime_ns
    assert main(["data", "--load", "--data", str(imagefolder), "--cache-dir", str(cache)]) == 0
    again = capsys.readouterr().out
    assert json.loads(again[again.index("{"):]) == identity and cached.stat().st_mtime_ns == before  # from cache


def test_data_through_python_m(imagefolder):
    done = subprocess.run([sys.executable, "-m", "srlib", "data", "--data", str(imagefolder)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "imagefolder" in done.stdout


def test_data_refuses_a_folder_that_holds_no_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "--load", "--data", str(tmp_path / "empty")]) == 2
    line = error_line(capsys)
    assert str(tmp_path / "empty") in line and "ImageFolder tree" in line and "--data" in line


# --- train -----------------------------------------------------------------------------------------------

TINY = ["--profile", "smoke", "--epochs", "1", "--width", "4", "--train-size", "20", "--test-size", "10"]


def test_train_writes_a_record_and_a_rerun_reuses_it(tmp_path, imagefolder, capsys, one_thread):
    command = ["train", "--variant", "nearest_x2", *TINY, "--data", str(imagefolder), "--out", str(tmp_path / "runs"),
               "--device", "cpu"]
    assert main(command) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    from srlib.data import dataset_key, load_dataset

    key = dataset_key(load_dataset(imagefolder, cache_dir=tmp_path / "cache").identity)
    folder = tmp_path / "runs" / "smoke" / key / "nearest_x2" / "seed0"  # runs are kept by their data
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "complete" and record["input_px"] == 64 and len(record["epochs"]) == 1
    config = record["config"]
    assert (config["variant"], config["width"], config["train_size"], config["test_size"]) == ("nearest_x2", 4, 20, 10)
    assert summary.startswith(f"max {record['summary']['max_test_acc']:.2f}%")
    assert (folder / "predictions.npz").is_file()

    before = tree(folder)
    assert main(command) == 0  # the same run again: found and reused, nothing retrained or rewritten
    out = capsys.readouterr().out
    assert "reusing finished run" in out and out.strip().splitlines()[-1] == summary
    assert tree(folder) == before


def test_unknown_variant_is_one_clear_line(capsys):
    assert main(["train", "--variant", "sr_x8", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("srlib: error: unknown variant 'sr_x8'") and "\n" not in err


def test_bad_override_is_refused(capsys):
    assert main(["train", "--variant", "original", "--profile", "smoke", "--batch-size", "0"]) == 2
    assert "batch size" in capsys.readouterr().err


def test_unwritable_output_is_one_clear_line(tmp_path, imagefolder, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = main(["train", "--variant", "original", "--profile", "smoke", "--data", str(imagefolder),
                 "--out", str(blocker / "runs"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("srlib: error: ") and "a_file" in err and "\n" not in err


# --- upscale ---------------------------------------------------------------------------------------------

def cached_paths(out: str) -> dict[str, Path]:
    """split -> cache file, from the lines `srlib upscale` prints."""
    return {m[0]: Path(m[1]) for m in re.findall(r"^(train|test): \d+ images -> \d+ px, cached at (.+)$", out, re.M)}


def test_upscale_caches_a_balanced_subset_at_the_variants_size(tmp_path, imagefolder, capsys):
    from srlib.data import load_dataset
    from srlib.store import load_arrays

    cache = tmp_path / "cache"
    command = ["upscale", "--variant", "nearest_x2", "--train-size", "20", "--test-size", "10",
               "--data", str(imagefolder), "--cache-dir", str(cache)]
    assert main(command) == 0
    paths = cached_paths(capsys.readouterr().out)
    assert set(paths) == {"train", "test"} and all(p.is_relative_to(cache) for p in paths.values())
    images = load_arrays(paths["train"])[0]["images"]
    assert images.shape == (20, 3, 64, 64) and images.dtype == np.uint8
    low = images[:, :, ::2, ::2]
    assert np.array_equal(images, low.repeat(2, axis=2).repeat(2, axis=3))  # nearest x2, written out
    dataset = load_dataset(str(imagefolder), cache_dir=cache)
    label = {x.tobytes(): int(y) for x, y in zip(dataset.train_x, dataset.train_y, strict=True)}
    assert Counter(label[x.tobytes()] for x in low) == dict.fromkeys(range(10), 2)  # source images, 2 per class
    assert load_arrays(paths["test"])[0]["images"].shape == (10, 3, 64, 64)

    before = tree(cache / "upscaled")
    assert main(command) == 0
    assert cached_paths(capsys.readouterr().out) == paths and tree(cache / "upscaled") == before  # reused


def test_upscale_with_sr_weights_and_the_wrong_scale(tmp_path, imagefolder, tiny_sr_weights, capsys, one_thread):
    from srlib.store import load_arrays

    base = ["upscale", "--variant", "sr_x2", "--train-size", "10", "--test-size", "10", "--data", str(imagefolder),
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--sr-weights", str(tiny_sr_weights[2])]) == 0
    paths = cached_paths(capsys.readouterr().out)
    assert load_arrays(paths["train"])[0]["images"].shape == (10, 3, 64, 64)

    assert main([*base, "--sr-weights", str(tiny_sr_weights[4])]) == 2
    line = error_line(capsys)
    assert f"{tiny_sr_weights[4]} is a x4 SR model, but x2 was requested; pass x2 weights" in line


def test_upscale_refuses_a_variant_without_upscaling(capsys):
    with pytest.raises(SystemExit) as done:
        main(["upscale", "--variant", "original"])
    assert done.value.code == 2 and "invalid choice: 'original'" in capsys.readouterr().err


# --- sr-quality ------------------------------------------------------------------------------------------

def test_sr_quality_prints_what_its_record_holds(tmp_path, imagefolder, tiny_sr_weights, capsys, one_thread):
    out = tmp_path / "quality" / "sr_quality.json"
    assert main(["sr-quality", "--scales", "2", "--n", "10", "--models", "--sr-weights", str(tiny_sr_weights[2]),
                 "--data", str(imagefolder), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    (row,) = json.loads(out.read_text())["results"]
    assert (row["scale"], row["model"], row["images"]) == (2, "tiny_compact_x2.pth", 10)
    assert printed[-2].startswith(f"x2 tiny_compact_x2.pth: PSNR bicubic {row['psnr_bicubic']:.2f} dB, "
                                  f"SR {row['psnr_sr']:.2f} dB")
    assert printed[-1] == f"record: {out}"


def test_sr_quality_refuses_a_file_that_is_no_sr_model(tmp_path, imagefolder, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert main(["sr-quality", "--scales", "2", "--n", "10", "--models", "--sr-weights", str(junk),
                 "--data", str(imagefolder), "--out", str(tmp_path / "q.json")]) == 2
    assert str(junk) in error_line(capsys)
    assert not (tmp_path / "q.json").exists()


# --- sweep --dry-run and status --------------------------------------------------------------------------

def test_train_then_status_and_sweep_dry_run_see_the_finished_run(tmp_path, imagefolder, capsys, monkeypatch,
                                                                   one_thread):
    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(tmp_path / "no-weights"))  # nothing here needs SR weights
    out, cache, notebooks = tmp_path / "runs", tmp_path / "cache", tmp_path / "executed"
    assert main(["status", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"no runs under {out.resolve()}"

    assert main(["train", "--variant", "original", *TINY, "--data", str(imagefolder), "--out", str(out),
                 "--cache-dir", str(cache), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["status", "--out", str(out), "--profile", "smoke"]) == 0
    from srlib.data import dataset_key, load_dataset

    key = dataset_key(load_dataset(imagefolder, cache_dir=cache).identity)
    assert [" ".join(line.split()) for line in capsys.readouterr().out.strip().splitlines()] == [
        f"smoke/{key}/original/seed0 done", "1 done"]

    before = tree(tmp_path)
    assert main(["sweep", "--variants", "original", "nearest_x2", "--seeds", "1", *TINY, "--no-analysis",
                 "--dry-run", "--data", str(imagefolder), "--out", str(out), "--cache-dir", str(cache),
                 "--notebooks-out", str(notebooks)]) == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert "original seed 0 done (record found, reused)" in lines
    assert any(line.startswith("nearest_x2 seed 0 to run") for line in lines)
    assert lines[-1] == "dry run: nothing was started"
    assert tree(tmp_path) == before and not notebooks.exists()  # a dry run writes nothing


KEY = "gen-00000000"  # a dataset key (srlib.data.dataset_key) for runs that need no data
DATA = {"dataset": {"name": "gen", "content_sha256": "0" * 64}}  # the identity that KEY names


def write_job(out: Path, variant: str, **job) -> None:
    from srlib.orchestration.tasks import JOB
    from srlib.runs import run_dir
    from srlib.store import write_json

    write_json(run_dir(out, "smoke", KEY, variant, 0) / JOB, {"host": socket.gethostname(), "since": 0.0, **job})


def test_status_tells_failed_queued_and_vanished_runs_apart(tmp_path, capsys):
    out = tmp_path / "runs"
    log = tmp_path / "resize_x2.log"
    log.write_text("RuntimeError: boom\n")
    write_job(out, "resize_x2", state="failed", why="RuntimeError: boom", log=str(log), pid=os.getpid())
    write_job(out, "sr_x2", state="queued", pid=os.getpid())  # this process stands for a live sweep
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_job(out, "resize_x4", state="running", pid=int(dead.stdout), log=str(tmp_path / "none.log"))
    assert main(["status", "--out", str(out)]) == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.strip().splitlines()]
    assert lines == [
        f"smoke/{KEY}/resize_x2/seed0 failed RuntimeError: boom; log: {log}",
        # its log was never written: not named
        f"smoke/{KEY}/resize_x4/seed0 failed its worker (pid {int(dead.stdout)}) died without finishing (killed?)",
        f"smoke/{KEY}/sr_x2/seed0 queued",
        "1 queued, 2 failed"]


def test_sweep_refuses_bad_input_in_one_line(tmp_path, capsys):
    for args, problem in ((["--variants", "sr_x9", "--profile", "smoke", "--dry-run"],
                           "unknown variant or set 'sr_x9'"),
                          (["--executor", "slurm"], "--executor slurm needs --profile"),
                          (["--records", str(tmp_path / "nothing")], "no such folder"),
                          (["--dataset", "cifar10"], "--dataset cifar10 picks the records to show and needs --records"),
                          (["--records", str(ROOT / "results" / "paper"), "--dataset", "tiny"],
                           "--dataset tiny matches 0 of the datasets of")):
        assert main(["sweep", *args, "--out", str(tmp_path / "runs"), "--notebooks-out", str(tmp_path / "nb")]) == 2
        assert problem in error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written


# --- kit -------------------------------------------------------------------------------------------------

def test_kit_unpack_files_the_records_and_refuses_foreign_archives(tmp_path, capsys):
    results = tmp_path / "results"
    record = {"status": "complete", "epochs": [{}] * 2, "data": DATA}
    good = write_tar(tmp_path / "good.tar.gz", {"runs/smoke/original/seed0/record.json": json.dumps(record),
                                              "timing.json": json.dumps({"started": "2026-11-28T21:00:00+00:00"})})
    assert main(["kit", "unpack", str(good), "--results", str(results)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"file(s) written under {results}")
    assert json.loads((results / f"smoke/{KEY}/original/seed0/record.json").read_text()) == record

    bad = write_tar(tmp_path / "bad.tar.gz", {"../escape.json": "{}", "timing.json": "{}"})
    assert main(["kit", "unpack", str(bad), "--results", str(tmp_path / "other")]) == 2
    assert "unexpected entry '../escape.json'" in error_line(capsys)
    assert not (tmp_path / "other").exists() and not (tmp_path.parent / "escape.json").exists()


def test_kit_assemble_check_and_run_name_what_is_missing(tmp_path, capsys, monkeypatch):
    """What an assembled kit does is test_kit's (assembling needs the Parquet copy and a spandrel wheel)."""
    monkeypatch.delenv("SRLIB_DATA_PARQUET", raising=False)
    assert main(["kit", "assemble", "--kit", str(tmp_path / "kit")]) == 2
    assert "no Parquet dataset given: pass --parquet DIR or set SRLIB_DATA_PARQUET" in error_line(capsys)
    (tmp_path / "kit").mkdir()
    assert main(["kit", "check", "--kit", str(tmp_path / "kit")]) == 2
    assert str(tmp_path / "kit" / "manifest.json") in error_line(capsys)
    assert main(["kit", "run", "--kit", str(tmp_path / "kit"), "--out", str(tmp_path / "out")]) == 2
    assert "manifest.json is missing: run `srlib kit assemble`" in error_line(capsys)
    assert not (tmp_path / "out").exists() and list((tmp_path / "kit").iterdir()) == []


def test_kit_probe_and_ship_on_a_machine_that_has_nothing_of_the_kit(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    # --no-probe only verifies the staged pieces present (none here): no GPU probe, nothing written
    assert main(["kit", "probe", "--no-probe", "--kit", str(tmp_path / "kit"), "--out", str(out),
                 "--work", str(work)]) == 0
    assert not out.exists() and not work.exists()
    assert main(["kit", "ship", "0", "--out", str(out), "--work", str(work)]) == 2
    assert f"{work / 'ship' / '0'} does not exist" in error_line(capsys)
    assert not out.exists()


# --- book ------------------------------------------------------------------------------------------------

def book_sources(root: Path, executed: bool) -> Path:
    """The book's sources in `root`; with `executed`, one complete record and minimal notebooks where
    `srlib sweep` puts them, carrying the papermill parameters it gives them."""
    import nbformat

    from srlib.config import make_config
    from srlib.runs import RECORD, config_dir
    from srlib.store import write_json

    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("executed"))
    if not executed:
        return root
    runs = root / "runs"
    config = make_config("original", "smoke", 0)
    write_json(config_dir(runs, config, KEY) / RECORD, {"status": "complete", "config": config.to_dict(), "data": DATA})
    shown = {"profile": "smoke", "out": str(runs)}
    for name, title, parameters in (("compare", "Compare", shown), ("sr_quality", "SR quality", shown),
                                    (f"train/smoke-{KEY}-original-seed0", "Run", {**shown, "variant": "original",
                                                                           "seed": 0})):
        path = root / "book" / "executed" / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {title}\n\nA page.")])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.metadata["papermill"] = {"parameters": parameters}
        nbformat.write(notebook, path)
    return root


@pytest.fixture
def book_root(monkeypatch):
    """`srlib book` builds the project's own book (it has no option for another root): point it at one of the
    test's making, so the test neither needs nor touches the project's book/executed/."""
    import srlib.orchestration.book

    build_book = srlib.orchestration.book.build_book

    def use(root: Path) -> None:
        monkeypatch.setattr(srlib.orchestration.book, "build_book", functools.partial(build_book, root=root))
    return use


def test_book_builds_the_html_from_the_executed_notebooks(tmp_path, capsys, book_root):
    book_root(book_sources(tmp_path / "root", executed=True))
    assert main(["book", "--path-output", str(tmp_path / "site")]) == 0
    index = tmp_path / "site" / "_build" / "html" / "index.html"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {index}"
    pages = {p.relative_to(index.parent).as_posix() for p in index.parent.rglob("*.html")}
    assert {"book/executed/compare.html", "book/executed/sr_quality.html",
            f"book/executed/train/smoke-{KEY}-original-seed0.html"} <= pages


def test_book_without_executed_notebooks_says_to_run_the_sweep(tmp_path, capsys, book_root):
    book_root(book_sources(tmp_path / "root", executed=False))
    assert main(["book", "--path-output", str(tmp_path / "site")]) == 2
    line = error_line(capsys)
    assert "executed notebooks missing" in line and "run `srlib sweep`" in line
    assert not (tmp_path / "site").exists()


# --- bench -----------------------------------------------------------------------------------------------

def test_bench_times_both_pipelines_on_the_configured_data_and_reports_missing_weights(tmp_path, imagefolder,
                                                                                       monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "dctlsa_x2.safetensors").write_bytes(b"not the official file")  # offline, without real weights
    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("SRLIB_DATA", str(imagefolder))
    out = tmp_path / "bench" / "bench.json"
    assert main(["bench", "--px", "32", "--steps", "1", "--images", "2", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["train"]
    assert row["px"] == 32 and row["baseline_img_s"] > 0 and row["srlib_img_s"] > 0
    assert result["settings"]["train_images"] == f"cifar10 {imagefolder.resolve()}"
    assert result["upscale"] == [] and "dctlsa_x2.safetensors have sha256" in result["upscale_skipped"]
    printed = capsys.readouterr().out
    assert "    32 px  baseline" in printed and "SR upscaling skipped: SR weights" in printed


# --- all of them -----------------------------------------------------------------------------------------

def test_a_registered_command_that_no_test_dispatches_is_named(monkeypatch):
    """conftest watches what `main` dispatches and, after a full run, fails naming what was never dispatched."""
    import srlib.cli

    class Extra:
        """A command module as srlib/cli/ holds them, registering one command and one group."""

        @staticmethod
        def register(sub) -> None:
            sub.add_parser("frobnicate").set_defaults(func=lambda args: 0)
            group = sub.add_parser("widget").add_subparsers(dest="widget_command", required=True)
            for name in ("open", "close"):
                group.add_parser(name).set_defaults(func=lambda args: 5)

    monkeypatch.setattr(srlib.cli, "COMMANDS", (*srlib.cli.COMMANDS, Extra))
    assert {"frobnicate", "widget open", "widget close"} <= unexercised_commands()
    assert main(["frobnicate"]) == 0 and main(["widget", "close"]) == 5  # each still runs its own function
    assert {"frobnicate", "widget close"} & unexercised_commands() == set()
    assert "widget open" in unexercised_commands()
