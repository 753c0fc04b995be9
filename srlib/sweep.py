"""`srlib sweep`: run notebooks/train.ipynb once per variant and seed with papermill, then the
analysis notebooks, writing executed notebooks where the book picks them up.

One failed run does not stop the others; the summary says which failed, and the exit code is
non-zero. A rerun executes only what is missing: a run whose executed notebook ran with the same
parameters after its record was finished is skipped without starting a kernel, and the analysis
notebooks are skipped when no record is newer than them.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import PROFILES, STUDY_VARIANTS, VARIANTS, make_config
from .errors import ConfigError, SrlibError
from .store import directory_lock, write_json

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "python3"  # the kernel of the interpreter running the sweep (ipykernel's native spec)


@dataclass
class SweepResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def default_profile() -> str:
    import torch

    return "paper" if torch.cuda.is_available() else "preview"


def _execute(template: str, output: Path, parameters: dict, log_output: bool) -> None:
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.stem + ".partial.ipynb")
    pm.execute_notebook(str(NOTEBOOKS / template), str(partial), parameters=parameters, kernel_name=KERNEL,
                        cwd=str(ROOT), log_output=log_output, progress_bar=False)
    _tag_for_the_book(partial)
    os.replace(partial, output)  # an executed notebook only appears once it ran to the end


def _tag_for_the_book(path: Path) -> None:
    """Readers see results first: parameter cells are dropped, code is folded (one click shows it)."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        extra = "remove-cell" if {"parameters", "injected-parameters"} & set(tags) else "hide-input"
        if extra not in tags:
            tags.append(extra)
    nbformat.write(notebook, path)


def _is_current(output: Path, parameters: dict, inputs: list[Path]) -> bool:
    """True when `output` was executed with `parameters` to the end, after every file in `inputs`."""
    import nbformat

    if not output.is_file() or not inputs or not all(p.is_file() for p in inputs):
        return False
    try:
        ran_with = nbformat.read(output, as_version=4).metadata.get("papermill", {}).get("parameters")
    except (OSError, ValueError):
        return False
    return ran_with == parameters and output.stat().st_mtime >= max(p.stat().st_mtime for p in inputs)


def _finished_record(out: Path, variant: str, profile: str, seed: int, overrides: dict) -> list[Path]:
    """[record.json] when that run is complete with exactly this config, else []."""
    from .train import find_finished, run_dir

    config = make_config(variant, profile, seed, **overrides)
    return [run_dir(out, config) / "record.json"] if find_finished(out, config) is not None else []


def _failure(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if "Error" in line), text[-1] if text else type(exc).__name__)


def sweep(profile: str, seeds: int = 1, variants: list[str] | tuple[str, ...] = STUDY_VARIANTS,
          out: str | os.PathLike = "runs", notebooks_out: str | os.PathLike = "book/executed",
          data: str | None = None, cache_dir: str | None = None, overrides: dict | None = None,
          analysis: bool = True, log_output: bool = True, log=print) -> SweepResult:
    """Train every (variant, seed) through the notebook, then run the analysis notebooks."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or profile not in PROFILES or seeds < 1:
        raise ConfigError(f"sweep needs known variants ({', '.join(VARIANTS)}), a profile in {list(PROFILES)} "
                          f"and seeds >= 1; got variants {list(variants)}, profile {profile!r}, seeds {seeds}")
    for variant in variants:  # fail fast on bad overrides, before hours of work
        make_config(variant, profile, 0, **(overrides or {}))
    out, notebooks_out = Path(out).resolve(), Path(notebooks_out).resolve()
    result, started = SweepResult(), time.perf_counter()
    common = {"profile": profile, "out": str(out), "data": data, "cache_dir": cache_dir}
    with directory_lock(out, f"srlib sweep --profile {profile}"):
        for seed in range(seeds):
            for variant in variants:
                name = f"{profile}-{variant}-seed{seed}"
                params = {**common, "variant": variant, "seed": seed, "overrides": overrides or {}}
                output = notebooks_out / "train" / f"{name}.ipynb"
                if _is_current(output, params, _finished_record(out, variant, profile, seed, overrides or {})):
                    log(f"[sweep] {name}: finished earlier (record and executed notebook exist), skipped")
                    result.skipped.append(name)
                    continue
                log(f"[sweep] {name}: running notebooks/train.ipynb")
                try:
                    _execute("train.ipynb", output, params, log_output)
                    result.done.append(name)
                except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others
                    result.failed[name] = _failure(exc)
                    log(f"[sweep] {name} FAILED: {result.failed[name]}")
        if analysis:
            records = sorted((out / profile).glob("*/seed*/record.json"))
            for template in ("sr_quality.ipynb", "compare.ipynb"):
                params = {**common, "n": 1000 if profile != "smoke" else 100}
                if not result.done and not result.failed and _is_current(notebooks_out / template, params, records):
                    log(f"[sweep] notebooks/{template}: up to date with every record, skipped")
                    result.skipped.append(template)
                    continue
                log(f"[sweep] running notebooks/{template}")
                try:
                    _execute(template, notebooks_out / template, params, log_output)
                    result.done.append(template)
                except Exception as exc:  # noqa: BLE001
                    result.failed[template] = _failure(exc)
                    log(f"[sweep] {template} FAILED: {result.failed[template]}")
        result.seconds = time.perf_counter() - started
        write_json(out / profile / "sweep.json", {"profile": profile, "seeds": seeds, "variants": list(variants),
                                                  "done": result.done, "skipped": result.skipped,
                                                  "failed": result.failed,
                                                  "seconds": result.seconds})
    return result


def cmd_sweep(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)
    profile = args.profile or default_profile()
    result = sweep(profile, args.seeds, args.variants, args.out, args.notebooks_out, args.data, args.cache_dir,
                   analysis=not args.no_analysis)
    print(f"[sweep] {len(result.done)} notebook(s) done in {result.seconds / 60:.1f} min, "
          f"{len(result.skipped)} already up to date, {len(result.failed)} failed")
    for name, why in result.failed.items():
        print(f"[sweep]   FAILED {name}: {why}")
    if result.failed:
        raise SrlibError(f"{len(result.failed)} notebook(s) failed: {', '.join(result.failed)}; "
                         "the others finished (rerun the same command to retry only what is missing)")
    return 0
