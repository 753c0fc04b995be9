"""Do runs really share the GPU? A probe of aggregate training speed, and NVIDIA MPS start/stop.

Without MPS, processes on one GPU take turns (time slicing), so several `srlib train` processes may be no faster than
one after another: the probe measures aggregate images/s of N = 1, 2, 4 runs at 32, 64 and 128 px, `alone` (N = 1, in
this process: the reference) and `mps` (workers under an MPS control daemon) or `processes` (without MPS, when it is
absent). Same seed and batches, so each run's weights must be bit-identical to the run alone's; the table says if so.
At 128 px it also times kit.schedule.FASTER_NUMERICS. The table goes to `results/paper/gpu_probe.json`, which later
sessions read (kit.schedule), re-checking one size. Needs a CUDA GPU, except the MPS control.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

from ...errors import SrlibError
from .schedule import ModeSpeed

PROBE_SCHEMA = 1
PROBE_FILE = "gpu_probe.json"
SIZES = (32, 64, 128)
SHARING = (1, 2, 4)
STEPS = 40  # timed steps per run and setting
MPS_BINARY = "nvidia-cuda-mps-control"
MPS_SEARCH = ("/usr/local/nvidia/bin", "/usr/bin", "/usr/local/cuda/bin")
H200_BF16_FLOPS = 790e12  # measured on the H200 (8192^3 bf16 matmul): the yardstick of "of H200 bf16 peak"
WORKER_WAIT_S = 60.0  # a worker gives up waiting for the others after this
WORKER_MODULE = "srlib.orchestration.kit.probe"  # `python -m` this, with `worker SPEC RANK`: one probe process


class ProbeError(SrlibError):
    pass


def find_mps_control(search: tuple[str, ...] = MPS_SEARCH) -> Path | None:
    found = shutil.which(MPS_BINARY) or next((str(Path(d) / MPS_BINARY) for d in search
                                              if (Path(d) / MPS_BINARY).is_file()), None)
    return Path(found) if found else None


@contextlib.contextmanager
def mps_daemon(binary: Path, root: Path = Path("/tmp"), timeout_s: float = 30.0) -> Iterator[dict]:
    """Start an MPS control daemon with its pipe and log folders under `root`; yield the environment its clients
    need; quit the daemon on the way out, whatever happened inside."""
    pipe = Path(tempfile.mkdtemp(prefix="srlib-mps-pipe-", dir=root))
    logs = Path(tempfile.mkdtemp(prefix="srlib-mps-log-", dir=root))
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    # A thread percentage would cap each client's share of the GPU; the probe measures them uncapped.
    env.pop("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", None)
    try:
        done = subprocess.run([str(binary), "-d"], env=env, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"could not start the MPS control daemon {binary} ({exc})") from exc
    if done.returncode != 0:
        raise ProbeError(f"{binary} -d failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    try:
        yield env
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([str(binary)], input="quit\n", env=env, capture_output=True, text=True, timeout=timeout_s)


class ProbeRun:
    """One run of the probe: the study's model, optimizer and training step on fixed random batches; every
    ProbeRun of a size starts from the same weights and sees the same batches."""

    def __init__(self, px: int, config, device, numerics, n_batches: int = 4):
        import torch

        from ...train import GraphedStep, build_training

        self.model, self.optimizer, _ = build_training(config, device, numerics)
        self.model.train()
        g = torch.Generator().manual_seed(1)
        n = config.batch_size * n_batches
        self.x = torch.randint(0, 256, (n, 3, px, px), dtype=torch.uint8, generator=g).to(device)
        self.y = torch.randint(0, 10, (n,), generator=g).to(device)
        self.flips = (torch.rand(n, generator=g) < 0.5).to(device)
        self.batch, self.n_batches, self.numerics = config.batch_size, n_batches, numerics
        self.step_model = torch.compile(self.model) if numerics.compile else self.model
        self.graph = GraphedStep(self.model, self.optimizer, numerics.bf16) if numerics.cuda_graphs else None

    def step(self, i: int) -> None:
        import torch

        from ...train import make_batch, train_step

        k = i % self.n_batches
        idx = torch.arange(k * self.batch, (k + 1) * self.batch, device=self.x.device)
        x, y = make_batch(self.x, self.y, idx, self.flips, self.numerics.channels_last)
        if self.graph is not None:
            self.graph(x, y)
        else:
            train_step(self.step_model, self.optimizer, x, y, self.numerics.bf16)

    def sha256(self) -> str:
        """A hash of the weights, buffers and their names: equal only for bit-identical runs."""
        from ...store import sha256_bytes

        state = self.model.state_dict()
        return sha256_bytes(b"".join(name.encode() + t.detach().cpu().contiguous().numpy().tobytes()
                                     for name, t in state.items()))


def _numerics(config, device, variant: str):
    """The protocol's numerics, or one of the faster settings timed at 128 px (kit.schedule.FASTER_NUMERICS)."""
    from ...numerics import resolve_numerics

    faster = {"nondeterministic": {"deterministic": False}, "compile": {"compile": True, "cuda_graphs": False}}
    return replace(resolve_numerics(config, device), **faster.get(variant, {}))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(runs: list[ProbeRun], steps: int, device) -> tuple[float, float]:
    """(start, end) wall-clock times of `steps` steps of each run in turn, after their capture step (step 0)."""
    started = time.time()
    for i in range(1, steps + 1):
        for run in runs:
            run.step(i)
    _sync(device)
    return started, time.time()


