"""`srlib bench`, benchmarks/accuracy_check.py and scripts/gpu_bench.sh: behaviour and output on tiny settings,
never speed. One test runs a real (tiny) benchmark, through the GPU script's dry run; the others are fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from srlib import bench
from srlib.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAIN_KEYS = {"px", "steps", "warmup_steps", "baseline_img_s", "srlib_img_s", "ratio", "baseline_data_share",
              "srlib_data_share", "baseline_block_seconds", "srlib_block_seconds"}
UPSCALE_KEYS = {"scale", "naive_img_s", "srlib_img_s", "ratio", "chunk_size"}


def check_bench_json(result: dict, px: list[int]) -> None:
    assert result["schema"] == bench.BENCH_SCHEMA and result["device"] == "cpu"
    assert {"settings", "provenance", "load_avg", "train", "upscale", "upscale_skipped"} <= set(result)
    assert "accuracy" not in result and "target" not in result  # moved out / dropped in schema 2
    assert result["settings"]["srlib_numerics"]["memory_format"] == "contiguous"  # channels_last is GPU-only
    assert [row["px"] for row in result["train"]] == px
    for row in result["train"]:
        assert TRAIN_KEYS <= set(row) and row["steps"] >= 1
        assert row["baseline_img_s"] > 0 and row["srlib_img_s"] > 0
        assert row["ratio"] == pytest.approx(row["srlib_img_s"] / row["baseline_img_s"])
        assert 0 < row["baseline_data_share"] and 0 < row["srlib_data_share"]
        assert len(row["srlib_block_seconds"]) == row["steps"]  # CPU: one block per step
    assert [row["scale"] for row in result["upscale"]] == [2, 4] and result["upscale_skipped"] is None
    for row in result["upscale"]:
        assert UPSCALE_KEYS <= set(row) and row["naive_img_s"] > 0 and row["srlib_img_s"] > 0
        assert row["ratio"] == pytest.approx(row["srlib_img_s"] / row["naive_img_s"])
    assert result["provenance"]["device"]["type"] == "cpu" and "commit" in result["provenance"]["git"]


def test_gpu_script_dry_run_runs_bench_accuracy_check_and_training(tmp_path, imagefolder, weights_dir):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SRLIB_DATA": str(imagefolder),
           "SRLIB_WEIGHTS_DIR": str(weights_dir), "GPU_CACHE": str(tmp_path / "no-gpu-cache")}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    result = json.loads((out / "bench_gpu.json").read_text())
    check_bench_json(result, [32])  # the dry run measures 32 px
    assert result["settings"]["train_images"].startswith("cifar10")
    printed = (out / "bench.log").read_text()
    assert "32 px  baseline" in printed and "x2  naive" in printed and "wrote" in printed

    accuracy = json.loads((out / "accuracy_gpu.json").read_text())
    runs = accuracy["runs"]
    assert accuracy["settings"]["epochs"] == 1 and accuracy["device"] == "cpu"
    assert (runs[0]["precision"], runs[0]["memory_format"]) == ("fp32", "contiguous")
    assert all(0 <= r["final_test_acc"] <= 100 and 0 <= r["agreement_with_first"] <= 1 for r in runs)
    assert runs[0]["agreement_with_first"] == 1.0 and [r["seed"] for r in runs] == [0] * (len(runs) - 1) + [1]

    record = json.loads((out / "paper_original_record.json").read_text())
    assert record["status"] == "complete" and len(record["epochs"]) == 1 and record["config"]["profile"] == "smoke"
    assert (out / "paper_original_predictions.npz").is_file() and "done" in (out / "gpu_bench.log").read_text()


def test_bench_rejects_nonsense_settings(capsys):
    for argv, message in ((["--steps", "0"], "--steps >= 1"), (["--px", "48"], "multiple of 32"),
                          (["--device", "tpu"], "unknown device 'tpu'")):
        assert main(["bench", *argv]) == 2
        assert message in capsys.readouterr().err


def test_bench_cli_passes_its_options_and_writes_the_json(monkeypatch, tmp_path):
    seen = {}

    def fake_run_bench(**kwargs):
        seen.update(kwargs)
        return {"fake": True}

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench, "format_table", lambda result: "table")
    out = tmp_path / "results" / "bench.json"
    assert main(["bench", "--device", "cpu", "--px", "32", "64", "--json", str(out)]) == 0
    assert seen["device"] == "cpu" and seen["px"] == [32, 64] and seen["diff_dir"] == out.parent
    assert json.loads(out.read_text()) == {"fake": True}


def test_format_table_shows_skips_and_failed_naive_runs():
    result = {"device": "cuda", "load_avg": {"start": None, "end": None},
              "settings": {"torch_threads": 4, "model": "resnet18 width 64", "batch_size": 32, "baseline_workers": 2,
                           "srlib_numerics": {"precision": "bf16-autocast", "memory_format": "channels_last"},
                           "upscale_images": 256},
              "train": [{"px": 64, "baseline_img_s": 100.0, "srlib_img_s": 350.0, "ratio": 3.5,
                         "baseline_data_share": 0.5, "srlib_data_share": 0.01}],
              "upscale": [{"scale": 4, "naive_img_s": None, "srlib_img_s": 80.0, "ratio": None}]}
    table = bench.format_table(result)
    assert "64 px  baseline    100.0  srlib    350.0   3.50x" in table and "bf16-autocast" in table
    assert "x4  naive -  srlib     80.0  -" in table
    skipped = bench.format_table({**result, "upscale": [], "upscale_skipped": "no weights"})
    assert skipped.endswith("SR upscaling skipped: no weights")


def test_pipelines_take_turns_and_cpu_times_every_step():
    calls = []
    runs = {name: (lambda n, name=name: calls.append((name, n))) for name in ("baseline", "srlib")}
    seconds = bench.interleaved(runs, warmup=2, steps=3, device=torch.device("cpu"))
    assert calls == [("baseline", 2), ("srlib", 2),  # warm-up
                     ("baseline", 1), ("srlib", 1), ("srlib", 1), ("baseline", 1), ("baseline", 1), ("srlib", 1)]
    assert [len(s) for s in seconds.values()] == [3, 3]


def test_the_srlib_pipeline_is_train_epoch_itself(monkeypatch):
    monkeypatch.setattr(bench, "WIDTH", 8)  # cheap; the pipeline is the same at any width
    real, images_per_call = bench.train_epoch, []

    def spy(model, optimizer, data, *args, **kwargs):
        images_per_call.append(len(data.train_y))
        assert torch.are_deterministic_algorithms_enabled()  # as inside srlib.train.train
        return real(model, optimizer, data, *args, **kwargs)

    monkeypatch.setattr(bench, "train_epoch", spy)
    images = np.random.default_rng(0).integers(0, 256, (96, 3, 32, 32), dtype=np.uint8)
    run, _, numerics = bench.srlib_steps(images, np.arange(96) % 10, torch.device("cpu"))
    run(2)
    run(1)
    assert images_per_call == [2 * bench.BATCH, bench.BATCH] and numerics.deterministic
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is put back


def test_without_data_the_bench_uses_seeded_noise(monkeypatch):
    monkeypatch.delenv("SRLIB_DATA", raising=False)
    images, labels, source = bench.source_images(40)  # conftest points the data dir at an empty folder
    assert images.shape == (40, 3, 32, 32) and images.dtype == np.uint8 and labels.shape == (40,)
    assert source.startswith("synthetic")
    assert np.array_equal(images, bench.source_images(40)[0])


def test_source_images_cycle_a_small_dataset(imagefolder, monkeypatch):
    monkeypatch.setenv("SRLIB_DATA", str(imagefolder))
    images, labels, _ = bench.source_images(100)  # the fixture has 60 training images
    assert images.shape == (100, 3, 32, 32) and set(labels.tolist()) == set(range(10))


def test_resize_and_step_plan():
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    resized = bench.resize(images, 64)
    assert resized.shape == (2, 3, 64, 64) and resized.dtype == np.uint8 and bench.resize(images, 32) is images
    cpu = torch.device("cpu")
    assert bench.step_counts(32, 10, cpu) == (2, 10)
    assert bench.step_counts(128, 10, cpu) == (1, 3)  # fewer steps where each costs 16x more
    assert bench.step_counts(128, 1, cpu) == (1, 1)
