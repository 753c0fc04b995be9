"""The report: the training notebook through papermill, and a smoke study built into a book that
a real headless browser opens offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from srlib.config import STUDY_VARIANTS
from srlib.data import dataset_key
from srlib.orchestration.request import SweepRequest
from srlib.orchestration.sweep import sweep
from srlib.runs import NOTEBOOKS, ROOT, datasets, run_dir, sr_quality_path
from srlib.store import write_json


def test_train_notebook_runs_through_papermill(tmp_path, imagefolder):
    import papermill as pm

    out = tmp_path / "runs"
    executed = tmp_path / "train.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / "train.ipynb"), str(executed), kernel_name="python3", progress_bar=False,
                        parameters={"variant": "resize_x2", "profile": "smoke", "seed": 0, "out": str(out),
                                    "data": str(imagefolder), "cache_dir": str(tmp_path / "cache"),
                                    "overrides": {"epochs": 1, "width": 8, "train_size": 20, "test_size": 10}})
    from srlib.data import dataset_key, load_dataset

    key = dataset_key(load_dataset(imagefolder, cache_dir=tmp_path / "cache").identity)
    record = json.loads((run_dir(out, "smoke", key, "resize_x2", 0) / "record.json").read_text())
    assert record["config"]["epochs"] == 1 and record["input_px"] == 64
    text = executed.read_text()
    assert "Max test accuracy" in text and "image/png" in text


def test_a_second_sweep_on_the_same_output_stops_with_a_clear_message(tmp_path, monkeypatch):
    import srlib.orchestration.sweep as sweep_mod
    from srlib.errors import LockError
    from srlib.store import directory_lock

    monkeypatch.setattr(sweep_mod, "wait_for", lambda *a: pytest.fail("the second sweep must not run anything"))
    with directory_lock(tmp_path / "runs", "srlib sweep --profile smoke"):
        with pytest.raises(LockError, match=r"runs is in use by srlib sweep --profile smoke \(pid \d+\); wait"):
            sweep(SweepRequest("smoke", 1, ["original"], out=tmp_path / "runs", notebooks_out=tmp_path / "nb"),
                  log=lambda *_: None, preflight=False)
    assert not (tmp_path / "nb").exists()


def test_book_build_refuses_without_executed_notebooks(tmp_path):
    from srlib.errors import SrlibError
    from srlib.orchestration.book import build_book

    with pytest.raises(SrlibError, match="srlib sweep"):
        build_book(root=tmp_path)


def book_sources(root: Path) -> Path:
    """A copy of the book's sources (config, table of contents, md pages) without executed notebooks."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("executed"))
    return root


def write_records(records: list[dict], out: Path, profile: str = "smoke") -> None:
    """Records and predictions laid out as a sweep writes them."""
    from srlib.runs import record_dataset, run_dir
    from srlib.store import save_arrays, write_json

    for r in records:
        folder = run_dir(out, profile, record_dataset(r), r["config"]["variant"], r["config"]["seed"])
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "record.json", {k: v for k, v in r.items() if not k.startswith("_")})
        save_arrays(folder / "predictions.npz", {"predictions": r["_predictions"], "labels": r["_labels"]})


def assert_fits_and_loads(seen: dict[str, dict]) -> None:
    """Every page opened offline, without errors, and every table and image fits the text column."""
    for page, s in seen.items():
        assert s["status"] == 200, page
        assert s["outside"] == [], f"{page} requested {s['outside']}"
        assert s["errors"] == [], f"{page} console errors {s['errors']}"
        assert all(i["complete"] and i["width"] > 0 for i in s["images"]), f"{page}: broken image {s['images']}"
        assert s["too_wide"] == [], f"{page}: wider than the text column at 1280 px: {s['too_wide']}"


def open_book(html: Path) -> dict[str, dict]:
    from browser import chromium_path, inspect_pages

    if chromium_path() is None:
        if os.environ.get("SRLIB_REQUIRE_BROWSER"):
            pytest.fail("SRLIB_REQUIRE_BROWSER is set but no chromium was found")
        pytest.skip("install Debian's chromium to run the browser check")
    pages = ["index.html"] + sorted(str(p.relative_to(html)) for p in html.rglob("book/**/*.html"))
    return inspect_pages(html, pages)


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory, weights_dir) -> tuple[Path, dict]:
    """The book sources and a real smoke sweep of the five variants (notebooks through papermill, training,
    the real SR weights) on a small generated dataset: (root, sweep kwargs). What needs no training is tested
    on generated records instead (below)."""
    from conftest import make_imagefolder

    root = book_sources(tmp_path_factory.mktemp("report"))
    data = make_imagefolder(tmp_path_factory.mktemp("data") / "imagefolder")
    os.environ["SRLIB_WEIGHTS_DIR"] = str(weights_dir)
    kwargs = dict(out=root / "runs", notebooks_out=root / "book" / "executed", data=str(data),
                  cache_dir=str(tmp_path_factory.mktemp("cache")))
    result = sweep(SweepRequest("smoke", 1, STUDY_VARIANTS, **kwargs))
    assert not result.failed, result.failed
    assert not result.skipped
    return root, kwargs


