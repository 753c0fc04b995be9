"""The sweep's progress line and its ETA (srlib.orchestration.reporter): what each run does, read from its log,
and the time left from one model of all the work (srlib.cost), corrected phase by phase by what the sweep
measured. The clock is injected; the replay follows the timings measured in issue 25."""

from __future__ import annotations

import re

import pytest

from srlib import cost
from srlib.config import make_config
from srlib.orchestration.reporter import Reporter
from srlib.orchestration.states import RunState
from srlib.orchestration.tasks import Phase, Task, run_phase

# A preview `make report` on a fresh 2-core CPU (issue 25): each run's minutes, and its seconds of SR upscaling;
# the analysis took 2.6 min after them. Start-up (papermill kernel, imports, data) and the bicubic upscaling
# (a second) are what we assume; the epochs share the rest.
ISSUE_25 = [("original", 0.9, 0), ("resize_x2", 1.8, 1), ("sr_x2", 5.3, 206), ("resize_x4", 6.9, 2),
            ("sr_x4", 11.0, 231)]
ANALYSIS_MIN, STARTUP_S, EPOCHS, IMAGES = 2.6, 20.0, 6, 2500


def _task(tmp_path, variant: str) -> Task:
    name = f"preview-{variant}-seed0"
    return Task(name, "train.ipynb", str(tmp_path / f"{name}.ipynb"), {}, None, variant, 0)


def _log_lines(variant: str, minutes: float, upscale_s: float) -> list[tuple[float, str]]:
    """(seconds after the run started, line) of the run's log, as srlib.train and srlib.progress write them."""
    lines, t = [], STARTUP_S
    if upscale_s:
        rate = IMAGES / upscale_s
        if variant.startswith("sr"):  # the meter's lines at each further 10 %
            lines += [(t + k * upscale_s / 10, f"[srlib] upscaling {variant}: {k * IMAGES // 10:,}/{IMAGES:,} images, "
                                               f"{rate:.1f} img/s") for k in range(1, 10)]
        t += upscale_s
        lines.append((t, f"[srlib] upscaling {variant}: {IMAGES:,} images in {upscale_s:.0f} s, {rate:,.1f} img/s"))
    epoch_s = (minutes * 60 - t) / EPOCHS
    lines += [(t + k * epoch_s, f"[srlib] {variant} seed 0 epoch {k}/{EPOCHS}: loss 2.0 train 30.00% test 30.00% "
                                f"(1.0s, 100 img/s)") for k in range(1, EPOCHS + 1)]
    return lines


def test_the_eta_holds_through_a_preview_sweep(tmp_path):
    """From the first finished run on, every progress line's ETA is within 30 % of the time truly left, while the
    SR upscaling runs (it is shown, and it never inflates the epoch rate); before anything was measured on a
    machine without earlier records the line says it is calibrating."""
    tasks = {v: _task(tmp_path, v) for v, _, _ in ISSUE_25}
    estimates = {tasks[v].name: cost.estimate_run(make_config(v, "preview", 0), [], "cpu", IMAGES if up else 0)
                 for v, _, up in ISSUE_25}
    now, lines = [0.0], []
    reporter = Reporter(lines.append, live=False, slots=1, estimates=estimates, clock=lambda: now[0],
                        after_s=cost.ANALYSIS_S)
    reporter.PLAIN_EVERY_S = 0
    end = sum(m for _, m, _ in ISSUE_25) * 60 + ANALYSIS_MIN * 60
    checked, first_done, t0 = [], False, 0.0
    for i, (variant, minutes, upscale_s) in enumerate(ISSUE_25):
        task, log = tasks[variant], _log_lines(variant, minutes, upscale_s)
        reporter.started(task, "cpu")
        states = {tasks[v].name: RunState("done" if j < i else "running" if j == i else "queued")
                  for j, (v, _, _) in enumerate(ISSUE_25)}
        while now[0] < t0 + minutes * 60:
            task.log.write_text("".join(text + "\n" for at, text in log if t0 + at <= now[0]))
            reporter.progress(states, {t.name: t for t in tasks.values()})
            eta = re.search(r"ETA (?:~(\d+)|(<1)) min$", lines[-1])
            if first_done:
                assert eta, lines[-1]
                left = end - now[0]
                checked.append((lines[-1], left))
                assert abs(float(eta[1] or 0.5) * 60 - left) <= 0.3 * left, (lines[-1], f"{left / 60:.1f} min left")
            now[0] += 2.0
        t0 += minutes * 60
        now[0] = t0
        reporter.finished(task, None)
        first_done = True
    assert "ETA calibrating" in next(line for line in lines if "original s0 starting" in line)
    assert any("sr_x4 s0 upscaling 1,250/2,500" in line for line, _ in checked)
    assert len(checked) > 700


