import subprocess
import sys

import pytest

from srlib.cli import main


def test_help_for_every_command(capsys):
    for command in ("train", "data", "upscale", "sr-quality", "sweep", "bench"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
    assert "--variant" in capsys.readouterr().out


def test_unknown_variant_is_one_clear_line(capsys):
    assert main(["train", "--variant", "sr_x8", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("srlib: error: unknown variant 'sr_x8'") and "\n" not in err


def test_bad_override_is_refused(capsys):
    assert main(["train", "--variant", "original", "--profile", "smoke", "--batch-size", "0"]) == 2
    assert "batch size" in capsys.readouterr().err


def test_train_writes_a_record(tmp_path, imagefolder, capsys):
    code = main(["train", "--variant", "nearest_x2", "--profile", "smoke", "--epochs", "1", "--width", "4",
                 "--train-size", "20", "--test-size", "10", "--data", str(imagefolder), "--out", str(tmp_path),
                 "--device", "cpu"])
    assert code == 0 and (tmp_path / "smoke" / "nearest_x2" / "seed0" / "record.json").is_file()
    assert "max" in capsys.readouterr().out


def test_data_command_reports_source(imagefolder):
    done = subprocess.run([sys.executable, "-m", "srlib", "data", "--data", str(imagefolder)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "imagefolder" in done.stdout


def test_unwritable_output_is_one_clear_line(tmp_path, imagefolder, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = main(["train", "--variant", "original", "--profile", "smoke", "--data", str(imagefolder),
                 "--out", str(blocker / "runs"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("srlib: error: ") and "a_file" in err and "\n" not in err
