"""A normal (non-editable) install works from any directory: the built-in studies ship in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, a folder it is installed into with pip --target), built from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, cwd=out)
    wheel = next(out.glob("hpo-*.whl"))
    target = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    return wheel, target


def test_the_wheel_carries_the_built_in_studies(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "hpo/studies/imdb.toml" in names and "hpo/record.py" in names and "hpo/spec/knobs.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_an_installed_hpo_finds_its_studies_from_another_directory(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = installed
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import hpo, hpo.cli, sys; from hpo.spec import load_spec; "
            "print(hpo.__file__); print(load_spec('imdb').name); sys.argv = ['hpo', 'studies']; hpo.cli.main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    where, name, listing = done.stdout.split("\n", 2)
    assert where.startswith(str(target)), where  # the installed copy, not this checkout
    assert name == "imdb" and listing.startswith("imdb ")
