"""The report: the training notebook through papermill, and a smoke study built into a book that
a real headless browser opens offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from srlib.config import STUDY_VARIANTS
from srlib.sweep import NOTEBOOKS, ROOT, sweep


def test_train_notebook_runs_through_papermill(tmp_path, imagefolder):
    import papermill as pm

    out = tmp_path / "runs"
    executed = tmp_path / "train.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / "train.ipynb"), str(executed), kernel_name="python3", progress_bar=False,
                        parameters={"variant": "resize_x2", "profile": "smoke", "seed": 0, "out": str(out),
                                    "data": str(imagefolder), "cache_dir": str(tmp_path / "cache"),
                                    "overrides": {"epochs": 1, "width": 8, "train_size": 20, "test_size": 10}})
    record = json.loads((out / "smoke" / "resize_x2" / "seed0" / "record.json").read_text())
    assert record["config"]["epochs"] == 1 and record["input_px"] == 64
    text = executed.read_text()
    assert "Max test accuracy" in text and "image/png" in text


def test_a_second_sweep_on_the_same_output_stops_with_a_clear_message(tmp_path, monkeypatch):
    import srlib.sweep as sweep_mod
    from srlib.errors import LockError
    from srlib.store import directory_lock

    monkeypatch.setattr(sweep_mod, "_run_local", lambda *a: pytest.fail("the second sweep must not run anything"))
    with directory_lock(tmp_path / "runs", "srlib sweep --profile smoke"):
        with pytest.raises(LockError, match=r"runs is in use by srlib sweep --profile smoke \(pid \d+\); wait"):
            sweep("smoke", 1, ["original"], out=tmp_path / "runs", notebooks_out=tmp_path / "nb", log=lambda *_: None,
                  preflight=False)
    assert not (tmp_path / "nb").exists()


def test_book_build_refuses_without_executed_notebooks(tmp_path):
    from srlib.book import build_book
    from srlib.errors import SrlibError

    with pytest.raises(SrlibError, match="srlib sweep"):
        build_book(root=tmp_path)


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory, real_data, weights_dir) -> tuple[Path, dict]:
    """A copy of the book sources and a smoke sweep of the five variants into it: (root, sweep kwargs)."""
    root = tmp_path_factory.mktemp("report")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("executed"))
    os.environ["SRLIB_WEIGHTS_DIR"] = str(weights_dir)
    kwargs = dict(out=root / "runs", notebooks_out=root / "book" / "executed", data=real_data,
                  cache_dir=str(tmp_path_factory.mktemp("cache")), log_output=False)
    result = sweep("smoke", 1, STUDY_VARIANTS, **kwargs)
    assert not result.failed, result.failed
    assert not result.skipped
    return root, kwargs


@pytest.fixture(scope="module")
def smoke_book(smoke_study) -> Path:
    from srlib.book import build_book

    return build_book(root=smoke_study[0]).parent


def test_sweep_rerun_does_only_what_is_missing(smoke_study):
    root, kwargs = smoke_study
    executed = sorted((root / "book" / "executed").rglob("*.ipynb"))
    before = {p: p.stat().st_mtime_ns for p in executed}
    result = sweep("smoke", 1, STUDY_VARIANTS, **kwargs)
    assert result.done == [] and result.failed == {}
    assert sorted(result.skipped) == sorted([f"smoke-{v}-seed0" for v in STUDY_VARIANTS]
                                            + ["sr_quality.ipynb", "compare.ipynb"])
    assert {p: p.stat().st_mtime_ns for p in executed} == before

    # A run whose record went missing is redone, and only it; then the analysis sees the new record.
    (root / "runs" / "smoke" / "original" / "seed0" / "record.json").unlink()
    result = sweep("smoke", 1, STUDY_VARIANTS, **kwargs)
    assert result.done == ["smoke-original-seed0", "sr_quality.ipynb", "compare.ipynb"], result
    assert len(result.skipped) == len(STUDY_VARIANTS) - 1 and not result.failed


@pytest.mark.slow
def test_report_opens_offline_in_a_browser(smoke_book):
    from browser import chromium_path, inspect_pages

    if chromium_path() is None:
        if os.environ.get("SRLIB_REQUIRE_BROWSER"):
            pytest.fail("SRLIB_REQUIRE_BROWSER is set but no chromium was found")
        pytest.skip("install Debian's chromium to run the browser check")
    pages = ["index.html"] + sorted(str(p.relative_to(smoke_book)) for p in smoke_book.rglob("book/**/*.html"))
    seen = inspect_pages(smoke_book, pages)
    assert seen["index.html"]["url"].endswith("book/intro.html")
    for page, s in seen.items():
        assert s["status"] == 200, page
        assert s["outside"] == [], f"{page} requested {s['outside']}"
        assert s["errors"] == [], f"{page} console errors {s['errors']}"
        assert all(i["complete"] and i["width"] > 0 for i in s["images"]), f"{page}: broken image {s['images']}"
    compare = seen["book/executed/compare.html"]
    assert len([i for i in compare["images"] if "_images" in i["src"]]) >= 2  # curves and per-class heatmap
    assert any(all(v in table for v in STUDY_VARIANTS) for table in compare["tables"])
    assert len(seen["book/executed/sr_quality.html"]["images"]) >= 1
    assert len([p for p in seen if "/train/" in p]) == len(STUDY_VARIANTS)


def test_pages_show_results_not_stderr(smoke_study, smoke_book):
    root, _ = smoke_study
    executed = (root / "book" / "executed" / "train" / "smoke-sr_x2-seed0.ipynb").read_text()
    assert '"name": "stderr"' in executed  # the upscaling progress bar is kept in the executed notebook ...
    for page in smoke_book.rglob("book/executed/**/*.html"):
        assert "output stderr" not in page.read_text(), page  # ... and kept off the pages


def test_compare_notebook_runs_on_generated_records(tmp_path):
    """The results page end to end without ../shared: records and predictions written as a sweep would."""
    import numpy as np
    import papermill as pm
    from test_analysis import random_records

    from srlib.runs import run_dir
    from srlib.store import save_arrays, write_json

    error_rates = {"original": 0.3, "nearest_x2": 0.25, "resize_x2": 0.2, "sr_x2": 0.18, "sr_x2@swift-srgan": 0.19,
                   "resize_x4": 0.2, "sr_x4": 0.17}
    for r in random_records(error_rates, 2, np.random.default_rng(0)):
        folder = run_dir(tmp_path / "runs", "smoke", r["config"]["variant"], r["config"]["seed"])
        folder.mkdir(parents=True)
        write_json(folder / "record.json", {k: v for k, v in r.items() if not k.startswith("_")})
        save_arrays(folder / "predictions.npz", {"predictions": r["_predictions"], "labels": r["_labels"]})
    write_json(tmp_path / "runs" / "smoke" / "sr_quality.json", {"results": [
        {"model": "dctlsa", "variant": "sr_x2", "scale": 2, "psnr_gain": 1.5, "psnr_gain_ci95": [1.4, 1.6],
         "ssim_gain": 0.03, "ssim_gain_ci95": [0.02, 0.04]},
        {"model": "swift-srgan", "variant": "sr_x2@swift-srgan", "scale": 2, "psnr_gain": -0.5, "ssim_gain": -0.01}]})
    executed = tmp_path / "compare.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / "compare.ipynb"), str(executed), kernel_name="python3", progress_bar=False,
                        parameters={"profile": "smoke", "out": str(tmp_path / "runs")})
    text = executed.read_text()
    for expected in ("14 runs of profile `smoke`", "**SR − resize at x2**", "**SR (swift-srgan) − resize at x2**",
                     "not distinguishable from 0 with 2 seeds", "seeds for 0.5 pp", "better interpolation",
                     "overflow-x: auto"):
        assert expected in text, expected
    assert text.count('"image/png"') == 4  # curves, differences, accuracy gain vs PSNR/SSIM, per-class heatmap


def test_figures_fit_the_page_with_readable_text():
    """Every report figure is at most the text column wide, with no text under 10 pt (so it reads at the
    page's width without zooming), even with the controls and an extra SR model in the study."""
    import matplotlib
    import numpy as np
    from matplotlib.text import Text
    from test_analysis import random_records

    from srlib import analysis, figures

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
            "differences": figures.differences(analysis.comparison_stats(records)),
            "image_grid": figures.image_grid(grid),
            "gain_vs_quality": figures.gain_vs_quality(analysis.pixels_or_model(records, {"results": [
                {"model": "dctlsa", "scale": 2, "psnr_gain": 1.5, "psnr_gain_ci95": [1.4, 1.6], "ssim_gain": 0.03,
                 "ssim_gain_ci95": [0.02, 0.04]},
                {"model": "swift-srgan", "scale": 2, "psnr_gain": -0.5, "ssim_gain": -0.01}]}))}
    for name, fig in made.items():
        fig.canvas.draw()  # creates the tick labels
        assert fig.get_size_inches()[0] <= figures.PAGE_WIDTH + 1e-6, name
        sizes = {t.get_text(): t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()}
        assert sizes and min(sizes.values()) >= 10, (name, {k: v for k, v in sizes.items() if v < 10})
        matplotlib.pyplot.close(fig)


