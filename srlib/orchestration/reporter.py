"""The sweep in the terminal: one line per run start and end, and one progress line with what each running run
does (starting, upscaling 1,200/2,500, epoch 2/6), why the queued ones wait, and the time left (ETA): one model
over all the work left (srlib.cost), corrected by what this sweep measured in the runs' logs (`tasks.run_phase`)."""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from .states import RunState
from .tasks import Phase, Task, run_phase

if TYPE_CHECKING:
    from ..cost import RunEstimate


class Reporter:
    """One line per run start and end, and one progress line: redrawn in place on a terminal, else printed once a
    minute (a CI log stays short). `estimates`: task name -> cost.RunEstimate, or plain seconds (a run without one
    counts as the finished runs' mean). `after_s`: the analysis and the book. `clock`: seconds (tests inject it)."""

    PLAIN_EVERY_S = 60.0

    def __init__(self, log: Callable[[str], None] = print, live: bool | None = None, slots: int = 1,
                 estimates: dict[str, RunEstimate | float] | None = None, clock: Callable[[], float] = time.time,
                 after_s: float = 0.0) -> None:
        from ..cost import Measured

        self.log, self.slots, self.clock, self.after_s = log, slots, clock, after_s
        self.estimates = dict(estimates or {})
        self.live = sys.stdout.isatty() if live is None else live
        self.started_at = clock()
        self.starts: dict[str, float] = {}
        self.durations: dict[str, float] = {}  # runs that finished: name -> seconds
        self.measured = Measured()
        self._seen: dict[str, tuple[Phase | None, float]] = {}  # running run -> its phase, since when
        self._training_from: dict[str, tuple[float, int]] = {}  # running run -> (when, epochs) first seen training
        self._shown = ""
        self._last_plain = clock()

    def line(self, text: str) -> None:
        self._clear()
        self.log(text)

    def _clear(self) -> None:
        if self._shown and self.live and self.log is print:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
            self._shown = ""

    def started(self, task: Task, where: str, again: bool = False) -> None:
        self.starts[task.name] = self.clock()
        self._seen.pop(task.name, None)
        self._training_from.pop(task.name, None)
        self.line(f"[sweep] {'again' if again else 'start'}  {task.label} ({where})")

    def finished(self, task: Task, record: dict | None) -> None:
        seconds = self._seconds(task)
        if task.name in self.starts:
            self.durations[task.name] = seconds
        summary = (record or {}).get("summary") or {}
        accuracy = f"{summary['max_test_acc']:.2f}% max test accuracy, " if "max_test_acc" in summary else ""
        self.line(f"[sweep] done   {task.label}: {accuracy}{seconds / 60:.1f} min")

    def failed(self, task: Task, why: str) -> None:
        minutes = self._seconds(task) / 60
        self.line(f"[sweep] FAILED {task.label} after {minutes:.1f} min: {why}; log: {task.log}")

    def _seconds(self, task: Task) -> float:
        return self.clock() - self.starts.get(task.name, self.clock())

    def progress(self, states: dict[str, RunState], tasks: dict[str, Task]) -> None:
        counts = {s: sum(st.state == s for st in states.values()) for s in ("done", "running", "queued", "failed")}
        running = [n for n, st in states.items() if st.state == "running"]
        phases = {n: self._observe(n, run_phase(tasks[n].log)) for n in running}
        shown = []
        for name in running[:4]:
            task = tasks[name]
            shown.append(f"{task.variant} s{task.seed}" if task.variant else task.label)
            shown[-1] += f" {_phase_text(phases[name])}"
        more = f" +{len(running) - 4}" if len(running) > 4 else ""
        eta = self._eta(phases, [n for n, st in states.items() if st.state == "queued"])
        text = (f"[sweep] {counts['done']}/{len(states)} done, {counts['running']} running"
                f"{' (' + ', '.join(shown) + more + ')' if shown else ''}, {counts['queued']} queued"
                f"{_why_queued(states)}, {counts['failed']} failed | {(self.clock() - self.started_at) / 60:.1f} min"
                f"{eta}")
        if self.live and self.log is print:
            if text != self._shown:
                sys.stdout.write("\r\x1b[K" + text[:max(20, shutil.get_terminal_size((120, 20)).columns - 1)])
                sys.stdout.flush()
                self._shown = text
        elif self.clock() - self._last_plain >= self.PLAIN_EVERY_S:
            self._last_plain = self.clock()
            self.log(text)

    def _observe(self, name: str, phase: Phase | None) -> Phase | None:
        """Note when a run's phase changed, and measure from it: the upscaling rate of its kind, and its seconds
        per epoch (from the first moment it was seen training, so its upscaling never counts)."""
        now, estimate = self.clock(), self.estimates.get(name)
        if phase != self._seen.get(name, (None, 0.0))[0]:
            self._seen[name] = (phase, now)
        if phase is None or not hasattr(estimate, "flops"):
            return phase
        if phase.rate and estimate.upscale_kind != "none":
            self.measured.upscale_rate[estimate.upscale_kind] = phase.rate
        if phase.name == "training":
            since, first = self._training_from.setdefault(name, (now, phase.done))
            if phase.done > first and self._seen[name][1] == now:  # an epoch ended since the last look
                self.measured.epoch_s[estimate.flops] = (now - since) / (phase.done - first)
                self.measured.epoch_images[estimate.flops] = estimate.epoch_images
        return phase

    def _eta(self, running: dict[str, Phase | None], queued: list[str]) -> str:
        """', ETA ~N min' over all the work left, ', ETA calibrating' before anything was measured on this
        machine, '' when a run has no estimate and none has finished."""
        from .. import cost

        if not running and not queued:
            return ""
        mean = sum(self.durations.values()) / len(self.durations) if self.durations else None
        estimate = {n: self.estimates.get(n, mean) for n in [*running, *queued]}
        if any(e is None for e in estimate.values()):
            return ""
        structured = [e for e in estimate.values() if isinstance(e, cost.RunEstimate)]
        if structured and not self.measured.anything and not any(e.measured_here for e in structured):
            return ", ETA calibrating"
        work = [(0.0, self._left(n, running[n], estimate[n])) for n in running]
        work += [(0.0, self._left(n, None, estimate[n], started=False)) for n in queued]
        seconds = max(cost.finish_times(work, max(self.slots, len(running))), default=0.0) + self.after_s
        return ", ETA <1 min" if seconds < 60 else f", ETA ~{round(seconds / 60)} min"

    def _left(self, name: str, phase: Phase | None, estimate: RunEstimate | float, started: bool = True) -> float:
        """Seconds a run has left: its phases still ahead at the measured speeds, less the time already spent in
        the phase it is in."""
        now = self.clock()
        elapsed = now - self.starts.get(name, now) if started else 0.0
        if not hasattr(estimate, "flops"):  # plain seconds
            return max(0.0, estimate - elapsed)
        epoch_s = self.measured.epoch(estimate)
        in_phase = now - self._seen.get(name, (None, now))[1]
        if phase is None:
            whole = estimate.startup_s + self.measured.upscale_s(estimate) + estimate.epochs * epoch_s
            return max(0.0, whole - elapsed)
        if phase.name == "upscaling":
            upscale = self.measured.upscale_s(estimate, phase.total - phase.done)
            return max(0.0, upscale - in_phase) + estimate.epochs * epoch_s
        return max(0.0, (estimate.epochs - phase.done) * epoch_s - min(in_phase, epoch_s))

    def close(self) -> None:
        self._clear()


def _phase_text(phase: Phase | None) -> str:
    if phase is None:
        return "starting"
    if phase.name == "upscaling":
        return f"upscaling {phase.done:,}/{phase.total:,}"
    return f"{phase.done}/{phase.total}" if phase.total else "training"


def _why_queued(states: dict[str, RunState]) -> str:
    """Slurm's reasons for the queued runs: ' (Resources)', or ' (3 Priority, 2 Resources)' when they differ."""
    reasons = Counter(st.reason for st in states.values() if st.state == "queued" and st.reason)
    if len(reasons) <= 1:
        return f" ({next(iter(reasons))})" if reasons else ""
    return " (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")"

