"""The sweep's ETA on a made-up schedule: each run's estimate from the plan (srlib.cost), corrected by what the
finished runs and the running runs' epochs measured, laid out over the slots. The clock is injected."""

from __future__ import annotations

import pytest

from srlib.orchestration.progress import Reporter, eta_seconds
from srlib.orchestration.states import RunState
from srlib.orchestration.tasks import Task


def test_queued_runs_wait_for_the_first_free_slot():
    # Two slots busy for 100 s and 400 s more; the queue (200 s, 50 s) starts as they free: 100+200 = 300, then
    # 300+50 = 350 on the slot that freed first, against 400 for the long run.
    assert eta_seconds([(100, 0, None), (400, 0, None)], [200, 50], [], slots=2) == 400
    assert eta_seconds([(100, 0, None), (400, 0, None)], [200, 250], [], slots=2) == 550
    # A free slot starts a queued run now; more slots than runs: the longest run decides.
    assert eta_seconds([], [30, 60], [], slots=4) == 60
    assert eta_seconds([], [], [], slots=2) == 0


def test_measured_epochs_and_finished_runs_correct_the_estimates():
    # 2 of 8 epochs in 120 s: 6 left at 60 s each, whatever the estimate said.
    assert eta_seconds([(1000, 120, (2, 8))], [], [], slots=1) == pytest.approx(360)
    # The finished runs took 1.5x their estimates: a queued run's estimate, and a running run's without an
    # epoch yet, are scaled by it.
    finished = [(90, 60), (60, 40)]
    assert eta_seconds([(100, 30, None)], [200], finished, slots=1) == pytest.approx(150 - 30 + 300)


def test_the_progress_line_says_when_the_last_run_ends(tmp_path):
    """A 32 px run is ~16x faster than a 128 px one: averaging the finished runs' durations (the sweep's ETA until
    now) would say under a minute here; the runs' own estimates say 26 minutes."""
    now = [0.0]
    names = {v: f"preview-{v}-seed0" for v in ("original", "resize_x4", "resize_x2", "sr_x4")}
    tasks = {v: Task(n, "train.ipynb", str(tmp_path / f"{n}.ipynb"), {}, None, v, 0) for v, n in names.items()}
    estimates = {names["original"]: 60.0, names["resize_x4"]: 960.0, names["resize_x2"]: 240.0,
                 names["sr_x4"]: 960.0}
    lines: list[str] = []
    reporter = Reporter(lines.append, live=False, slots=2, estimates=estimates, clock=lambda: now[0])
    reporter.PLAIN_EVERY_S = 0
    reporter.started(tasks["original"], "cpu")
    reporter.started(tasks["resize_x4"], "cpu")
    now[0] = 90.0  # original took 90 s against 60 estimated: the queued runs will take 1.5x theirs
    reporter.finished(tasks["original"], None)
    reporter.started(tasks["resize_x2"], "cpu")
    now[0] = 300.0
    tasks["resize_x4"].log.write_text("[srlib] resize_x4 seed 0 epoch 1/4: loss 2.0 train 30% test 30% (300s)\n")
    states = {names["original"]: RunState("done"), names["resize_x4"]: RunState("running"),
              names["resize_x2"]: RunState("running"), names["sr_x4"]: RunState("queued")}
    reporter.progress(states, {t.name: t for t in tasks.values()})
    # resize_x4: 3 epochs left at 300 s each = 900 s; resize_x2: 240 x 1.5 - 210 s = 150 s, then that slot runs
    # sr_x4: 150 + 960 x 1.5 = 1590 s, the last to end: 26.5 min.
    assert lines[-1] == ("[sweep] 1/4 done, 2 running (resize_x4 s0 1/4, resize_x2 s0 starting), 1 queued, 0 failed "
                         "| 5.0 min, ETA ~26 min"), lines
