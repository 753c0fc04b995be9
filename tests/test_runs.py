"""What makes two runs the same, clean stops at a deadline, numerics policy, and code provenance."""

import dataclasses
import shutil
import subprocess
import sys
import time
import types

import pytest
import torch

import srlib.train as train_module
from srlib.cli import build_parser
from srlib.config import TrainConfig, make_config
from srlib.errors import PARTIAL_EXIT_CODE, ConfigError
from srlib.numerics import deterministic_algorithms
from srlib.provenance import git_info, save_code_diff
from srlib.runs import (
    CHECKPOINT,
    PREDICTIONS,
    RECORD,
    config_dir,
    load_quality,
    load_records,
    record_dataset,
    run_identity,
    sr_quality_path,
    sr_quality_paths,
)
from srlib.store import read_json, write_json
from srlib.train import train

TINY = dict(epochs=3, width=4, train_size=60, test_size=30, batch_size=16, lr_step=1)
TIMING = {"seconds", "eval_seconds", "train_images_per_s"}


def _train(tmp_path, data, out="runs", log=lambda *_: None, **kw):
    config = make_config("original", "smoke", 0, **{**TINY, **kw})
    return train(config, out=tmp_path / out, data=str(data), device="cpu", progress=False, log=log)


def _metrics(record: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in record["epochs"]]


def test_a_finished_run_is_reused_under_other_numerics(tmp_path, imagefolder, monkeypatch):
    first = _train(tmp_path, imagefolder, channels_last=False, precision="fp32")
    monkeypatch.setattr(train_module, "prepare_data", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = _train(tmp_path, imagefolder, channels_last=True, precision="auto", deterministic=False, compile=False)
    assert again["epochs"] == first["epochs"]


def test_the_same_images_elsewhere_are_the_same_data_and_other_images_are_not(tmp_path, imagefolder, monkeypatch):
    first = _train(tmp_path, imagefolder)
    moved = shutil.copytree(imagefolder, tmp_path / "moved")
    seen = []
    monkeypatch.setattr(train_module, "prepare_data", lambda *a, **k: seen.append(1) or pytest.fail("retrained"))
    assert _train(tmp_path, moved)["epochs"] == first["epochs"]  # another path, same content: reused
    victim = next((moved / "train" / "cat").iterdir())
    victim.write_bytes((moved / "train" / "dog" / victim.name).read_bytes())
    with pytest.raises(pytest.fail.Exception):
        _train(tmp_path, moved)
    assert seen == [1]


def test_each_dataset_has_its_own_sr_quality_measurement_and_an_old_one_counts_only_for_its_data(tmp_path):
    """A sweep on B after A keeps A's measurement; the old per-profile file is read only for the data it measured."""
    def measured(sha: str, gain: float) -> dict:
        return {"data": {"name": "mine", "content_sha256": sha * 64}, "results": [{"psnr_gain": gain}]}

    a, b = "mine-" + "a" * 8, "mine-" + "b" * 8
    write_json(sr_quality_path(tmp_path, "smoke", a), measured("a", 1.0))
    write_json(sr_quality_path(tmp_path, "smoke", b), measured("b", 2.0))
    assert [load_quality(tmp_path, "smoke", k)["results"][0]["psnr_gain"] for k in (a, b)] == [1.0, 2.0]
    old = tmp_path / "preview" / "sr_quality.json"  # the layout without the dataset
    write_json(old, measured("a", 3.0))
    assert load_quality(tmp_path, "preview", a)["results"][0]["psnr_gain"] == 3.0
    assert load_quality(tmp_path, "preview", b) is None
    assert load_quality(tmp_path, "preview", "cifar10-" + "a" * 8) is not None  # the same images, another name
    assert sr_quality_paths(tmp_path) == sorted([old, sr_quality_path(tmp_path, "smoke", a),
                                                 sr_quality_path(tmp_path, "smoke", b)])


def test_identity_is_protocol_not_numerics():
    a = make_config("sr_x2", "smoke", 1)
    b = dataclasses.replace(a, precision="bf16", channels_last=False, compile=True, deterministic=False)
    assert run_identity(a) == run_identity(b)
    assert run_identity(a) != run_identity(dataclasses.replace(a, lr=0.02))
    assert "precision" not in run_identity(a) and "epochs" in run_identity(a)


def _fake_clock(monkeypatch, stop_before_epoch: int):
    """time.time() for srlib.train that jumps past any deadline before epoch `stop_before_epoch` (1-based)."""
    checks = []

    def fake_time():
        checks.append(1)
        return time.time() + (1e9 if len(checks) >= stop_before_epoch else 0.0)

    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(time=fake_time, perf_counter=time.perf_counter))


