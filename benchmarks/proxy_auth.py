"""What the storage proxy's token and TLS cost per trial, against the plain proxy, in the same run.

Three `hpo storage-proxy` processes on one database: plain (no token, no TLS: the baseline),
with a token, with a token and TLS (a self-signed certificate made here by the openssl CLI).
Through each, this process runs trials that make a real trial's storage traffic: ask, 6
parameters, ``--epochs`` times (report, a user attribute, a checkpoint of ``--checkpoint-kb``
uploaded to the artifact port), tell; and times one storage call alone and opening a storage
(connect, handshake, the access check). The configurations take turns, each first in turn, so
that the load of a shared machine falls on all three alike; medians of ``--passes``.

    python benchmarks/proxy_auth.py                                  # SQLite in a temp folder
    python benchmarks/proxy_auth.py --storage postgresql+psycopg://postgres@127.0.0.1:5432/hpo_proxy_auth   # a database of its own
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpo.storage.artifacts.http_store import HttpArtifactStore  # noqa: E402
from hpo.storage.database.proxy_client import open_grpc  # noqa: E402

AUTH_VARS = ("HPO_PROXY_TOKEN", "HPO_PROXY_TOKEN_FILE", "HPO_PROXY_CA_FILE")


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:  # the artifact port, next to it, must be free too
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def _start(url: str, env: dict[str, str], args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    full = {**{k: v for k, v in os.environ.items() if k not in AUTH_VARS}, "HPO_STORAGE": url, "PYTHONUNBUFFERED": "1", **env}
    proc = subprocess.Popen([sys.executable, "-m", "hpo.cli", "storage-proxy", "--port", str(port), *args], env=full,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("storage proxy: grpc://"):
            return proc, port
    raise RuntimeError("hpo storage-proxy did not start")


def _with_env(env: dict[str, str]) -> None:
    for name in AUTH_VARS:
        os.environ.pop(name, None)
    os.environ.update(env)


def trial_pass(port: int, env: dict[str, str], trials: int, epochs: int, checkpoint: bytes) -> dict[str, float]:
    """ms per trial, per storage call, per storage opening, through the proxy on ``port``."""
    _with_env(env)
    start = time.perf_counter()
    storage = open_grpc(f"grpc://127.0.0.1:{port}")
    opened = time.perf_counter() - start
    store = HttpArtifactStore(*storage.artifact_address, auth=storage.auth, retry_s=0)
    study = optuna.create_study(storage=storage, study_name=f"auth-{uuid.uuid4().hex[:8]}")
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        for i in range(6):
            trial.suggest_float(f"p{i}", 0.0, 1.0)
        for epoch in range(epochs):
            trial.report(float(epoch), epoch)
            trial.set_user_attr(f"epoch_{epoch}", {"loss": 1.0 / (epoch + 1)})
            store.write(f"ckpt/{trial.number}", io.BytesIO(checkpoint))
        study.tell(trial, 0.5)
    per_trial = (time.perf_counter() - start) / trials
    start = time.perf_counter()
    calls = 50
    for _ in range(calls):
        storage.get_study_id_from_name(study.study_name)
    per_call = (time.perf_counter() - start) / calls
    storage.close()
    return {"trial": per_trial * 1e3, "call": per_call * 1e3, "open": opened * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=None, help="database URL (default: SQLite in a temp folder)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--checkpoint-kb", type=int, default=256)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the finally below: no proxy left running
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = args.storage or f"sqlite:///{folder / 'proxy.db'}"
        token = secrets.token_hex(24)
        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
        configs: list[tuple[str, dict[str, str], list[str], dict[str, str]]] = [
            ("plain (baseline)", {}, [], {}),
            ("token", {"HPO_PROXY_TOKEN": token}, [], {"HPO_PROXY_TOKEN": token}),
            ("token + TLS", {"HPO_PROXY_TOKEN": token}, ["--tls-cert", str(cert), "--tls-key", str(key)],
             {"HPO_PROXY_TOKEN": token, "HPO_PROXY_CA_FILE": str(cert)}),
        ]
        procs: list[subprocess.Popen[str]] = []
        results: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in configs}
        checkpoint = os.urandom(args.checkpoint_kb * 1024)
        try:
            ports = []
            for _, server_env, server_args, _ in configs:
                proc, port = _start(url, server_env, server_args, folder)
                procs.append(proc)
                ports.append(port)
            for (_, _, _, client_env), port in zip(configs, ports):  # warm-up, not counted: imports, first connections
                trial_pass(port, client_env, 2, 1, checkpoint)
            for n in range(args.passes):
                order = list(zip(configs, ports))
                for (name, _, _, client_env), port in order[n % 3:] + order[:n % 3]:  # each goes first in turn
                    results[name].append(trial_pass(port, client_env, args.trials, args.epochs, checkpoint))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    backend = url.split(":", 1)[0].split("+")[0]
    print(f"the storage proxy with a token and TLS against the plain proxy ({backend}; {args.trials} trials of "
          f"{args.epochs} epochs, a {args.checkpoint_kb} KB checkpoint per epoch; median of {args.passes} passes; shared machine)")
    print(f"  {'':18} {'ms/trial':>9} {'vs plain':>9} {'ms/call':>8} {'open ms':>8}")
    base = statistics.median(r["trial"] for r in results[configs[0][0]])
    for name, *_ in configs:
        trial = statistics.median(r["trial"] for r in results[name])
        call = statistics.median(r["call"] for r in results[name])
        opened = statistics.median(r["open"] for r in results[name])
        print(f"  {name:18} {trial:9.1f} {trial - base:+9.1f} {call:8.2f} {opened:8.1f}")


if __name__ == "__main__":
    main()
