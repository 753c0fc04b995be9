"""Packaging: the wheel holds every srlib module (subpackages included) and works installed on its own; conda's
environment.yml installs exactly what `make setup` does."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# A subpackage two levels deep that exists only in the copy the wheel is built from: the package discovery must
# find subpackages before issue 17's srlib/cli/ etc. exist, not only the ones present today.
PROBE = {"srlib/_wheel_probe/__init__.py": "", "srlib/_wheel_probe/deeper/__init__.py": "",
         "srlib/_wheel_probe/deeper/leaf.py": "ANSWER = 42\n"}


def python_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "srlib").rglob("*.py") if "__pycache__" not in p.parts}


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, set[str]]:
    """The wheel built from a copy of the sources (setuptools writes build/ beside pyproject.toml, and the
    working tree is shared), plus the probe subpackage: (wheel, the .py files it must hold)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "srlib", src / "srlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path, text in PROBE.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    dist = tmp_path_factory.mktemp("dist")
    # No isolation and no index: the backend comes from this environment (dev extra), so this works offline.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(dist), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (built,) = dist.glob("srlib-*.whl")
    return built, python_files(src)


def test_the_wheel_holds_every_module_and_subpackage(wheel):
    built, expected = wheel
    assert set(PROBE) < expected  # the copy holds the real modules too
    with zipfile.ZipFile(built) as archive:
        names = set(archive.namelist())
    assert sorted(expected - names) == [], "modules missing from the wheel"
    # only the package itself: no tests, notebooks or benchmarks installed as top-level packages
    assert {n.split("/")[0] for n in names if not n.startswith("srlib-")} == {"srlib"}


def test_the_installed_wheel_imports_every_module_and_runs_the_command(wheel, tmp_path, imagefolder):
    built, expected = wheel
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                           str(target), str(built)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # The dependencies (torch, ...) come from this environment; srlib must come from the wheel: PYTHONPATH is
    # searched before the editable install's finder, and the check below proves it did.
    env = {**os.environ, "PYTHONPATH": str(target)}
    modules = sorted(module_name(p) for p in expected if not p.endswith("__main__.py"))  # __main__ runs the CLI
    script = ("import importlib, json, sys\n"
              f"mods = {modules!r}\n"
              "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
              "print(json.dumps({'files': files, 'leaf': importlib.import_module("
              "'srlib._wheel_probe.deeper.leaf').ANSWER}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["leaf"] == 42
    outside = {m: f for m, f in result["files"].items() if not Path(f).resolve().is_relative_to(target.resolve())}
    assert outside == {}, "imported from somewhere else than the installed wheel"

    # the console script the wheel declares, and `python -m srlib`, both answer from the installed copy
    for command in ([str(target / "bin" / "srlib")], [sys.executable, "-m", "srlib"]):
        done = subprocess.run([*command, "data", "--data", str(imagefolder)], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0 and "imagefolder" in done.stdout, (command, done.stderr)


def makefile_extras() -> list[str]:
    """The extras `make setup` installs, from its `pip install -e '.[...]'` line."""
    found = re.findall(r"pip install .*-e '\.\[([a-z,-]+)\]'", (ROOT / "Makefile").read_text())
    assert len(found) == 1, f"the Makefile installs srlib once with extras; found {found}"
    return sorted(found[0].split(","))


def test_environment_yml_installs_what_make_setup_installs(tmp_path):
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    conda, pip = [d for d in env["dependencies"] if isinstance(d, str)], [d for d in env["dependencies"]
                                                                           if isinstance(d, dict)]
    # conda brings only the interpreter and pip: a package listed here would be a second list that drifts
    python = [d for d in conda if d.split("=")[0] == "python"]
    assert sorted(d.split("=")[0] for d in conda) == ["pip", "python"], conda
    version = python[0].split("=", 1)[1] + ".0"
    assert version in SpecifierSet(pyproject["project"]["requires-python"]), python
    assert len(pip) == 1 and len(pip[0]["pip"]) == 1, pip
    (line,) = pip[0]["pip"]
    assert shlex.split(line)[0] == "-e", line

    # pip itself reads the line (conda writes it into a requirements file and runs pip in this folder)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(line + "\n")
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-deps", "--no-index",
                           "--no-build-isolation", "--report", str(report), "-r", str(requirements)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (install,) = json.loads(report.read_text())["install"]
    assert install["metadata"]["name"] == "srlib"
    assert sorted(install["requested_extras"]) == makefile_extras()
    assert set(makefile_extras()) <= set(pyproject["project"]["optional-dependencies"])