def test_wide_tables_scroll_and_share_one_number_format():
    import pandas as pd

    from srlib.figures import table

    shown = table(pd.DataFrame({"a": [1.0, 2.345678], "b": ["x", "y"]}), "caption")
    html = shown._repr_html_()
    assert html.startswith("<p><em>caption</em></p><div style=\"overflow-x: auto;")
    assert "<td>1.00</td>" in html and "<td>2.35</td>" in html
    assert table(pd.DataFrame(), empty="No two variants share a seed.")._repr_html_() == (
        "<p>No two variants share a seed.</p>")  # a sentence, not "Empty DataFrame"


def test_the_book_builds_from_records_without_the_offline_copies(tmp_path, imagefolder, tiny_sr_weights, monkeypatch):
    """The whole report path on generated data, records and a tiny random SR model: no ../shared needed.
    Records mode trains nothing; the SR-quality page shows the measurement saved beside the records."""
    import numpy as np
    from test_analysis import random_records

    from srlib.book import build_book
    from srlib.quality import sr_quality
    from srlib.runs import run_dir
    from srlib.store import save_arrays, write_json

    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(tmp_path / "no-weights-here"))
    root = tmp_path / "report"
    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("executed"))
    runs = tmp_path / "runs"
    for r in random_records({"original": 0.3, "resize_x2": 0.2, "sr_x2": 0.18}, 1, np.random.default_rng(0)):
        folder = run_dir(runs, "smoke", r["config"]["variant"], r["config"]["seed"])
        folder.mkdir(parents=True)
        write_json(folder / "record.json", {k: v for k, v in r.items() if not k.startswith("_")})
        save_arrays(folder / "predictions.npz", {"predictions": r["_predictions"], "labels": r["_labels"]})
    sr_quality(scales=(2,), n=20, data=str(imagefolder), cache_dir=str(tmp_path / "cache"), models=[],
               weights=[str(tiny_sr_weights[2])], out=runs / "smoke" / "sr_quality.json", progress=False)
    result = sweep("smoke", 1, ["original", "resize_x2", "sr_x2", "resize_x4"], out=runs,
                   notebooks_out=root / "book" / "executed", records_only=True, log=lambda *_: None)
    assert not result.failed, result.failed
    assert result.missing == ["smoke-resize_x4-seed0"] or "resize_x4" in str(result.missing)
    index = build_book(root=root)
    pages = {p.name for p in index.parent.rglob("*.html")}
    assert {"compare.html", "sr_quality.html", "smoke-sr_x2-seed0.html"} <= pages
    quality = (index.parent / "book" / "executed" / "sr_quality.html").read_text()
    assert "tiny_compact_x2.pth" in quality