def time_in_process(px: int, n: int, config, device, steps: int = STEPS,
                    variant: str = "default") -> tuple[float, list[str]]:
    """(aggregate images/s, weight hashes) of n runs in this process, one step of each in turn (the runs do not
    overlap: the modes that share the GPU run in worker processes). On a CPU (the kit's dry run) it times the
    plain step."""
    import torch

    from ...numerics import deterministic_algorithms

    numerics = _numerics(config, device, variant)
    with deterministic_algorithms(numerics.deterministic):
        runs = [ProbeRun(px, config, device, numerics) for _ in range(n)]
        for run in runs:  # every graph captured (and compiled) before the timing
            run.step(0)
        _sync(device)
        started, ended = _timed_steps(runs, steps, device)
        hashes = [run.sha256() for run in runs]
    del runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return n * steps * config.batch_size / (ended - started), hashes


def _wait_for(folder: Path, pattern: str, count: int, deadline: float) -> None:
    while len(list(folder.glob(pattern))) < count:
        if time.time() > deadline:
            raise ProbeError(f"timed out waiting for {count} x {pattern} in {folder}")
        time.sleep(0.002)


def worker(spec_path: Path, rank: int) -> None:
    """One probe process: for each phase (px, n) with rank < n, build the run, take the capture step, wait for the
    others, time the steps, write (start, end, weight hash); wait for the phase to end before the next."""
    import torch

    from ...config import TrainConfig
    from ...numerics import deterministic_algorithms

    spec = json.loads(spec_path.read_text())
    folder = spec_path.parent
    config = TrainConfig(**spec["config"])
    device = torch.device(spec.get("device", "cuda"))
    numerics = _numerics(config, device, "default")
    with deterministic_algorithms(numerics.deterministic):
        for p, (px, n) in enumerate(spec["phases"]):
            deadline = time.time() + WORKER_WAIT_S
            if rank < n:
                run = ProbeRun(px, config, device, numerics)
                run.step(0)
                _sync(device)
                (folder / f"ready-{p}-{rank}").touch()
                _wait_for(folder, f"ready-{p}-*", n, deadline)
                started, ended = _timed_steps([run], spec["steps"], device)
                result = {"start": started, "end": ended, "sha256": run.sha256()}
                (folder / f"result-{p}-{rank}.json").write_text(json.dumps(result))
                del run
            _wait_for(folder, f"result-{p}-*.json", n, deadline + WORKER_WAIT_S)


