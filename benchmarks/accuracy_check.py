"""Does srlib's fast path change accuracy? One short training with the reference's numerics and with srlib's.

    python benchmarks/accuracy_check.py --json results/accuracy_cpu.json        # ~2 minutes on 2 CPU cores
    python benchmarks/accuracy_check.py --device cuda --json results/gpu/accuracy_gpu.json

Every run is `srlib.train.train` on the `preview` data (width 8, 2,000 / 500 images), 3 epochs by default.
The runs share seed, data and batches (srlib's batch order does not depend on numerics), so they differ only in
numerics: fp32 + contiguous (the reference's), srlib's default on this device, forced bf16 autocast where that
default is fp32, and the reference's numerics with seed 1, which shows how far two runs differ with no change
of numerics at all. `agreement_with_first` is the share of test images predicted as the first run predicts them.
A smoke check at a few epochs, not evidence of equivalence at the paper's 45.
Needs CIFAR-10 (SRLIB_DATA or --data).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from srlib.config import make_config
from srlib.errors import SrlibError
from srlib.numerics import resolve_device, use_bf16
from srlib.provenance import now, provenance
from srlib.runs import PREDICTIONS, config_dir, record_dataset
from srlib.store import load_arrays, write_json
from srlib.train import train

SETTINGS = dict(width=8, train_size=2000, test_size=500, epochs=3, lr_step=2)
REFERENCE = dict(precision="fp32", channels_last=False)


def planned_runs(device: torch.device) -> list[tuple[str, int, dict]]:
    """(name, seed, numerics overrides) of each run, the reference first."""
    runs = [("reference numerics (fp32, contiguous)", 0, REFERENCE),
            ("srlib default (precision auto, channels_last)", 0, dict(precision="auto", channels_last=True))]
    if not use_bf16("auto", device):  # the fast path is fp32 here; show what bf16 would do to accuracy
        runs.append(("forced bf16 autocast, channels_last", 0, dict(precision="bf16", channels_last=True)))
    runs.append(("reference numerics, seed 1 (seed noise)", 1, REFERENCE))
    return runs


def accuracy_check(device: torch.device, data: str | None = None, **overrides) -> dict:
    settings = {**SETTINGS, **overrides}
    results, first = [], None
    with tempfile.TemporaryDirectory(prefix="srlib-accuracy-") as out:
        for name, seed, numerics in planned_runs(device):
            print(f"[accuracy] {name}", flush=True)
            config = make_config("original", "preview", seed, **settings, **numerics)
            # force: numerics are not part of a run's identity, so without it the second run would be the first's
            record = train(config, out=out, data=data, device=device, progress=False, force=True, log=lambda *_: None)
            preds = load_arrays(config_dir(out, config, record_dataset(record)) / PREDICTIONS)[0]["predictions"]
            first = preds if first is None else first
            s = record["summary"]
            results.append({"name": name, "seed": seed, "precision": record["precision"],
                            "memory_format": record["memory_format"], "final_test_acc": s["final_test_acc"],
                            "max_test_acc": s["max_test_acc"], "train_img_s": s["mean_train_images_per_s"],
                            "agreement_with_first": float((preds == first).mean())})
    return {"settings": {**settings, "variant": "original", "profile": "preview"}, "runs": results}


def format_lines(result: dict) -> list[str]:
    s = result["settings"]
    lines = [f"accuracy check: width {s['width']}, {s['train_size']} / {s['test_size']} images, {s['epochs']} epochs "
             "(test accuracy %; agreement = same prediction as the first run)"]
    lines += [f"  {r['name']:<48} final {r['final_test_acc']:6.2f}  max {r['max_test_acc']:6.2f}  "
              f"agreement {r['agreement_with_first']:.1%}  {r['train_img_s']:.0f} img/s" for r in result["runs"]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cpu or cuda (default: the GPU when there is one)")
    parser.add_argument("--data", help="CIFAR-10 folder (default: $SRLIB_DATA)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--width", type=int, default=SETTINGS["width"], help="ResNet-18 width (channels)")
    parser.add_argument("--train-size", type=int, default=SETTINGS["train_size"], help="training images")
    parser.add_argument("--test-size", type=int, default=SETTINGS["test_size"], help="test images")
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"], help="epochs per run")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        result = accuracy_check(device, args.data, width=args.width, train_size=args.train_size,
                                test_size=args.test_size, epochs=args.epochs)
    except SrlibError as exc:
        print(f"srlib: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_lines(result)))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, {"created": now(), "device": str(device), **result,
                         "provenance": provenance(device, out.parent)})
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