@pytest.fixture(scope="module")
def smoke_book(smoke_study) -> Path:
    from srlib.orchestration.book import build_book

    return build_book(root=smoke_study[0]).parent


@pytest.mark.slow
def test_sweep_rerun_does_only_what_is_missing(smoke_study):
    root, kwargs = smoke_study
    executed = sorted((root / "book" / "executed").rglob("*.ipynb"))
    before = {p: p.stat().st_mtime_ns for p in executed}
    result = sweep(SweepRequest("smoke", 1, STUDY_VARIANTS, **kwargs))
    assert result.done == [] and result.failed == {}
    [key] = datasets(root / "runs", "smoke")  # runs are kept by their data
    assert sorted(result.skipped) == sorted([f"smoke-{key}-{v}-seed0" for v in STUDY_VARIANTS]
                                            + ["sr_quality.ipynb", "compare.ipynb"])
    assert {p: p.stat().st_mtime_ns for p in executed} == before

    # A run whose record went missing is redone, and only it; then the analysis sees the new record.
    (run_dir(root / "runs", "smoke", key, "original", 0) / "record.json").unlink()
    result = sweep(SweepRequest("smoke", 1, STUDY_VARIANTS, **kwargs))
    assert result.done == [f"smoke-{key}-original-seed0", "sr_quality.ipynb", "compare.ipynb"], result
    assert len(result.skipped) == len(STUDY_VARIANTS) - 1 and not result.failed


@pytest.mark.slow
def test_report_opens_offline_in_a_browser_and_fits_the_screen(smoke_book):
    seen = open_book(smoke_book)
    assert seen["index.html"]["url"].endswith("book/intro.html")
    assert_fits_and_loads(seen)
    compare = seen["book/executed/compare.html"]
    assert len([i for i in compare["images"] if "_images" in i["src"]]) >= 3  # curves, per-class heatmap, cost
    assert any(all(v in table for v in STUDY_VARIANTS) for table in compare["tables"])
    for section in ("Where SR helps", "What it costs", "The reference report, beside ours"):
        assert section in compare["text"], section
    assert len(seen["book/executed/sr_quality.html"]["images"]) >= 1
    assert len([p for p in seen if "/train/" in p]) == len(STUDY_VARIANTS)


@pytest.mark.slow
def test_pages_show_results_not_stderr(smoke_study, smoke_book):
    root, _ = smoke_study
    [key] = datasets(root / "runs", "smoke")
    executed = (root / "book" / "executed" / "train" / f"smoke-{key}-sr_x2-seed0.ipynb").read_text()
    assert '"name": "stderr"' in executed  # the upscaling progress bar is kept in the executed notebook ...
    for page in smoke_book.rglob("book/executed/**/*.html"):
        assert "output stderr" not in page.read_text(), page  # ... and kept off the pages


