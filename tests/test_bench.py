"""`srlib bench` and scripts/gpu_bench.sh: behaviour and output schema on tiny settings, never speed."""

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
TRAIN_KEYS = {"px", "baseline_img_s", "srlib_img_s", "ratio"}
UPSCALE_KEYS = {"scale", "naive_img_s", "srlib_img_s", "ratio"}


def check_schema(result: dict, px: list[int]) -> None:
    assert result["schema"] == bench.BENCH_SCHEMA and result["device"] == "cpu"
    assert {"settings", "provenance", "load_avg", "train", "upscale", "accuracy"} <= set(result)
    assert [row["px"] for row in result["train"]] == px
    for row in result["train"]:
        assert TRAIN_KEYS <= set(row) and row["steps"] >= 1
        assert row["baseline_img_s"] > 0 and row["srlib_img_s"] > 0
        assert row["ratio"] == pytest.approx(row["srlib_img_s"] / row["baseline_img_s"])
        assert 0 < row["baseline_data_share"] and 0 < row["srlib_data_share"]
    assert [row["scale"] for row in result["upscale"]] == [2, 4]
    for row in result["upscale"]:
        assert UPSCALE_KEYS <= set(row) and row["naive_img_s"] > 0 and row["srlib_img_s"] > 0
        assert row["ratio"] == pytest.approx(row["srlib_img_s"] / row["naive_img_s"])
    assert result["provenance"]["device"]["type"] == "cpu" and result["target"]["cpu_train_ratio"] == 3.0


def test_tiny_bench_writes_the_documented_json(tmp_path, imagefolder, weights_dir, monkeypatch, capsys):
    monkeypatch.setenv("SRLIB_DATA", str(imagefolder))
    out = tmp_path / "results" / "bench.json"
    assert main(["bench", "--px", "16", "--steps", "1", "--images", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    check_schema(result, [16])
    assert result["settings"]["train_images"].startswith("cifar10")
    runs = result["accuracy"]["runs"]
    assert [r["precision"] for r in runs][:2] == ["fp32", "fp32"]
    assert [r["memory_format"] for r in runs][:2] == ["contiguous", "channels_last"]
    assert all(0 <= r["final_test_acc"] <= 100 and 0 <= r["agreement_with_first"] <= 1 for r in runs)
    assert runs[0]["agreement_with_first"] == 1.0 and [r["seed"] for r in runs][-1] == 1  # the seed-noise run
    printed = capsys.readouterr().out
    assert "ratio" in printed and "x2" in printed and "accuracy check" in printed


def test_bench_rejects_nonsense_settings(capsys):
    assert main(["bench", "--steps", "0"]) == 2
    assert "--steps >= 1" in capsys.readouterr().err
    assert main(["bench", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_bench_cli_passes_device_and_accuracy_switch(monkeypatch, tmp_path):
    seen = {}

    def fake_run_bench(**kwargs):
        seen.update(kwargs)
        return {"fake": True}

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench, "format_table", lambda result: "table")
    assert main(["bench", "--device", "cpu", "--no-accuracy", "--px", "32"]) == 0
    assert seen["device"].type == "cpu" and seen["accuracy"] is False and seen["px"] == [32]


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
    assert bench.resize(images, 64).shape == (2, 3, 64, 64) and bench.resize(images, 32) is images
    cpu = torch.device("cpu")
    assert bench.plan_steps(32, 10, cpu) == (2, 10)
    assert bench.plan_steps(128, 10, cpu) == (1, 3)  # fewer steps where each costs 16x more
    assert bench.plan_steps(128, 1, cpu) == (1, 1)


def test_gpu_script_dry_run_end_to_end(tmp_path, imagefolder, weights_dir):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SRLIB_DATA": str(imagefolder),
           "SRLIB_WEIGHTS_DIR": str(weights_dir), "GPU_CACHE": str(tmp_path / "no-gpu-cache")}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    check_schema(json.loads((out / "bench_gpu.json").read_text()), [16])  # the dry run measures 16 px
    epochs = json.loads((out / "paper_original_epochs.json").read_text())
    assert epochs["complete"] and len(epochs["epochs"]) == 1 and epochs["config"]["profile"] == "smoke"
    assert (out / "paper_original_record.json").is_file() and "done" in (out / "gpu_bench.log").read_text()
