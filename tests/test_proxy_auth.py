"""The storage proxy serves only clients presenting its token, over TLS when given a certificate.

Real `hpo storage-proxy` processes on a SQLite file, real clients (the CLI in-process, the gRPC
storage, the artifact store over HTTP): a missing or wrong token is one line and exit 2, the
proxy logs the refusal with the peer's address and never the token, the right token works on
both ports, and TLS with a self-signed certificate made here by the openssl CLI.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from hpo.cli import main
from hpo.errors import HpoError
from hpo.search.workers import work
from hpo.storage.artifacts.http_store import HttpArtifactStore
from hpo.storage.database.proxy_auth import ClientAuth, client_auth, proxy_token, token_matches
from hpo.storage.database.resilient import open_storage
from db_servers import start_storage_proxy
from db_servers import free_port

pytest.importorskip("grpc", reason="grpcio is not installed (pip install '.[test]')")

AUTH_VARS = ("HPO_PROXY_TOKEN", "HPO_PROXY_TOKEN_FILE", "HPO_PROXY_CA_FILE")


@pytest.fixture(autouse=True)
def _no_credentials_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("hpo.storage.database.proxy_client.READY_TIMEOUT_S", 3.0)


def _start_proxy(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    """`hpo storage-proxy` on a fresh SQLite file, once it says it serves: (process, port, its lines so far)."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in AUTH_VARS},
           "HPO_STORAGE": f"sqlite:///{tmp_path / 'proxy.db'}", **env}
    proc, lines = start_storage_proxy(port, tmp_path, env, *args)
    return proc, port, lines