def test_figures_fit_the_page_with_readable_text():
    """Every report figure is at most the text column wide, with no text under 10 pt (so it reads at the
    page's width without zooming), even with the controls and an extra SR model in the study."""
    import matplotlib
    import numpy as np
    from matplotlib.text import Text
    from test_analysis import random_records

    from srlib.report import analysis, comparisons, cost_report, figures

    matplotlib.use("Agg")
    records = random_records({"original": 0.3, "nearest_x2": 0.25, "resize_x2": 0.2, "sr_x2": 0.18,
                              "sr_x2@swift-srgan": 0.19, "nearest_x4": 0.22, "resize_x4": 0.2, "sr_x4": 0.17},
                             2, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    grid = {name: rng.integers(0, 255, (3, 3, px, px), dtype=np.uint8)
            for name, px in [("original", 32), ("bicubic", 64), ("sr_x2", 64), ("sr_x2@swift-srgan", 64),
                             ("sr_x2@ditn-real", 64), ("sr_x2@ditn-real-gan", 64), ("sr_x2@another", 64)]}
    made = {"curves": figures.curves(analysis.epochs_frame(records), title="all variants"),
            "heatmap": figures.heatmap(analysis.per_class_differences(records), "difference per class (pp)"),
            "differences": figures.differences(comparisons.comparison_stats(records)),
            "image_grid": figures.image_grid(grid),
            "case_grid": figures.case_grid(
                {"original 32 px": grid["original"], "bicubic 64 px": grid["bicubic"], "SR 64 px": grid["sr_x2"]},
                ["true: automobile\nSR: automobile (5/5 seeds)\nresize: truck (5/5 seeds)"] * 3,
                "SR (swift-srgan) − resize at x2:\nright with SR, wrong with resize in every seed"),
            "cost_plot": figures.cost_plot(cost_report.cost_frame(records)),
            "gain_vs_quality": figures.gain_vs_quality(analysis.pixels_or_model(records, {"results": [
                {"model": "dctlsa", "scale": 2, "psnr_gain": 1.5, "psnr_gain_ci95": [1.4, 1.6], "ssim_gain": 0.03,
                 "ssim_gain_ci95": [0.02, 0.04]},
                {"model": "swift-srgan", "scale": 2, "psnr_gain": -0.5, "ssim_gain": -0.01}]}))}
    for name, fig in made.items():
        fig.canvas.draw()  # creates the tick labels
        assert fig.get_size_inches()[0] <= figures.PAGE_WIDTH + 1e-6, name
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
        sizes = {t.get_text(): t.get_fontsize() for t in texts}
        assert sizes and min(sizes.values()) >= 10, (name, {k: v for k, v in sizes.items() if v < 10})
        drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches: everything drawn, titles and legends too
        width, height = fig.get_size_inches()
        assert drawn.x0 >= -0.05 and drawn.y0 >= -0.05 and drawn.x1 <= width + 0.05 and drawn.y1 <= height + 0.05, (
            name, drawn, (width, height))  # nothing cut off at the figure's edge
        matplotlib.pyplot.close(fig)


def test_tables_share_one_number_format_and_say_when_empty():
    import pandas as pd

    from srlib.report.figures import table

    shown = table(pd.DataFrame({"a": [1.0, 2.345678], "b": ["x", "y"]}), "caption")
    html = shown._repr_html_()
    assert html.startswith("<p><em>caption</em></p><div style=\"overflow-x: auto;")
    assert "<td>1.00</td>" in html and "<td>2.35</td>" in html
    assert table(pd.DataFrame(), empty="No two variants share a seed.")._repr_html_() == (
        "<p>No two variants share a seed.</p>")  # a sentence, not "Empty DataFrame"


GENERATED = {"original": 0.3, "nearest_x2": 0.25, "resize_x2": 0.2, "sr_x2": 0.18, "sr_x2@swift-srgan": 0.19,
             "nearest_x4": 0.22, "resize_x4": 0.2, "sr_x4": 0.17}


FASHION = {"name": "fashion_mnist", "source": "parquet", "image_size": [3, 28, 28], "lossy": False,
           "train_count": 60000, "test_count": 10000, "content_sha256": "f" * 64}
CIFAR10 = {"name": "cifar10", "image_size": [3, 32, 32], "lossy": False, "train_count": 50000, "test_count": 10000,
           "content_sha256": "c8cc1b7842dbae1862bce9c40c43a954228b05864b94dce7128f835e6c6f375a"}


@pytest.fixture(scope="module")
def generated_book(tmp_path_factory, tiny_sr_weights) -> Path:
    """A book built as `srlib sweep --records` builds one, from generated records (nothing trains, no
    ../shared): every variant set with 2 seeds (the widest tables) on a 28 px dataset that is not CIFAR-10, a
    run on CIFAR-10, two broken records, the SR-quality measurement of a tiny SR model, and a stale run page
    of another profile."""
    import nbformat
    import numpy as np
    from conftest import make_imagefolder
    from test_analysis import random_records, record

    from srlib.orchestration.book import build_book
    from srlib.orchestration.sweep import finish
    from srlib.orchestration.tasks import execute_notebook
    from srlib.quality import sr_quality

    root = book_sources(tmp_path_factory.mktemp("generated"))
    runs, executed = root / "runs", root / "book" / "executed"
    def on(identity: dict, records: list[dict]) -> list[dict]:
        return [{**r, "data": {**r["data"], "dataset": {**r["data"]["dataset"], **identity}}} for r in records]

    write_records(on(FASHION, random_records(GENERATED, 2, np.random.default_rng(0))), runs)
    write_records(on(CIFAR10, [record("original", 5)]), runs)  # another dataset: never pooled
    write_records(on(FASHION, [record("resize_x4", 7, 50.0, wrong=[1])]), runs)  # predictions 99%, summary 50%
    truncated = runs / "smoke" / "sr_x4" / "seed7" / "record.json"
    truncated.parent.mkdir(parents=True)
    truncated.write_text('{"schema": 2, "status": "compl')
    data = make_imagefolder(tmp_path_factory.mktemp("data") / "imagefolder")
    cache = tmp_path_factory.mktemp("cache")
    measured = tmp_path_factory.mktemp("quality") / "sr_quality.json"
    sr_quality(scales=(2,), n=20, data=str(data), cache_dir=str(cache), models=[],
               weights=[str(tiny_sr_weights[2])], out=measured, progress=False)
    # measured on the generated images, filed as the records' data: the page shows a measurement of its own data
    filed = {**json.loads(measured.read_text()), "data": FASHION}
    write_json(sr_quality_path(runs, "smoke", dataset_key(FASHION)), filed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SRLIB_WEIGHTS_DIR", str(tmp_path_factory.mktemp("no-weights-here")))
        result = finish(SweepRequest("smoke", out=runs, notebooks_out=executed, data=str(data), cache_dir=str(cache),
                                     records_only=True), log=lambda *_: None)
        assert not result.failed, result.failed
        page = executed / "train" / "smoke-sr_x2-seed0.ipynb"
        execute_notebook("train.ipynb", page, {"variant": "sr_x2", "profile": "smoke", "seed": 0, "out": str(runs),
                                               "records_only": True}, log_output=False)
    stale = nbformat.read(page, as_version=4)  # a page left from a sweep of another profile
    stale.metadata["papermill"]["parameters"]["profile"] = "preview"
    nbformat.write(stale, executed / "train" / "preview-sr_x2-seed0.ipynb")
    return build_book(root=root).parent


@pytest.mark.slow
def test_a_book_from_records_fits_the_screen_and_names_what_it_left_out(generated_book):
    seen = open_book(generated_book)
    assert_fits_and_loads(seen)
    assert [p for p in seen if "/train/" in p] == ["book/executed/train/smoke-sr_x2-seed0.html"]  # not the stale one
    assert not (generated_book / "book/executed/train/preview-sr_x2-seed0.html").exists()
    compare = seen["book/executed/compare.html"]
    # curves, differences, accuracy gain vs PSNR/SSIM, per-class heatmap, cost; no pictures: not these runs' data
    assert len([i for i in compare["images"] if "_images" in i["src"]]) == 5
    text = compare["text"]
    for expected in (
            "On fashion_mnist (28×28 px, 10 classes, 60,000 training / 10,000 test images, sha256 ffffffffffff): "
            "16 runs of profile smoke", "Every table and figure on this page is on this dataset",
            "smoke/sr_x4/seed7/record.json: unreadable",
            "smoke/fashion-mnist-ffffffff/resize_x4/seed7/record.json: its predictions score 99.00% but its summary "
            "says 50.00% final",
            "Not on this page: 1 run on cifar10 (canonical CIFAR-10, lossless", "make report RECORDS=",
            "DATASET=cifar10-c8cc1b78",
            "SR − resize at x2", "SR (swift-srgan) − resize at x2", "better interpolation",
            "test images right with sr_x2 only", "No pictures: the data here is",
            "x2 costs 4× the training compute of original and x4 costs 15×", "at 56 and 112 px over 28 px",
            "pp per doubling",
            "The reference report was made on canonical CIFAR-10; these runs are on fashion_mnist",
            "differences between variants may not carry to the reference protocol."):
        assert expected in text, expected
    assert "+0.548" not in text and "CIFAR-10-like" not in text  # no reference table, no CIFAR name for other data
    guide = {f"book/guide/{page}.html" for page in ("index", "data", "your-data", "reruns", "speed", "gpu",
                                                        "clusters", "code")}
    assert guide <= set(seen), guide - set(seen)  # the README's reference material, built and checked as pages
    assert "srlib kit assemble" in seen["book/guide/gpu.html"]["text"]
    assert "tiny_compact_x2.pth" in seen["book/executed/sr_quality.html"]["text"]
    run = seen["book/executed/train/smoke-sr_x2-seed0.html"]["text"]
    assert "Training run: sr_x2, seed 0" in run and "Max test accuracy" in run


@pytest.mark.slow
def test_the_book_of_the_committed_paper_records_fits_the_screen(tmp_path):
    """`srlib sweep --records results/paper` into a copy of the book: what a reader of the committed
    results sees, at a 1280 px window; records only, nothing trains."""
    from srlib.orchestration.book import build_book

    root = book_sources(tmp_path / "book")
    result = sweep(SweepRequest("paper", 1, STUDY_VARIANTS, out=ROOT / "results" / "paper",
                                notebooks_out=root / "book" / "executed", records_only=True), log=lambda *_: None)
    assert not result.failed, result.failed
    seen = open_book(build_book(root=root).parent)
    assert_fits_and_loads(seen)
    assert sorted(p for p in seen if "/train/" in p) == [
        f"book/executed/train/paper-cifar10-jpeg75-653ddc0f-{v}-seed0.html" for v in ("original", "sr_x2")]
    text = seen["book/executed/compare.html"]["text"]
    assert "cifar10-jpeg75 (a lossy JPEG q75 copy of CIFAR-10, not canonical CIFAR-10, 32×32 px" in text
    assert "sr_x2 has no resize_x2 run of the same seed" in text  # the real gap, not "no SR-quality measurement"
    assert "/work/" not in text and "kit/data" not in text  # no path of the machine that made the records
