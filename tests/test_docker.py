"""The worker image and the compose file, checked statically (no Docker engine on CI machines).

They are parsed, and what the docs promise (docs/operations) is checked against them: the services, images,
commands (parsed by the real ``hpo`` command line), environment, secrets, volumes and ports.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from hpo.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _hpo_accepts(args: list[str]) -> None:
    """Parse ``hpo ARGS`` with the real command line (raises on an unknown option or command)."""
    command = main.commands[args[0]]
    with command.make_context(args[0], list(args[1:]), resilient_parsing=False):
        pass


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_dockerfile_builds_a_cpu_worker_by_default_and_cuda_on_request() -> None:
    steps = _instructions(DOCKER / "Dockerfile")
    kinds = [k for k, _ in steps]
    assert kinds[0] == "ARG" and steps[kinds.index("FROM")][1].startswith("python:${PYTHON_VERSION}-slim")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    readme_torch = re.search(r"pip install torch==([\d.]+)", (ROOT / "README.rst").read_text()).group(1)
    assert args["TORCH_VERSION"] == readme_torch
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"  # PyPI's default is the CUDA build
    runs = [a for k, a in steps if k == "RUN"]
    assert any('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in r for r in runs)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = [m for r in runs for m in re.findall(r'pip install "\.\[([a-z,]+)\]"', r)]
    assert installs and set(installs[0].split(",")) == {"postgres", "mysql"} <= set(extras)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for k, a in steps:
        if k == "COPY":
            *sources, _ = shlex.split(a)
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src.rstrip("/") not in ignored, src
    user = [a for k, a in steps if k == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["hpo"]') in steps
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hpo"] == "hpo.cli:main"
    cmd = yaml.safe_load([a for k, a in steps if k == "CMD"][-1])
    assert cmd[:1] == ["optimize"]
    _hpo_accepts(cmd)
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "HPO_CACHE_DIR=/cache" in env
    assert "HPO_ARTIFACTS" not in env  # the study's database is its artifact store: nothing to mount


def test_compose_has_postgres_a_scalable_worker_and_a_local_dashboard(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "worker", "dashboard"}
    secret_files = {name: s["file"] for name, s in compose["secrets"].items()}

    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    env = pg["environment"]
    assert "POSTGRES_PASSWORD" not in env
    secret = env["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert secret in pg["secrets"] and secret in secret_files
    volume, target = pg["volumes"][0].split(":")[:2]
    assert target == "/var/lib/postgresql/data" and volume in compose["volumes"]  # a named volume
    assert pg["ports"] and all(p.startswith("127.0.0.1:") for p in pg["ports"])
    assert "pg_isready" in pg["healthcheck"]["test"]

    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # or --scale would collide
    assert (DOCKER / worker["build"]["context"]).resolve() == ROOT
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["init"] is True
    command = [_interpolate(a) for a in worker["command"]]
    assert command[:5] == ["optimize", "--study", "imdb", "--trials", "100"]
    _hpo_accepts(command)
    for name in ("worker", "dashboard"):
        env = services[name]["environment"]
        url = make_url(env["HPO_STORAGE"])
        assert (url.drivername, url.host, url.username, url.database) == ("postgresql+psycopg", "postgres", "hpo", "hpo")
        assert url.password is None  # the password comes from the secret, not the environment
        assert env["HPO_STORAGE_PASSWORD_FILE"] == f"/run/secrets/{secret}" and secret in services[name]["secrets"]
        assert "HPO_ARTIFACTS" not in env  # artifacts live in PostgreSQL: no shared volume
        assert not any("artifacts" in v for v in services[name].get("volumes", []))

    dashboard = services["dashboard"]
    assert dashboard["image"] == worker["image"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    command = [_interpolate(a) for a in dashboard["command"]]
    assert command[0] == "dashboard" and command[command.index("--port") + 1] == "8080"
    _hpo_accepts(command)

    # The password file stays out of git and out of the image.
    assert secret_files[secret] == "./postgres_password.txt"
    assert "docker/postgres_password.txt" in (ROOT / ".gitignore").read_text().split()
    assert "docker/postgres_password.txt" in (ROOT / ".dockerignore").read_text().split()


def test_the_docs_explain_what_the_compose_file_does() -> None:
    readme = "\n".join(p.read_text() for p in [ROOT / "README.rst", *sorted((ROOT / "docs" / "operations").glob("*.rst"))])
    assert "docker compose up -d --build --scale worker=4" in readme
    assert "postgres_password.txt" in readme
    assert "reverse proxy" in readme and "basic_auth" in readme
    assert "--build-arg TORCH_INDEX_URL=" in readme
    assert "workers - 1" in readme  # the documented overshoot


def test_an_unknown_option_would_be_caught() -> None:
    with pytest.raises(click.UsageError):
        _hpo_accepts(["optimize", "--study", "imdb", "--trials", "100", "--no-such-option"])
