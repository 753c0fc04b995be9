"""What a GPU session runs: the queue from what the results lack, and the runs that complete in the time left.

Speeds come only from the probe's measurements (kit.probe): nothing assumes that sharing the GPU is faster; where
the probe says it is not, the runs go one after another. A run starts only if it is estimated to end within the
time left; one that fits starts even when the run before it does not, so no time is left idle. A run that cannot
end within any session is started alone with a deadline and its checkpoint comes back (kit.partial). Run costs in
trained images and start-up are the cost model's (srlib.cost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...config import PAPER_SEEDS, STUDY_VARIANTS, VARIANTS
from ...cost import RUN_STARTUP_S, epoch_images
from ...cost import finish_times as simulate

SAFETY = 1.1  # estimates are stretched by this before they are compared with the time left
FASTER_NUMERICS = {"nondeterministic": ["--no-deterministic"], "compile": ["--compile", "--no-cuda-graphs"]}
SPAN_MIN_S = 240.0  # a spanning run is started only with at least this much time: a few epochs and its checkpoint


@dataclass(frozen=True)
class RunKey:
    variant: str
    seed: int

    def __str__(self) -> str:
        return f"{self.variant} s{self.seed}"


def queue(results: Path, content_sha256: str, profile: str = "paper", seeds: tuple[int, ...] = PAPER_SEEDS,
          variants: tuple[str, ...] = STUDY_VARIANTS) -> list[RunKey]:
    """The runs `results` lacks, in study order: per seed original, resize_x2, sr_x2, resize_x4, sr_x4. A record
    made on other data (another content hash, e.g. the JPEG copy) does not count as done."""
    from ...runs import load_records

    done = {(r["config"]["variant"], r["config"]["seed"]) for r in load_records(results, profile, predictions=False)
            if r.get("data", {}).get("dataset", {}).get("content_sha256") == content_sha256}
    return [RunKey(v, s) for s in seeds for v in variants if (v, s) not in done]


@dataclass(frozen=True)
class ModeSpeed:
    mode: str  # alone | mps | processes
    px: int
    n: int  # runs sharing the GPU
    images_per_s: float  # all n runs together
    # Every run's weights after the probe's steps were bit-identical to the run alone's; None: the run alone itself.
    identical: bool | None = True
    numerics: str = "default"  # default | nondeterministic | compile (alone only)
    peak_fraction: float | None = None  # of the H200's bf16 rate (kit.probe.H200_BF16_FLOPS), whatever the GPU


@dataclass
class SpeedTable:
    rows: list[ModeSpeed]

    def aggregate(self, mode: str, px: int, n: int, numerics: str = "default") -> float | None:
        """Measured images/s of `n` runs together; for an unmeasured n, that of the largest measured n below it
        (a third run is assumed to add nothing). One run computing is a run alone, whatever the mode."""
        own = [r for r in self.rows if r.mode == mode and r.px == px and r.numerics == numerics]
        if not own:
            return None
        measured = {r.n: r.images_per_s for r in own if r.n <= n}
        alone = [r.images_per_s for r in self.rows
                 if r.mode == "alone" and r.n == 1 and r.px == px and r.numerics == numerics]
        if 1 not in measured and alone:
            measured[1] = alone[0]
        return measured[max(measured)] if measured else None

    def usable_modes(self) -> list[str]:
        """Modes whose runs were bit-identical to runs alone (sharing must not change the numbers)."""
        rows = [r for r in self.rows if r.numerics == "default"]  # other numerics are not meant to be identical
        modes = dict.fromkeys(r.mode for r in rows)
        return [m for m in modes if all(r.identical is not False for r in rows if r.mode == m)]

    def numerics_at(self, px: int) -> list[str]:
        """"default", then the faster numerics (FASTER_NUMERICS) measured alone at `px`."""
        return ["default", *(r.numerics for r in self.rows if r.mode == "alone" and r.px == px and r.n == 1
                             and r.numerics in FASTER_NUMERICS)]

    @classmethod
    def from_json(cls, rows: list[dict]) -> SpeedTable:
        fields = ModeSpeed.__dataclass_fields__
        return cls([ModeSpeed(**{k: v for k, v in r.items() if k in fields}) for r in rows])


@dataclass(frozen=True)
class RunNeed:
    key: RunKey
    px: int
    images: float  # trained-image equivalents (srlib.cost.epoch_images: test images weighed), over the epochs left
    setup_s: float  # process start-up and upscaling, before the run computes

    @classmethod
    def of(cls, key: RunKey, epochs_left: int, n_train: int, n_test: int, upscale_s: float = 0.0) -> RunNeed:
        px = VARIANTS[key.variant].px
        return cls(key, px, epochs_left * epoch_images(n_train, n_test), RUN_STARTUP_S + upscale_s)


def finish_times(needs: list[RunNeed], table: SpeedTable, mode: str, slots: int,
                 numerics: list[str] | None = None) -> list[float]:
    """Seconds until each run ends, started in order with at most `slots` at a time (srlib.cost.finish_times): a
    computing run gets 1/n of the aggregate rate measured for n runs of its own size (mixed sizes approximated by
    same-size measurements). inf where a speed was not measured."""
    numerics = numerics or ["default"] * len(needs)

    def rate(i: int, n: int) -> float | None:
        total = table.aggregate(mode, needs[i].px, n, numerics[i])
        return total / n if total else None

    return simulate([(n.setup_s, n.images) for n in needs], slots, rate)


@dataclass
class WindowSchedule:
    mode: str
    slots: int
    runs: list[RunKey] = field(default_factory=list)
    numerics: dict[str, str] = field(default_factory=dict)  # str(RunKey) -> numerics, where not the default
    estimated_s: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    span: RunKey | None = None  # started alone with a deadline; its checkpoint comes back

    def train_args(self, key: RunKey) -> list[str]:
        return FASTER_NUMERICS.get(self.numerics.get(str(key), "default"), [])

    def describe(self) -> list[str]:
        lines = [f"mode {self.mode}, up to {self.slots} at a time: " + (", ".join(
            f"{k}{' (' + self.numerics[str(k)] + ')' if str(k) in self.numerics else ''}" for k in self.runs)
            or "no run completes in the time left") + (f"; ~{self.estimated_s:.0f} s" if self.runs else "")]
        if self.span:
            lines.append(f"{self.span}: cannot end within one session; started alone until the deadline, its "
                         "checkpoint comes back in pieces (srlib kit ship) and resumes in a later session")
        lines += [f"{k}: {why}" for k, why in self.skipped.items()]
        return lines


def _greedy(needs: list[RunNeed], table: SpeedTable, mode: str, slots: int, seconds: float) -> WindowSchedule:
    schedule = WindowSchedule(mode, slots)
    chosen: list[RunNeed] = []
    chosen_numerics: list[str] = []
    for need in needs:
        for numerics in table.numerics_at(need.px) if mode == "alone" else ["default"]:
            times = finish_times(chosen + [need], table, mode, slots, chosen_numerics + [numerics])
            if max(times) * SAFETY <= seconds:
                chosen.append(need)
                chosen_numerics.append(numerics)
                schedule.estimated_s = max(times) * SAFETY
                break
        else:
            alone = finish_times([need], table, mode, 1)[0] * SAFETY
            schedule.skipped[str(need.key)] = (f"not started: ~{alone:.0f} s alone in mode {mode}, with the runs "
                                               f"before it more than the {seconds:.0f} s left")
    schedule.runs = [n.key for n in chosen]
    schedule.numerics = {str(n.key): m for n, m in zip(chosen, chosen_numerics, strict=True) if m != "default"}
    return schedule


def schedule_window(needs: list[RunNeed], table: SpeedTable, seconds: float, window_s: float) -> WindowSchedule:
    """The best schedule for `seconds` of machine time left: most runs completed, then the earliest end.
    `window_s`: the compute time a fresh session offers. A run at the head of the queue that can never end within
    one (at any measured setting) is started alone and spans sessions; a run that would fit a fresh session but not
    the time left waits, while later runs that fit use the time."""
    if needs and seconds >= SPAN_MIN_S:
        head = needs[0]
        fastest = min(finish_times([head], table, "alone", 1, [m])[0] for m in table.numerics_at(head.px))
        if fastest * SAFETY > window_s:  # it fits no session: it goes first, alone, and spans sessions
            later = {str(n.key): "after the spanning run" for n in needs[1:]}
            return WindowSchedule("alone", 1, span=head.key, skipped=later)
    candidates = [_greedy(needs, table, mode, slots, seconds)
                  for mode in table.usable_modes() for slots in ((1,) if mode == "alone" else (2, 4))]
    if not candidates:
        return WindowSchedule("alone", 1, skipped={str(n.key): "no measured speed" for n in needs})
    return max(candidates, key=lambda p: (len(p.runs), -p.estimated_s, p.mode == "alone"))
