"""The sweep's request and its last words, without training: what it refuses, and what it says of the records it
found (the verdicts, and every record the report leaves out and why)."""

from __future__ import annotations

import json
import shutil

import pytest

from srlib.errors import ConfigError
from srlib.orchestration.request import SweepRequest
from srlib.orchestration.sweep import SweepResult, read_outcome
from srlib.runs import ROOT


def test_a_request_names_exactly_what_is_wrong_with_it():
    with pytest.raises(ConfigError) as raised:
        SweepRequest("smoke", 0).configs  # noqa: B018 - building the configs is the check
    assert str(raised.value) == "--seeds 0: a sweep runs seeds 0..N-1, so N must be >= 1"
    with pytest.raises(ConfigError, match=r"^unknown profile 'huge'"):
        SweepRequest("huge").configs  # noqa: B018
    with pytest.raises(ConfigError, match=r"^unknown executor 'cloud'; use local or slurm$"):
        SweepRequest("smoke", executor="cloud")
    request = SweepRequest("smoke", 2, ["sr_x2", "original"], overrides={"epochs": 1})
    assert [(c.variant, c.seed, c.epochs) for c in request.configs] == [
        ("sr_x2", 0, 1), ("original", 0, 1), ("sr_x2", 1, 1), ("original", 1, 1)]


def _paper_records(tmp_path):
    """The committed paper records (original and sr_x2, seed 0), with a resize_x2 partner for sr_x2 made of the same
    predictions, so that the SR - resize comparison at x2 exists (and is exactly 0)."""
    out = tmp_path / "runs"
    shutil.copytree(ROOT / "results" / "paper" / "paper", out / "paper")
    shutil.copytree(out / "paper" / "sr_x2", out / "paper" / "resize_x2")
    path = out / "paper" / "resize_x2" / "seed0" / "record.json"
    record = json.loads(path.read_text())
    record["config"]["variant"] = "resize_x2"
    path.write_text(json.dumps(record))
    return out, path


def test_the_closing_lines_name_each_record_left_out_and_why(tmp_path):
    out, resize = _paper_records(tmp_path)
    verdicts, left_out = read_outcome(out, "paper")
    assert len(verdicts) == 1 and "x2: +0.00 pp" in verdicts[0], verdicts  # SR - resize at x2
    assert left_out == []

    record = json.loads(resize.read_text())
    record["summary"]["final_test_acc"] = 99.9  # a hand-edited record: the report leaves it out, and says so
    resize.write_text(json.dumps(record))
    verdicts, left_out = read_outcome(out, "paper")
    why = (f"{resize}: summary final_test_acc 99.90 disagrees with its per-epoch metrics (86.75); its predictions "
           "score 86.75% but its summary says 99.90% final")
    assert verdicts == [] and left_out == [why]
    result = SweepResult(missing=["paper-sr_x4-seed0"], left_out=left_out, verdicts=["a verdict"])
    assert result.closing_lines() == ["no record (named in the book as not run): paper-sr_x4-seed0",
                                      f"left out of the report: {why}", "a verdict"]


def test_a_bug_in_the_verdicts_is_not_hidden(tmp_path, monkeypatch):
    import srlib.report.report_text as report_text

    out, _ = _paper_records(tmp_path)

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(report_text, "headline_verdicts", broken)
    with pytest.raises(TypeError, match="a bug"):
        read_outcome(out, "paper")
