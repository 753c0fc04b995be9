"""Build the Jupyter Book (v1) from notebooks that `srlib sweep` already executed.

Each build writes its table of contents from `_toc.yml` with the run pages of the records the results page was
built from (profile and output folder of the executed `compare.ipynb`); other pages in `book/executed/train/` are
neither listed nor kept in the HTML.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import SrlibError
from ..runs import EXECUTED, ROOT, executed_train_dir
from .tasks import executed_parameters

REQUIRED = (f"{EXECUTED.as_posix()}/compare.ipynb", f"{EXECUTED.as_posix()}/sr_quality.ipynb")
TRAIN_PAGES = executed_train_dir().as_posix()
TRAIN_GLOB = f"{TRAIN_PAGES}/*"  # the entry of _toc.yml that build_book replaces by the run pages
GENERATED_TOC = f"{EXECUTED.as_posix()}/_toc.yml"


def run_pages(root: Path) -> list[str]:
    """The executed train notebooks (paths relative to `root`, no suffix) of the records that compare.ipynb
    was built from, in variant order then seed; a run without a complete record has no page."""
    from ..report.comparisons import order_variants
    from ..runs import executed_train_dataset, load_record

    shown = executed_parameters(root / EXECUTED / "compare.ipynb")
    profile, out = shown.get("profile"), shown.get("out")
    pages = []
    for notebook in sorted((root / TRAIN_PAGES).glob("*.ipynb")):
        if notebook.name.endswith(".partial.ipynb"):
            continue
        p = executed_parameters(notebook)
        if (p.get("profile") != profile or out is None or p.get("out") is None
                or (root / p["out"]).resolve() != (root / out).resolve()):
            continue
        variant, seed = p.get("variant"), int(p.get("seed", -1))
        # A results page of one dataset lists that dataset's run pages; an older page (no dataset in its name)
        # counts where that dataset has its record.
        dataset = executed_train_dataset(notebook, profile, variant, seed) or shown.get("dataset")
        if shown.get("dataset") and dataset != shown["dataset"]:
            continue
        record = load_record(root / out, profile, variant, seed, dataset)
        if record is not None and record.get("status") == "complete":
            pages.append((p["variant"], int(p["seed"]), notebook))
    rank = {v: k for k, v in enumerate(order_variants({v for v, _, _ in pages}))}
    return [str(n.relative_to(root).with_suffix("")) for v, s, n in sorted(pages, key=lambda x: (rank[x[0]], x[1]))]


def write_toc(root: Path) -> Path:
    """`_toc.yml` with its run-pages glob replaced by the run pages of these records."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = [{"file": page} for page in run_pages(root)]

    def replace(entries: list[dict]) -> list[dict]:
        found = []
        for entry in entries:
            if entry.get("glob") == TRAIN_GLOB:
                found.extend(pages)
                continue
            for key in ("sections", "chapters"):
                if key in entry:
                    entry = {**entry, key: replace(entry[key])}
                    if not entry[key]:  # no run pages: the chapter stays, without an empty list
                        del entry[key]
            found.append(entry)
        return found

    toc["chapters"] = replace(toc["chapters"])
    target = root / GENERATED_TOC
    target.write_text("# Written by srlib.orchestration.book from _toc.yml for this build: the run pages of its "
                      f"records.\n{yaml.safe_dump(toc, sort_keys=False)}")
    return target


def build_book(root: Path = ROOT, path_output: str | Path | None = None) -> Path:
    """`jupyter-book build -W -n --keep-going` into PATH_OUTPUT/_build/html; returns index.html."""
    missing = [p for p in REQUIRED if not (root / p).is_file()]
    if missing or not list((root / TRAIN_PAGES).glob("*.ipynb")):
        raise SrlibError(f"executed notebooks missing ({', '.join(missing) or 'book/executed/train/*'}); "
                         "run `srlib sweep` (or `make report`) first")
    toc = write_toc(root)
    executable = Path(sys.executable).parent / "jupyter-book"
    path_output = Path(path_output) if path_output is not None else root
    command = [str(executable), "build", str(root), "--path-output", str(path_output), "--toc", str(toc),
               "-W", "-n", "--keep-going"]
    done = subprocess.run(command, cwd=root)
    html = path_output / "_build" / "html"
    index = html / "index.html"
    if done.returncode != 0 or not index.is_file():
        raise SrlibError(f"the book build failed (exit {done.returncode}); see the Sphinx warnings above")
    listed = {Path(page).name for page in run_pages(root)}
    for stale in (html / TRAIN_PAGES).glob("*.html"):  # pages of an earlier build's other records
        if stale.stem not in listed:
            stale.unlink()
    return index