def _stop(proc: subprocess.Popen[str], lines: list[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return "".join(lines) + out


def _report(port: int, monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[int, str]:
    """``hpo report`` against the proxy with these credentials: (exit code, stderr)."""
    for name in AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["report", "--study", "nothing-here", "--storage", f"grpc://127.0.0.1:{port}"])
    return result.exit_code, result.stderr


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1, 1) ** 2


def _trials_and_artifacts_work(url: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    storage = open_storage(url)
    study = optuna.create_study(study_name="authorized", storage=storage, load_if_exists=True)
    assert work(study, _objective, 3, poll_s=0.05) == 3
    store = HttpArtifactStore(*storage.artifact_address, auth=storage.auth, retry_s=0)
    store.write("note.txt", io.BytesIO(b"through the proxy"))
    assert store.open_reader("note.txt").read() == b"through the proxy"


def test_a_missing_or_wrong_token_is_refused_on_both_ports_and_the_right_one_works(tmp_path, monkeypatch) -> None:
    token, wrong = secrets.token_hex(24), secrets.token_hex(24)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")  # as a mounted Secret: a file, with or without a newline
    proc, port, lines = _start_proxy(tmp_path, {"HPO_PROXY_TOKEN_FILE": str(token_file)})
    try:
        assert "token required" in lines[-1]
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert token.encode() not in f.read()

        code, err = _report(port, monkeypatch)
        assert code == 2 and err.strip().splitlines() == [
            f"error: the storage proxy at grpc://127.0.0.1:{port} refused this client: it sent no token; "
            "set $HPO_PROXY_TOKEN or $HPO_PROXY_TOKEN_FILE to the proxy's token"], err
        code, err = _report(port, monkeypatch, HPO_PROXY_TOKEN=wrong)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "it sent a token that is not the proxy's" in err, err
        assert wrong not in err and "Traceback" not in err

        # The artifact port on its own: a client without the token, or with a wrong one, gets 401.
        for auth in (ClientAuth(), ClientAuth(token=wrong)):
            with pytest.raises(HpoError, match=f"storage proxy at http://127.0.0.1:{port + 1} refused this client"):
                HttpArtifactStore("127.0.0.1", port + 1, retry_s=0, auth=auth).size("x")

        _trials_and_artifacts_work(f"grpc://127.0.0.1:{port}", monkeypatch, HPO_PROXY_TOKEN=token)
    finally:
        log = _stop(proc, lines)
    refusals = [line for line in log.splitlines() if "refused a client" in line]
    assert refusals and all(line.startswith("storage proxy: refused a client at 127.0.0.1:") for line in refusals), log
    assert any("on the gRPC port: no token" in line for line in refusals), log
    assert any("on the artifact port: a wrong token" in line for line in refusals), log
    assert token not in log and wrong not in log
    assert "Traceback" not in log and "storage proxy: stopped" in log


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no certificate to test TLS with")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.e2e
def test_tls_with_a_self_signed_certificate(tmp_path, monkeypatch) -> None:
    cert, key = _self_signed(tmp_path)
    token = secrets.token_hex(24)
    proc, port, lines = _start_proxy(tmp_path, {"HPO_PROXY_TOKEN": token}, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert f"artifacts: https://127.0.0.1:{port + 1}" in lines[-1] and "token required, TLS" in lines[-1]
        # A client that does not speak TLS, or does not trust the certificate, never gets an answer.
        code, err = _report(port, monkeypatch, HPO_PROXY_TOKEN=token)
        assert code == 2 and "no storage proxy answers" in err and "set $HPO_PROXY_CA_FILE" in err, err
        with pytest.raises(HpoError, match="certificate is not trusted"):
            HttpArtifactStore("127.0.0.1", port + 1, retry_s=0, auth=ClientAuth(token=token, tls=True)).size("x")
        # Trusting the certificate but without the token: refused as without TLS.
        code, err = _report(port, monkeypatch, HPO_PROXY_CA_FILE=str(cert))
        assert code == 2 and "it sent no token" in err, err

        monkeypatch.setenv("HPO_PROXY_CA_FILE", str(cert))
        _trials_and_artifacts_work(f"grpc://127.0.0.1:{port}", monkeypatch, HPO_PROXY_TOKEN=token)
    finally:
        log = _stop(proc, lines)
    assert token not in log and "Traceback" not in log and "Handshake failed" not in log, log


@pytest.mark.e2e
def test_without_a_token_the_proxy_serves_loopback_only_unless_insecure(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HPO_STORAGE", f"sqlite:///{tmp_path / 'never-opened.db'}")
    result = CliRunner().invoke(main, ["storage-proxy", "--host", "0.0.0.0", "--port", str(free_port())])
    assert result.exit_code == 2 and "--host 0.0.0.0 lets other machines in" in result.stderr, result.output
    assert "--insecure" in result.stderr and not (tmp_path / "never-opened.db").exists()  # refused before opening it

    # --insecure: it serves (stopped at once here, as Ctrl-C would).
    proc, port, lines = _start_proxy(tmp_path, {}, "--host", "0.0.0.0", "--insecure")
    assert "NO TOKEN" in lines[-1]
    assert "storage proxy: stopped" in _stop(proc, lines)

    result = CliRunner().invoke(main, ["storage-proxy", "--tls-cert", str(tmp_path / "cert.pem")])
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in result.stderr, result.output
    (tmp_path / "cert.pem").write_text("not a certificate")
    result = CliRunner().invoke(main, ["storage-proxy", "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "cert.pem")])
    assert result.exit_code == 2 and "not a PEM file" in result.stderr, result.output


def test_the_token_comes_from_one_place_and_is_never_shown(tmp_path, monkeypatch) -> None:
    assert proxy_token() is None
    monkeypatch.setenv("HPO_PROXY_TOKEN", "short")
    with pytest.raises(HpoError, match="at least 16 printable") as caught:
        proxy_token()
    assert "short" not in str(caught.value).replace("shorter", "")
    monkeypatch.setenv("HPO_PROXY_TOKEN", "a" * 20)
    monkeypatch.setenv("HPO_PROXY_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(HpoError, match="both"):
        proxy_token()
    monkeypatch.delenv("HPO_PROXY_TOKEN")
    with pytest.raises(HpoError, match="cannot read the proxy token"):
        proxy_token()
    (tmp_path / "missing").write_text("b" * 20 + "\n")
    assert proxy_token() == "b" * 20
    auth = client_auth("grpc://proxy:13000")
    assert auth.token == "b" * 20 and not auth.tls and "b" * 20 not in repr(auth)
    assert client_auth("grpc://proxy:13000?tls=1").tls
    assert token_matches("Bearer " + "b" * 20, "b" * 20)
    assert not token_matches("Bearer " + "b" * 19, "b" * 20) and not token_matches(None, "b" * 20)
    assert not token_matches("Bearer " + "é" * 20, "b" * 20)  # not ASCII: no crash, refused


def test_refusals_are_logged_once_a_minute_per_address(monkeypatch) -> None:
    from hpo.storage.proxy.server import RefusalLog, grpc_peer

    said: list[str] = []
    refusals = RefusalLog(said.append)
    clock = iter([0.0, 1.0, 2.0, 3.0, 61.0])
    monkeypatch.setattr("hpo.storage.proxy.server.time.monotonic", lambda: next(clock))
    refusals.refused("gRPC", "10.0.0.7:5000", "no token")
    refusals.refused("gRPC", "10.0.0.7:5000", "no token")
    refusals.refused("gRPC", "10.0.0.8:5000", "a wrong token")
    refusals.refused("gRPC", "10.0.0.7:5000", "no token")
    refusals.refused("gRPC", "10.0.0.7:5000", "no token")
    assert said == [
        "storage proxy: refused a client at 10.0.0.7:5000 on the gRPC port: no token",
        "storage proxy: refused a client at 10.0.0.8:5000 on the gRPC port: a wrong token",
        "storage proxy: refused a client at 10.0.0.7:5000 on the gRPC port: no token (2 more refused since the last line)",
    ]
    assert grpc_peer("ipv4:10.0.0.7:5123") == "10.0.0.7:5123" and grpc_peer("ipv6:%5B::1%5D:5123") == "[::1]:5123"