def test_deadline_stops_cleanly_and_the_rerun_resumes_to_the_same_record(tmp_path, imagefolder, monkeypatch,
                                                                         one_thread):
    reference = _train(tmp_path, imagefolder, out="reference")
    config = make_config("original", "smoke", 0, **TINY)
    _fake_clock(monkeypatch, stop_before_epoch=3)
    partial = train(config, out=tmp_path / "runs", data=str(imagefolder), device="cpu", progress=False,
                    log=lambda *_: None, deadline=time.time() + 3600)
    directory = config_dir(tmp_path / "runs", config, record_dataset(partial))
    assert partial["status"] == "partial" and len(partial["epochs"]) == 2 and partial["predictions"] is None
    assert (directory / CHECKPOINT).is_file() and (directory / RECORD).is_file()
    assert not (directory / PREDICTIONS).exists()
    assert load_records(tmp_path / "runs") == [] and read_json(directory / RECORD)["status"] == "partial"
    monkeypatch.undo()
    lines = []
    done = train(config, out=tmp_path / "runs", data=str(imagefolder), device="cpu", progress=False, log=lines.append)
    assert done["status"] == "complete" and _metrics(done) == _metrics(reference)
    assert done["resumed_from_epoch"] == 2 and any("resuming" in line for line in lines)
    assert not (directory / CHECKPOINT).exists()


def test_cli_deadline_exit_code_is_distinct(tmp_path, imagefolder):
    args = [sys.executable, "-m", "srlib", "train", "--variant", "original", "--profile", "smoke", "--epochs", "2",
            "--width", "4", "--train-size", "20", "--test-size", "10", "--out", str(tmp_path / "runs"),
            "--data", str(imagefolder), "--cache-dir", str(tmp_path / "cache"), "--deadline", "0"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == PARTIAL_EXIT_CODE, done.stderr
    assert "rerun the same command to resume" in done.stdout


def test_paper_profile_is_refused_on_cpu_without_the_flag(tmp_path, imagefolder):
    with pytest.raises(ConfigError, match="--allow-cpu-paper"):
        train(make_config("original", "paper"), out=tmp_path, data=str(imagefolder), device="cpu")


def test_deterministic_mode_is_restored():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(not before):
        assert torch.are_deterministic_algorithms_enabled() is (not before)
    assert torch.are_deterministic_algorithms_enabled() is before


def test_every_config_field_is_a_cli_option_with_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ("variant", "profile", "seed"):
            assert "--" + f.name.replace("_", "-") in help_text
            assert f.metadata["help"].split()[0] in help_text
    args = build_parser().parse_args(["train", "--variant", "original", "--no-channels-last", "--epochs", "3"])
    assert args.channels_last is False and args.epochs == 3 and args.lr is None


def test_a_dirty_tree_records_its_diff(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    assert git_info(repo)["dirty"] is False and "diff_sha256" not in git_info(repo)
    (repo / "a.py").write_text("x = 2\n")
    info = git_info(repo)
    assert info["dirty"] and len(info["diff_sha256"]) == 64 and "+x = 2" in info["_diff"]
    (repo / "new.py").write_text("y = 3\n")
    info = git_info(repo)
    assert "+x = 2" in info["_diff"] and "+y = 3" in info["_diff"]  # new files are part of the code
    saved = save_code_diff(info, tmp_path / "run")
    assert "_diff" not in saved and (tmp_path / "run" / saved["diff_file"]).read_text() == info["_diff"]


def test_datasets_counts_complete_records_and_puts_canonical_cifar10_first_on_a_tie(tmp_path):
    """Records mode shows what `datasets` puts first: as the results page, complete runs count, canonical first."""
    from srlib.data import CANONICAL_SHA256, dataset_key
    from srlib.runs import datasets, run_dir
    from srlib.store import write_json

    def write(name: str, sha: str, seed: int, status: str = "complete") -> str:
        identity = {"name": name, "content_sha256": sha}
        write_json(run_dir(tmp_path, "smoke", dataset_key(identity), "original", seed) / "record.json",
                   {"status": status, "config": {"variant": "original", "seed": seed}, "data": {"dataset": identity}})
        return dataset_key(identity)

    partial = [write("aaa", "a" * 64, seed, "partial") for seed in (0, 1)]
    zzz, cifar = write("zzz", "b" * 64, 0), write("cifar10", CANONICAL_SHA256, 0)
    assert datasets(tmp_path, "smoke") == [cifar, zzz] and partial[0] not in datasets(tmp_path)
