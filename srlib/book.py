"""Build the Jupyter Book (v1) from notebooks that `srlib sweep` already executed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .errors import SrlibError
from .sweep import ROOT

REQUIRED = ("book/executed/compare.ipynb", "book/executed/sr_quality.ipynb")


def build_book(root: Path = ROOT, path_output: str | Path | None = None) -> Path:
    """`jupyter-book build -W -n --keep-going` into PATH_OUTPUT/_build/html; returns index.html."""
    missing = [p for p in REQUIRED if not (root / p).is_file()]
    if missing or not list((root / "book/executed/train").glob("*.ipynb")):
        raise SrlibError(f"executed notebooks missing ({', '.join(missing) or 'book/executed/train/*'}); "
                         "run `srlib sweep` (or `make report`) first")
    executable = Path(sys.executable).parent / "jupyter-book"
    path_output = Path(path_output) if path_output is not None else root
    command = [str(executable), "build", str(root), "--path-output", str(path_output), "-W", "-n", "--keep-going"]
    done = subprocess.run(command, cwd=root)
    index = path_output / "_build" / "html" / "index.html"
    if done.returncode != 0 or not index.is_file():
        raise SrlibError(f"the book build failed (exit {done.returncode}); see the Sphinx warnings above")
    return index
