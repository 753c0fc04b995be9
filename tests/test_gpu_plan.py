"""The window planner on a probe table, the queue from the results, and MPS start/stop against a fake binary.

CI has no GPU: the MPS measurements themselves run only on the GPU machine (srlib.orchestration.kit.probe).
The `alone` speeds below are the H200's measured ones (results/paper/gpu-2026-11-28T205721Z/timing.log,
CUDA graphs, deterministic); the sharing and 128 px rows are made up to exercise each rule, not measured.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from srlib.orchestration.kit import probe, schedule
from srlib.orchestration.kit.schedule import ModeSpeed, RunKey, RunNeed, SpeedTable

N_TRAIN, N_TEST = 50_000, 10_000
ALONE = [ModeSpeed("alone", 32, 1, 14_414.0), ModeSpeed("alone", 64, 1, 8_557.0), ModeSpeed("alone", 128, 1, 3_000.0)]


def needs(*keys: tuple[str, int], epochs: int = 45) -> list[RunNeed]:
    return [RunNeed.of(RunKey(v, s), epochs, N_TRAIN, N_TEST) for v, s in keys]


def test_finish_times_follow_the_measured_aggregate_speeds():
    table = SpeedTable([*ALONE, ModeSpeed("mps", 64, 2, 12_000.0)])
    pair = [RunNeed(RunKey("resize_x2", 0), 64, 120_000.0, 10.0), RunNeed(RunKey("sr_x2", 0), 64, 60_000.0, 10.0)]
    # alone, one after another: 10 + 120,000 / 8,557, then 10 + 60,000 / 8,557 more
    first = 10 + 120_000 / 8_557
    assert schedule.finish_times(pair, table, "alone", 1) == pytest.approx([first, first + 10 + 60_000 / 8_557])
    # under MPS both compute at 6,000 img/s each until sr_x2 ends (10 s) ...
    t1 = 10 + 60_000 / 6_000
    # ... then resize_x2 has 60,000 images left, and the 2-run rate no longer applies: the alone rate does
    assert schedule.finish_times(pair, table, "mps", 2) == pytest.approx([t1 + 60_000 / 8_557, t1])
    assert schedule.finish_times(pair, table, "processes", 2) == [float("inf")] * 2  # not measured: never planned


def test_when_sharing_is_not_faster_runs_go_one_after_another_and_no_time_is_idle():
    # Processes that only take turns: 2 runs together are slower than one (switching costs), by more than the
    # overlapped start-up of the second run saves.
    table = SpeedTable([*ALONE, *(ModeSpeed("processes", s.px, 2, 0.85 * s.images_per_s) for s in ALONE)])
    queue = needs(("original", 0), ("resize_x2", 0), ("sr_x2", 0), ("resize_x4", 0))
    plan = schedule.schedule_window(queue, table, seconds=700, window_s=700)
    assert plan.mode == "alone" and plan.slots == 1
    # original ~187 s + resize_x2 ~332 s fit 700 s; sr_x2 does not, yet it is not left waiting for its pair
    assert plan.runs == [RunKey("original", 0), RunKey("resize_x2", 0)]
    assert "not started" in plan.skipped["sr_x2 s0"] and plan.estimated_s <= 700
    plan = schedule.schedule_window(queue[1:], table, seconds=400, window_s=700)  # resize_x2 fits; then nothing more
    assert plan.runs == [RunKey("resize_x2", 0)]


def test_a_faster_sharing_mode_is_used_only_when_its_runs_were_bit_identical():
    fast = [ModeSpeed("mps", 32, 2, 25_000.0), ModeSpeed("mps", 64, 2, 15_000.0), ModeSpeed("mps", 64, 4, 16_000.0),
            ModeSpeed("mps", 32, 4, 30_000.0)]
    queue = needs(("original", 0), ("resize_x2", 0), ("sr_x2", 0))
    plan = schedule.schedule_window(queue, SpeedTable([*ALONE, *fast]), seconds=650, window_s=650)
    assert plan.mode == "mps" and plan.runs == [RunKey("original", 0), RunKey("resize_x2", 0), RunKey("sr_x2", 0)]
    assert "mps, up to" in plan.describe()[0]
    differs = [ModeSpeed(s.mode, s.px, s.n, s.images_per_s, identical=False) for s in fast]
    plan = schedule.schedule_window(queue, SpeedTable([*ALONE, *differs]), seconds=650, window_s=650)
    assert plan.mode == "alone" and len(plan.runs) == 2


def test_an_x4_run_takes_a_faster_measured_setting_when_that_makes_it_fit():
    table = SpeedTable([*ALONE, ModeSpeed("alone", 128, 1, 4_000.0, identical=False, numerics="nondeterministic")])
    queue = needs(("resize_x4", 0))
    # 45 x 53,333 images: ~800 s at 3,000 img/s (too long for 700 s), ~600 s at 4,000 img/s
    plan = schedule.schedule_window(queue, table, seconds=700, window_s=700)
    assert plan.runs == [RunKey("resize_x4", 0)] and plan.numerics == {"resize_x4 s0": "nondeterministic"}
    assert plan.train_args(RunKey("resize_x4", 0)) == ["--no-deterministic"]


def test_a_run_that_fits_no_window_spans_two_and_one_that_fits_a_fresh_window_waits():
    queue = needs(("resize_x4", 0), ("sr_x4", 0), ("original", 1))
    plan = schedule.schedule_window(queue, SpeedTable(ALONE), seconds=500, window_s=700)
    # ~800 s alone at 128 px: no window holds it, so it goes first (the queue's order), alone, and spans two
    assert plan.runs == [] and plan.span == RunKey("resize_x4", 0) and set(plan.skipped) == {"sr_x4 s0", "original s1"}
    assert "checkpoint comes back" in " ".join(plan.describe())
    # it would fit a fresh window: it waits for one, and the time left goes to a later run that fits
    plan = schedule.schedule_window(queue, SpeedTable(ALONE), seconds=500, window_s=1000)
    assert plan.span is None and plan.runs == [RunKey("original", 1)]
    plan = schedule.schedule_window(queue, SpeedTable(ALONE), seconds=100, window_s=700)  # too little to be worth it
    assert plan.span is None and plan.runs == []


def _record(folder: Path, variant: str, seed: int, sha: str, status: str = "complete") -> None:
    path = folder / "paper" / variant / f"seed{seed}" / "record.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": status, "config": {"variant": variant, "seed": seed},
                                "data": {"dataset": {"content_sha256": sha}}}))


def test_the_queue_is_what_the_results_lack_on_this_data_in_study_order(tmp_path):
    lossless, jpeg = "c8cc" + "0" * 60, "653d" + "0" * 60
    _record(tmp_path, "original", 0, jpeg)  # on other data: not done
    _record(tmp_path, "sr_x2", 0, jpeg)
    _record(tmp_path, "resize_x2", 0, lossless)
    _record(tmp_path, "resize_x4", 0, lossless, status="partial")
    queue = schedule.queue(tmp_path, lossless)
    assert [str(k) for k in queue[:5]] == ["original s0", "sr_x2 s0", "resize_x4 s0", "sr_x4 s0", "original s1"]
    assert len(queue) == 14 and str(queue[-1]) == "sr_x4 s2"


def fake_mps_binary(folder: Path) -> Path:
    """Records how it was called (arguments, stdin, the MPS variables) into $CUDA_MPS_LOG_DIRECTORY/calls."""
    path = folder / "nvidia-cuda-mps-control"
    path.write_text("#!/bin/sh\n"
                    'log="$CUDA_MPS_LOG_DIRECTORY/calls"\n'
                    'if [ "$1" = "-d" ]; then\n'
                    '  pct="${CUDA_MPS_ACTIVE_THREAD_PERCENTAGE:-unset}"\n'
                    '  echo "start pipe=$CUDA_MPS_PIPE_DIRECTORY pct=$pct" >>"$log"\n'
                    '  touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0\n'
                    "fi\n"
                    'read cmd; echo "stdin=$cmd" >>"$log"; rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_mps_daemon_starts_with_its_own_folders_and_quits_even_when_the_body_fails(tmp_path, monkeypatch):
    binary = fake_mps_binary(tmp_path)
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "50")
    with pytest.raises(RuntimeError, match="inside"), probe.mps_daemon(binary, root=tmp_path) as env:
        pipe, logs = Path(env["CUDA_MPS_PIPE_DIRECTORY"]), Path(env["CUDA_MPS_LOG_DIRECTORY"])
        assert pipe.parent == tmp_path and logs.parent == tmp_path and (pipe / "control").is_file()
        assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in env
        raise RuntimeError("inside")
    assert (logs / "calls").read_text().splitlines() == [f"start pipe={pipe} pct=unset", "stdin=quit"]
    assert not (pipe / "control").exists()


def test_mps_daemon_that_cannot_start_is_one_clear_error_and_the_binary_is_found(tmp_path, monkeypatch):
    broken = tmp_path / "bin" / "nvidia-cuda-mps-control"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'An instance of this daemon is already running' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(probe.ProbeError, match="already running"), probe.mps_daemon(broken, root=tmp_path):
        pass
    monkeypatch.setenv("PATH", os.defpath)
    assert probe.find_mps_control(search=(str(broken.parent),)) == broken
    assert probe.find_mps_control(search=(str(tmp_path / "none"),)) is None


def test_probe_table_lines_and_the_planner_read_the_same_rows():
    table = {"rows": [{"mode": "alone", "px": 32, "n": 1, "images_per_s": 14_414.0, "peak_fraction": 0.06,
                       "identical": None, "numerics": "default"},
                      {"mode": "mps", "px": 32, "n": 2, "images_per_s": 20_000.0, "peak_fraction": 0.083,
                       "identical": False, "numerics": "default"}]}
    lines = probe.table_lines(table)
    assert "of H200 bf16 peak" in lines[0]  # one GPU's yardstick, whichever GPU measured
    assert lines[1].split() == ["alone", "32", "1", "default", "14414", "6.0%", "reference"]
    assert lines[2].split()[-1] == "no"
    speeds = SpeedTable.from_json(table["rows"])
    assert speeds.usable_modes() == ["alone"] and speeds.aggregate("mps", 32, 4) == 20_000.0


def test_probe_workers_run_in_step_and_match_the_run_alone(monkeypatch, one_thread):
    """The worker protocol of the mps / processes modes, for real on the CPU: N processes, one phase after another,
    each run's weights after the steps bit-identical to the same run in this process."""
    from srlib.config import make_config

    config = make_config("original", "smoke", 0, width=4, batch_size=8)
    import torch

    _, alone = probe.time_in_process(32, 1, config, torch.device("cpu"), steps=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    measured = probe.time_in_processes([(32, 1), (32, 2)], config, 3, env, timeout_s=300, device="cpu")
    assert set(measured) == {(32, 1), (32, 2)}
    for (_, n), (img_s, hashes) in measured.items():
        assert img_s > 0 and hashes == alone * n


def test_probe_table_marks_what_differs_from_the_run_alone_and_quits_mps(tmp_path, monkeypatch):
    """The probe's bookkeeping with the timings stubbed (no GPU here): every mode and size, identical or not
    against the run alone (the reference, compared with nothing), the 128 px numerics the planner may choose, the
    MPS daemon started for the workers and quit afterwards."""
    import torch

    from srlib.config import make_config

    def in_process(px, n, config, device, steps=40, variant="default"):
        return 1000.0 * n, [f"w{px}" if variant == "default" else f"other{px}"] * n

    def in_processes(phases, config, steps, env, timeout_s, device="cuda"):
        assert env["CUDA_MPS_PIPE_DIRECTORY"].startswith(str(tmp_path))
        return {(px, n): (900.0 * n, [f"w{px}" if px != 64 else "other"] * n) for px, n in phases}

    binary = fake_mps_binary(tmp_path)
    monkeypatch.setattr(probe, "time_in_process", in_process)
    monkeypatch.setattr(probe, "time_in_processes", in_processes)
    monkeypatch.setattr(probe, "find_mps_control", lambda: binary)
    original = probe.mps_daemon
    monkeypatch.setattr(probe, "mps_daemon", lambda b: original(b, root=tmp_path))
    table = probe.probe(make_config("original", "paper", 0), log=lambda *_: None, device=torch.device("cpu"))
    rows = {(r["mode"], r["px"], r["n"], r["numerics"]): r for r in table["rows"]}
    assert {k[:3] for k in rows} == {("alone", px, 1) for px in (32, 64, 128)} | {
        ("mps", px, n) for px in (32, 64, 128) for n in (2, 4)}  # only what `kit run` can start
    assert {k[3] for k in rows} == {"default", "nondeterministic", "compile"}  # the numerics the planner may choose
    assert all(rows[("alone", px, 1, "default")]["identical"] is None for px in (32, 64, 128))  # the reference
    assert rows[("mps", 64, 2, "default")]["identical"] is False and rows[("mps", 32, 4, "default")]["identical"]
    assert rows[("alone", 128, 1, "nondeterministic")]["identical"] is False
    assert table["mps"] == str(binary)
    speeds = SpeedTable.from_json(table["rows"])
    assert speeds.usable_modes() == ["alone"]  # mps differed at 64 px
    calls = next(tmp_path.glob("srlib-mps-log-*/calls")).read_text().splitlines()
    assert calls[0].startswith("start") and calls[-1] == "stdin=quit"


def test_the_probe_times_the_model_and_optimizer_training_builds():
    """One builder (srlib.train.build_training): the probe's run starts from training's initial weights with
    training's optimizer settings (it used to leave out the weight decay)."""
    import torch

    from srlib.config import make_config
    from srlib.numerics import resolve_numerics
    from srlib.train import build_training

    cpu = torch.device("cpu")
    config = make_config("original", "smoke", 0, width=4, weight_decay=5e-4)
    numerics = resolve_numerics(config, cpu)
    model, optimizer, _ = build_training(config, cpu, numerics)
    run = probe.ProbeRun(32, config, cpu, numerics)
    assert run.optimizer.param_groups[0]["weight_decay"] == optimizer.param_groups[0]["weight_decay"] == 5e-4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), run.model.state_dict().values(),
                                                 strict=True))
