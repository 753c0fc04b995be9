"""Shared fixtures: generated datasets, and the real offline data/weights when configured."""

from __future__ import annotations

import argparse
import io
import os
import pickle
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _image(rng: np.random.Generator, label: int) -> np.ndarray:
    """A 32x32 image whose colour depends on its class, so a tiny model can learn something."""
    base = np.zeros((32, 32, 3), dtype=np.float64)
    base[..., label % 3] = 60 + 18 * label
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def make_imagefolder(root: Path, train_per_class: int = 6, test_per_class: int = 3, suffix: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_image(rng, label)).save(folder / f"{i:04d}{suffix}")
    return root


def make_canonical(root: Path, per_batch: int = 20, test: int = 20) -> Path:
    """torchvision's cifar-10-batches-py layout with generated pixels."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int) -> dict:
        labels = [i % 10 for i in range(n)]
        data = np.stack([_image(rng, y).transpose(2, 0, 1).reshape(-1) for y in labels])
        return {"data": data, "labels": labels}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    return root


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "imagefolder")


@pytest.fixture
def canonical(tmp_path: Path) -> Path:
    return make_canonical(tmp_path / "datadir")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache and data directory, so none reads another's files."""
    monkeypatch.setenv("SRLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SRLIB_DATA_DIR", str(tmp_path / "no-data-here"))


def _real_copy(variable: str, what: str) -> str:
    """The folder an environment variable names (each shared copy has its own); skip when absent, fail when
    SRLIB_REQUIRE_REAL says the copies are there."""
    path = os.environ.get(variable)
    if not path or not Path(path).is_dir():
        if os.environ.get("SRLIB_REQUIRE_REAL"):
            pytest.fail(f"SRLIB_REQUIRE_REAL is set but {variable} does not name {what}")
        pytest.skip(f"set {variable} to {what} to run this test")
    return path


@pytest.fixture(scope="session")
def real_data() -> str:
    """The study's CIFAR-10 (canonical batches or the lossless Parquet copy) named by SRLIB_DATA."""
    return _real_copy("SRLIB_DATA", "the study's CIFAR-10 (e.g. the lossless cifar10-png-parquet copy)")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    path = Path(os.environ.get("SRLIB_WEIGHTS_DIR", "weights"))
    if not (path / "dctlsa_x2.safetensors").is_file():
        if os.environ.get("SRLIB_REQUIRE_REAL"):
            pytest.fail("SRLIB_REQUIRE_REAL is set but SRLIB_WEIGHTS_DIR holds no DCTLSA weights")
        pytest.skip("set SRLIB_WEIGHTS_DIR to a folder with dctlsa_x{2,3,4}.safetensors")
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the tests on real data, so the JPEG copy is decoded once per session."""
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture
def one_thread():
    """In-process training on one thread: reproducible, and no stalls when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_parquet() -> str:
    """The lossless Parquet copy of canonical CIFAR-10 (what the GPU kit ships): SRLIB_DATA_PARQUET."""
    return _real_copy("SRLIB_DATA_PARQUET", "the lossless Parquet copy of CIFAR-10 (cifar10-png-parquet)")


@pytest.fixture(scope="session")
def real_jpeg() -> str:
    """The JPEG q75 ImageFolder copy (a tested input, not the study's data): SRLIB_DATA_JPEG."""
    return _real_copy("SRLIB_DATA_JPEG", "the JPEG ImageFolder copy of CIFAR-10 (cifar10-jpeg)")


@pytest.fixture(scope="session")
def real_jpeg_parquet() -> str:
    """The same JPEG files in Parquet (Hugging Face layout): SRLIB_DATA_JPEG_PARQUET."""
    return _real_copy("SRLIB_DATA_JPEG_PARQUET", "the JPEG Parquet copy of CIFAR-10 (cifar10-jpeg-parquet)")


def make_tiny_sr_checkpoint(path: Path, scale: int, seed: int = 0) -> Path:
    """A random-weight x`scale` SR model that spandrel recognises (its "Compact" SRVGGNetCompact with 4
    features and one conv: ~1k parameters), saved as a .pth state dict like a published checkpoint."""
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=scale)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_sr_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny random-weight SR checkpoints for x2, x3 and x4: the SR path is tested without real weights."""
    root = tmp_path_factory.mktemp("tiny-sr")
    return {s: make_tiny_sr_checkpoint(root / f"tiny_compact_x{s}.pth", s) for s in (2, 3, 4)}


def assert_one_clear_data_error(path, tmp_path: Path, capsys, problem: str, fix: str) -> None:
    """Loading `path` fails with one DataError naming the problem and the fix, caches nothing, and the CLI
    prints it as one `srlib: error:` line."""
    from srlib.cli import main
    from srlib.data import load_dataset
    from srlib.errors import DataError

    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert problem in str(err.value) and fix in str(err.value)
    assert not list((tmp_path / "cache").rglob("*.npz"))  # nothing half-decoded was cached

    assert main(["data", "--load", "--data", str(path)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars may come first
    assert line.startswith("srlib: error: ") and problem in line and fix in line


def write_tar(path: Path, files: dict[str, str]) -> Path:
    """A .tar.gz holding `files` (name -> text), as the GPU kit's archive would; names are not checked."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- every command is exercised ----------------------------------------------------------------------------
# Each command the parser registers ("kit check" and the like) must be dispatched by some test in a full run of
# the suite: a new command that no test runs fails CI. The dispatcher is watched, not the tests' text.

_dispatched: set[str] = set()
_finished: dict = {"items": 0, "deselected": 0}  # and "message", when a command went undispatched


def registered_commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """"kit check" etc. -> the subparser that dispatches it; argparse lists subcommands only in its actions."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= registered_commands(sub, f"{prefix}{name} ") or {prefix + name: sub}
    return found


def unexercised_commands() -> set[str]:
    """The registered commands no test has dispatched so far in this session."""
    import srlib.cli

    return set(registered_commands(srlib.cli.build_parser())) - _dispatched


@pytest.fixture(autouse=True, scope="session")
def watch_dispatched_commands() -> Iterator[None]:
    """Every parser `srlib.cli.main` builds notes the command it dispatches (the command then runs as usual)."""
    import srlib.cli

    build_parser = srlib.cli.build_parser

    def noting(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            _dispatched.add(name)
            return func(args)
        return run

    def watched() -> argparse.ArgumentParser:
        parser = build_parser()
        for name, sub in registered_commands(parser).items():
            sub.set_defaults(func=noting(name, sub.get_default("func")))
        return parser

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(srlib.cli, "build_parser", watched)
        yield


def pytest_deselected(items: list[pytest.Item]) -> None:
    _finished["deselected"] += len(items)


def pytest_runtest_logfinish() -> None:
    _finished["items"] += 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a run of every test file with nothing deselected and nothing stopped early, name the commands no test
    dispatched and fail the run. A narrower run (one file, -k, -m "not slow", -x that stopped) proves nothing."""
    files = {Path(item.path) for item in session.items}
    everything = set(Path(__file__).parent.glob("test_*.py"))
    if files != everything or _finished["deselected"] or _finished["items"] != len(session.items):
        return
    missing = unexercised_commands()
    if missing:
        _finished["message"] = f"no test dispatches these registered commands: {', '.join(sorted(missing))}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if "message" in _finished:
        terminalreporter.write_sep("=", _finished["message"], red=True)


# Fixtures that cost over 20 s to set up (a real Slurm cluster, a trained study): a test using one is slow.
SLOW_FIXTURES = {"slurm_cluster", "study", "smoke_study", "smoke_book"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
