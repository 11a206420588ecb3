"""The README's set-up commands work as written on a fresh machine.

A new virtualenv, the README's install command run in a copy of the repository (a normal,
non-editable install: the wheel has to carry everything, the built-in studies included), then
the README's test command on one small test file, from the copy's root. That last step is the
one that broke (issue 25): ``python -m pytest`` puts the repository root first on ``sys.path``,
so the tests imported the source folder, which has no ``hpo/studies``, instead of the installed
package. ``pytest`` does not, and no test may rely on the root being importable.

Two depths, because a full install unpacks ~1.9 GB:

* by default (in the e2e run, ``pytest -m e2e``, as CI runs it) the fresh venv sees this
  environment's third-party packages through a ``.pth`` line, so the README's ``pip install
  '.[test]'`` resolves every requirement against them and installs hpo alone, from the copy,
  without downloading anything. pip writes no ``pytest`` script for a package that is already
  there, so the test writes the same two-line launcher pip would. About 20 s on 2 quiet cores;
* ``HPO_TEST_FRESH_VENV=full`` installs PyTorch (``pip install torch==<the README's version>``,
  the CPU wheel where pip finds one locally) and every dependency for real, as a new user does:
  about 3 minutes and 1.9 GB.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
SMALL_TEST_FILE = "tests/test_spec.py"  # 35 fast tests; it reads the built-in studies through hpo.studies
# What a fresh clone holds, nothing a developer's checkout accumulates.
_NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", "*.egg-info", "build", "dist", "_build",
                                     ".pytest_cache", "test-artifacts", "*.db", "*.db-*", "hpo-artifacts", "figures")


def readme_command(pattern: str) -> str:
    """The README's command line that matches ``pattern`` (its comment cut off)."""
    for line in README.read_text().splitlines():
        command = line.split("  #")[0].strip()
        if re.fullmatch(pattern, command):
            return command
    raise AssertionError(f"README.rst has no command matching {pattern!r}")


INSTALL = r"pip install '\.\[test\]'"
TEST = r"pytest( -\w+)*"
TORCH = r"pip install torch==[\d.]+ .*"


def _venv_python(folder: Path) -> Path:
    return folder / "bin" / "python"


def _shell(command: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# An e2e test: CI's own run (.ci/run) is the README's install on a fresh clone already.
@pytest.mark.slow
@pytest.mark.e2e
def test_the_readme_install_and_test_commands_work_in_a_fresh_venv(tmp_path: Path) -> None:
    full = os.environ.get("HPO_TEST_FRESH_VENV") == "full"
    clone = tmp_path / "hpo"
    shutil.copytree(ROOT, clone, ignore=_NOT_COPIED)
    assert not (clone / "hpo" / "studies").exists()  # the trap: the source folder cannot serve hpo.studies
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=True)
    site = Path(subprocess.run([_venv_python(fresh), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    if not full:
        # After the venv's own site-packages: what pip installs into the venv comes first.
        here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        (site / "_this_environment.pth").write_text("\n".join(here) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{fresh / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(fresh))

    install = readme_command(INSTALL)
    if full:
        version = re.search(r"torch==([\d.]+)", readme_command(TORCH)).group(1)
        install = f"pip install torch=={version} && {install}"
    done = _shell(install, clone, env, timeout=1800 if full else 600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if not (fresh / "bin" / "pytest").exists():  # the linked run: pytest is there, its script is not
        (fresh / "bin" / "pytest").write_text(f"#!{_venv_python(fresh)}\nimport sys\nfrom pytest import console_main\n"
                                              "sys.exit(console_main())\n")
        (fresh / "bin" / "pytest").chmod(0o755)

    # Not editable: the package is a copy in the venv, with its studies.
    where = subprocess.run([_venv_python(fresh), "-I", "-c", "import hpo.studies, hpo; print(hpo.__file__)"],
                           capture_output=True, text=True, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout

    test = f"{readme_command(TEST)} {SMALL_TEST_FILE}"
    done = _shell(test, clone, env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) > 0 and " error" not in done.stdout, done.stdout[-3000:]
