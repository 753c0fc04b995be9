"""What a job measures on the GPU machine before it schedules: training speeds per input size (this session's
probe, the committed table re-checked, or a probe now), whether CUDA graphs train like eager steps, and how
fast each SR upscaler runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...config import VARIANTS
from ...runs import ROOT
from .job import KitRun, Settings

if TYPE_CHECKING:
    from .schedule import SpeedTable


def speed_table(state: KitRun, config, device, px_list: list[int]) -> tuple[SpeedTable, dict | None]:
    """(SpeedTable for the schedule, the probe table when one was measured in this session). On the GPU: this session's
    probe (`srlib kit probe` in an earlier command), else the committed one re-checked at one size, else a probe now.
    Dry run: each size timed alone on the CPU."""
    from .probe import PROBE_FILE, probe, recheck, table_lines, time_in_process
    from .schedule import ModeSpeed, SpeedTable

    if device.type != "cuda":
        rows = [ModeSpeed("alone", px, 1, time_in_process(px, 1, config, device, state.settings.timing_steps)[0])
                for px in px_list]
        for r in rows:
            state.log(f"[kit] speed alone {r.px:>3} px: {r.images_per_s:9.1f} img/s (CPU dry run)")
        return SpeedTable(rows), None
    here, committed = state.work / PROBE_FILE, ROOT / "results" / "paper" / PROBE_FILE
    if here.is_file():
        table = fresh = json.loads(here.read_text())
        state.log(f"[kit] speeds: this session's probe ({here})")
    elif committed.is_file():
        table = json.loads(committed.read_text())
        ratio = recheck(table, config, max(px_list), log=state.log)
        table = {**table, "rows": [{**r, "images_per_s": r["images_per_s"] * ratio,
                                    "peak_fraction": r.get("peak_fraction", 0.0) * ratio} for r in table["rows"]]}
        fresh = None
    else:
        state.log("[kit] no probe table yet: probing now (up to ~90 s)")
        table = fresh = probe(config, log=state.log)
    for line in table_lines(table):
        state.log(f"[kit] speeds {line}")
    return SpeedTable.from_json(table["rows"]), fresh


def check_graphs(config, device, log: Callable[[str], None], steps: int = 12) -> dict:
    """The same steps eagerly and as CUDA graphs, from the same start: do the weights agree afterwards?"""
    from dataclasses import replace

    import torch

    from ...numerics import deterministic_algorithms, resolve_numerics
    from .probe import ProbeRun

    numerics = resolve_numerics(config, device)
    result: dict = {"steps": steps}
    try:
        with deterministic_algorithms(config.deterministic):
            finals = []
            for graphed in (False, True):
                run = ProbeRun(32, config, device, replace(numerics, cuda_graphs=graphed))
                for i in range(steps):
                    run.step(i)
                finals.append(torch.cat([p.detach().float().flatten() for p in run.model.state_dict().values()
                                         if p.is_floating_point()]))
        diff = (finals[0] - finals[1]).abs().max().item()
        scale = finals[0].abs().max().item()
        result.update(max_abs_diff=diff, max_abs_weight=scale, identical=bool(torch.equal(*finals)),
                      ok=bool(torch.isfinite(finals[1]).all()) and diff <= 1e-3 * max(scale, 1.0))
    except Exception as exc:  # noqa: BLE001 - any failure means: train eagerly
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    log(f"[kit] CUDA graph check ({steps} steps, graph vs eager): "
        + (f"max |diff| {result['max_abs_diff']:.3g} of weights up to {result['max_abs_weight']:.3g}, "
           f"{'bit-identical' if result['identical'] else 'not bit-identical'}; "
           if "max_abs_diff" in result else result.get("error", "") + "; ")
        + ("graphs used" if result["ok"] else "training eagerly"))
    return result


def upscaler_key(variant: str) -> str:
    v = VARIANTS[variant]
    return f"{v.method} x{v.scale}"


def measure_upscaling(variants: list[str], images, settings: Settings, device,
                      log: Callable[[str], None]) -> dict[str, float]:
    """Images/s of each SR upscaler the variants use (srlib.upscale, as training calls it), by upscaler_key."""
    from ...timing import timed
    from ...upscale import build_upscaler, upscale

    speeds = {}
    batch = images[:settings.sr_speed_images]
    for variant in variants:
        key = upscaler_key(variant)
        if not VARIANTS[variant].is_sr or key in speeds:
            continue
        upscaler = build_upscaler(VARIANTS[variant].method, VARIANTS[variant].scale, device=device)
        upscale(batch[:upscaler.chunk_size], upscaler, progress=False)  # warm-up: weights, kernels
        seconds = timed(lambda u=upscaler: upscale(batch, u, progress=False), device)
        speeds[key] = len(batch) / seconds
        log(f"[kit] speed {key}: {speeds[key]:9.1f} img/s ({len(batch)} images of 32 px)")
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    return speeds