def test_the_progress_line_shows_upscaling_and_the_eta_counts_runs_over_the_slots(tmp_path):
    """Two slots; the estimates are in plain seconds (the fallback) for two runs: resize_x4 has 3 of 4 epochs
    left at the 300 s its first took, resize_x2 240 s less the 210 s it ran, then sr_x4 starts in that slot."""
    names = ("original", "resize_x4", "resize_x2", "sr_x4")
    tasks = {v: _task(tmp_path, v) for v in names}
    now, lines = [0.0], []
    estimates = {tasks["original"].name: 60.0, tasks["resize_x2"].name: 240.0, tasks["sr_x4"].name: 960.0,
                 tasks["resize_x4"].name: cost.estimate_run(make_config("resize_x4", "smoke", 0), [], "cpu")}
    reporter = Reporter(lines.append, live=False, slots=2, estimates=estimates, clock=lambda: now[0])
    reporter.PLAIN_EVERY_S = 0
    reporter.started(tasks["original"], "cpu")
    reporter.started(tasks["resize_x4"], "cpu")
    now[0] = 90.0
    reporter.finished(tasks["original"], None)
    reporter.started(tasks["resize_x2"], "cpu")
    states = {tasks["original"].name: RunState("done"), tasks["resize_x4"].name: RunState("running"),
              tasks["resize_x2"].name: RunState("running"), tasks["sr_x4"].name: RunState("queued")}
    tasks["resize_x4"].log.write_text("[srlib] upscaling resize_x4: reused the cached 2,000 train images\n")
    reporter.progress(states, {t.name: t for t in tasks.values()})  # seen training (0 epochs) at 90 s
    tasks["resize_x2"].log.write_text("[srlib] upscaling resize_x2: 1,200/2,500 images, 11 img/s\n")
    now[0] = 390.0
    tasks["resize_x4"].log.write_text("[srlib] resize_x4 seed 0 epoch 1/4: loss 2.0 train 30% test 30% (290s)\n")
    reporter.progress(states, {t.name: t for t in tasks.values()})
    # resize_x4: 3 epochs x 300 s = 900 s; resize_x2: 240 - 300 -> 0, then sr_x4 960 s in its slot: 16 min
    assert lines[-1] == ("[sweep] 1/4 done, 2 running (resize_x4 s0 1/4, resize_x2 s0 upscaling 1,200/2,500), "
                         "1 queued, 0 failed | 6.5 min, ETA ~16 min"), lines


def test_a_runs_phase_is_read_from_the_end_of_its_log(tmp_path):
    log = tmp_path / "run.log"
    assert run_phase(log) is None
    log.write_text("[srlib] upscaling sr_x4: 1,200/2,500 images, 10.9 img/s\n sr x4: 48%|####\n")
    assert run_phase(log) == Phase("upscaling", 1200, 2500, 10.9)
    log.write_text(log.read_text() + "[srlib] upscaling sr_x4: 2,500 images in 231 s, 10.8 img/s\n")
    assert run_phase(log) == Phase("training", 0, 0, 10.8)
    log.write_text(log.read_text() + "[srlib] sr_x4 seed 0 epoch 2/6: loss 1.2 train 50% test 40% (1s)\n"
                                     "epoch 3/6:   0%|          | 0/10\n")
    assert run_phase(log) == Phase("training", 2, 6)
    log.write_text("[srlib] upscaling resize_x2: reused the cached 2,000 train + 500 test images\n")
    assert run_phase(log) == Phase("training", 0, 0)


@pytest.mark.parametrize("measured_here", [False, True])
def test_calibrating_only_without_records_and_measurements(tmp_path, measured_here):
    task = _task(tmp_path, "original")
    estimate = cost.RunEstimate(1e8, 1000.0, 2, 30.0, "x", measured_here)
    lines = []
    reporter = Reporter(lines.append, live=False, estimates={task.name: estimate}, clock=lambda: 0.0)
    reporter.PLAIN_EVERY_S = 0
    reporter.started(task, "cpu")
    reporter.progress({task.name: RunState("running")}, {task.name: task})
    assert lines[-1].endswith(", ETA ~1 min" if measured_here else ", ETA calibrating")
