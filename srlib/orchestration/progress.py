"""The sweep in the terminal: one line per run start and end, and one progress line with each running run's
epoch, why the queued ones wait, and the time left (ETA) from the one cost model (srlib.cost)."""

from __future__ import annotations

import heapq
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable

from .states import RunState
from .tasks import Task, epoch_progress


def eta_seconds(running: list[tuple[float, float, tuple[int, int] | None]], queued: list[float],
                finished: list[tuple[float, float]], slots: int) -> float:
    """Seconds until the last run ends.

    `running`: (estimated seconds, seconds since it started, (epochs done, epochs) from its log or None);
    `queued`: estimated seconds, in the order they will start; `finished`: (measured, estimated) seconds of the
    runs that ended, whose ratio (srlib.cost.correction) scales the estimates of the runs that have not measured
    an epoch yet. The runs are laid out over `slots`: a queued run starts when the first slot frees."""
    from .. import cost  # here, not at the top: srlib.cost brings torch, which `srlib status` does not need

    factor = cost.correction(finished)
    free_at = [cost.remaining_seconds(estimate * factor, elapsed, *(epochs or (None, None)))
               for estimate, elapsed, epochs in running]
    free_at += [0.0] * max(0, slots - len(running))
    if not free_at:
        return 0.0
    heapq.heapify(free_at)
    for estimate in queued:
        heapq.heappush(free_at, heapq.heappop(free_at) + estimate * factor)
    return max(free_at)


class Reporter:
    """One line per run start and end, and one progress line: redrawn in place on a terminal, else printed
    once a minute (so a CI log or `make report` stays short).

    `estimates`: each run's estimated seconds (task name -> seconds, from the sweep's plan); a run without one
    counts as long as the finished runs took on average. `clock`: seconds, e.g. time.time (injected by tests)."""

    PLAIN_EVERY_S = 60.0

    def __init__(self, log: Callable[[str], None] = print, live: bool | None = None, slots: int = 1,
                 estimates: dict[str, float] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.log, self.slots, self.clock = log, slots, clock
        self.estimates = dict(estimates or {})
        self.live = sys.stdout.isatty() if live is None else live
        self.started_at = clock()
        self.starts: dict[str, float] = {}
        self.durations: dict[str, float] = {}  # runs that finished: name -> seconds
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
        found = {n: epoch_progress(tasks[n].log) for n in running}
        epochs = []
        for name in running[:4]:
            task = tasks[name]
            short = f"{task.variant} s{task.seed}" if task.variant else task.label
            epochs.append(f"{short} {found[name][0]}/{found[name][1]}" if found[name] else f"{short} starting")
        more = f" +{len(running) - 4}" if len(running) > 4 else ""
        eta = self._eta(found, [n for n, st in states.items() if st.state == "queued"])
        text = (f"[sweep] {counts['done']}/{len(states)} done, {counts['running']} running"
                f"{' (' + ', '.join(epochs) + more + ')' if epochs else ''}, {counts['queued']} queued"
                f"{_why_queued(states)}, {counts['failed']} failed | {(self.clock() - self.started_at) / 60:.1f} min"
                f"{eta}")
        if self.live and self.log is print:
            if text != self._shown:
                sys.stdout.write("\r\x1b[K" + text[:max(20, _columns() - 1)])
                sys.stdout.flush()
                self._shown = text
        elif self.clock() - self._last_plain >= self.PLAIN_EVERY_S:
            self._last_plain = self.clock()
            self.log(text)

    def _eta(self, running: dict[str, tuple[int, int] | None], queued: list[str]) -> str:
        """', ETA ~N min' from each run's estimate, corrected by what was measured; '' when a run has none."""
        if not running and not queued:
            return ""
        mean = sum(self.durations.values()) / len(self.durations) if self.durations else None
        estimate = {n: self.estimates.get(n, mean) for n in [*running, *queued]}
        if any(e is None for e in estimate.values()):
            return ""
        now = self.clock()
        seconds = eta_seconds([(estimate[n], now - self.starts.get(n, now), epochs) for n, epochs in running.items()],
                              [estimate[n] for n in queued],
                              [(s, self.estimates[n]) for n, s in self.durations.items() if n in self.estimates],
                              self.slots)
        return ", ETA <1 min" if seconds < 60 else f", ETA ~{round(seconds / 60)} min"

    def close(self) -> None:
        self._clear()


def _why_queued(states: dict[str, RunState]) -> str:
    """Slurm's reasons for the queued runs: ' (Resources)', or ' (3 Priority, 2 Resources)' when they differ."""
    reasons = Counter(st.reason for st in states.values() if st.state == "queued" and st.reason)
    if not reasons:
        return ""
    if len(reasons) == 1:
        return f" ({next(iter(reasons))})"
    return " (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")"


def _columns() -> int:
    return shutil.get_terminal_size((120, 20)).columns