def time_in_processes(phases: list[tuple[int, int]], config, steps: int, env: dict,
                      timeout_s: float, device: str = "cuda") -> dict[tuple[int, int], tuple[float, list[str]]]:
    """Aggregate images/s and weight hashes for each (px, n) phase, from max(n) worker processes started once."""
    from ...runs import ROOT

    folder = Path(tempfile.mkdtemp(prefix="srlib-probe-"))
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"phases": phases, "steps": steps, "config": config.to_dict(), "device": device}))
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))}
    workers = []
    for rank in range(max(n for _, n in phases)):
        with (folder / f"worker-{rank}.log").open("w") as handle:
            workers.append(subprocess.Popen([sys.executable, "-m", WORKER_MODULE, "worker", str(spec), str(rank)],
                                            cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT))
    try:
        for w in workers:
            w.wait(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
        for w in workers:
            w.kill()
    results = {}
    for p, (px, n) in enumerate(phases):
        parts = [json.loads(f.read_text()) for f in sorted(folder.glob(f"result-{p}-*.json"))]
        if len(parts) == n:
            span = max(r["end"] for r in parts) - min(r["start"] for r in parts)
            results[(px, n)] = (n * steps * config.batch_size / span, [r["sha256"] for r in parts])
    tail = (folder / "worker-0.log").read_text()[-400:] if (folder / "worker-0.log").is_file() else ""
    shutil.rmtree(folder, ignore_errors=True)
    if len(results) < len(phases):
        raise ProbeError(f"{len(phases) - len(results)} of {len(phases)} phases did not finish; worker 0: {tail}")
    return results


def peak_fraction(images_per_s: float, px: int, width: int) -> float:
    """Training FLOP/s as a fraction of the H200's measured bf16 rate (H200_BF16_FLOPS), on any GPU."""
    from ...flops import train_flops_per_image

    return images_per_s * train_flops_per_image(px, width) / H200_BF16_FLOPS


def probe(config, budget_s: float = 90.0, steps: int = STEPS, sizes: tuple[int, ...] = SIZES,
          sharing: tuple[int, ...] = SHARING, log: Callable[[str], None] = print, device=None) -> dict:
    """The sharing probe on this machine's GPU, within about `budget_s`; returns the table (see module doc)."""
    import torch

    device = device or torch.device("cuda")
    started = time.perf_counter()
    left = lambda: budget_s - (time.perf_counter() - started)  # noqa: E731
    rows: list[ModeSpeed] = []
    alone: dict[int, str] = {}

    def add(mode: str, px: int, n: int, img_s: float, hashes: list[str], numerics: str = "default") -> None:
        reference = mode == "alone" and numerics == "default"
        identical = None if reference else all(h == alone.get(px) for h in hashes)
        rows.append(ModeSpeed(mode, px, n, img_s, identical, numerics, peak_fraction(img_s, px, config.width)))
        log(f"[probe] {mode:>9} {px:>3} px x{n} {numerics:>16}: {img_s:9.0f} img/s, {rows[-1].peak_fraction:6.1%} "
            f"of H200 bf16 peak, " + ("the reference" if reference else
                                      f"weights {'identical' if identical else 'NOT identical'} to the run alone"))

    for px in sizes:
        img_s, hashes = time_in_process(px, 1, config, device, steps)
        alone[px] = hashes[0]
        add("alone", px, 1, img_s, hashes)
    binary = find_mps_control()
    mode = "mps" if binary else "processes"
    phases = [(px, n) for n in sharing if n > 1 for px in sizes]
    mps_note = str(binary) if binary else "absent: processes measured without MPS (time slicing)"
    if left() > 25:
        try:
            with mps_daemon(binary) if binary else contextlib.nullcontext(dict(os.environ)) as env:
                measured = time_in_processes(phases, config, steps, env, left() - 15, device.type)
            for (px, n), (img_s, hashes) in measured.items():
                add(mode, px, n, img_s, hashes)
        except ProbeError as exc:
            mps_note = f"failed: {exc}"
            log(f"[probe] {mode}: {exc}")
    largest = max(sizes)
    for variant in ("nondeterministic", "compile"):
        if left() < (45 if variant == "compile" else 8):
            log(f"[probe] {variant} at {largest} px: skipped, {left():.0f} s of the probe's budget left")
            continue
        try:
            add("alone", largest, 1, *time_in_process(largest, 1, config, device, steps, variant=variant), variant)
        except Exception as exc:  # noqa: BLE001 - a setting that fails here is one the runs will not use
            log(f"[probe] {variant} at {largest} px failed: {type(exc).__name__}: {exc}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"schema": PROBE_SCHEMA, "device": name, "torch": torch.__version__,
            "steps": steps, "batch_size": config.batch_size, "width": config.width, "mps": mps_note,
            "seconds": time.perf_counter() - started, "h200_bf16_flops": H200_BF16_FLOPS,
            "rows": [asdict(r) for r in rows]}


def recheck(table: dict, config, px: int, steps: int = STEPS, log: Callable[[str], None] = print) -> float:
    """One N = 1 measurement at `px` against the table's; the ratio (measured / table) the planner scales by."""
    import torch

    img_s, _ = time_in_process(px, 1, config, torch.device("cuda"), steps)
    recorded = next(r["images_per_s"] for r in table["rows"]
                    if r["mode"] == "alone" and r["px"] == px and r["n"] == 1 and r["numerics"] == "default")
    log(f"[probe] re-check alone {px} px: {img_s:.0f} img/s, the table says {recorded:.0f} ({img_s / recorded:.2f}x)")
    return img_s / recorded


def table_lines(table: dict) -> list[str]:
    """The probe table as text: mode x size x N -> img/s, % of the H200's bf16 peak, identical to the run alone."""
    lines = [f"{'mode':>9} {'px':>4} {'N':>2} {'numerics':>16} {'img/s':>9} {'of H200 bf16 peak':>17} identical"]
    for r in table["rows"]:
        same = "reference" if r["identical"] is None else "yes" if r["identical"] else "no"
        lines.append(f"{r['mode']:>9} {r['px']:>4} {r['n']:>2} {r['numerics']:>16} {r['images_per_s']:9.0f} "
                     f"{r['peak_fraction']:17.1%} {same}")
    return lines


if __name__ == "__main__":  # one probe process, started by time_in_processes
    if len(sys.argv) != 4 or sys.argv[1] != "worker":
        print(f"usage: python -m {WORKER_MODULE} worker SPEC RANK (started by the probe itself)", file=sys.stderr)
        sys.exit(2)
    worker(Path(sys.argv[2]), int(sys.argv[3]))
