"""``$HPO_ARTIFACTS=s3://bucket/prefix`` through Optuna's Boto3ArtifactStore, against a local stub.

No real S3 server is reachable from the test machines, so the server here is a stub: a few
lines of HTTP that keep objects in a dict and answer PutObject, GetObject, HeadObject and
DeleteObject as S3 does (path-style, a NoSuchKey error for a missing key). boto3, botocore and
Optuna's store are the real ones.
"""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import urlsplit

import optuna
import pytest
from optuna.artifacts.exceptions import ArtifactNotFound

from hpo.storage.artifacts.stores import artifact_location, artifact_store

pytest.importorskip("boto3", reason="boto3 is not installed (pip install '.[test]')")


class _S3Stub(BaseHTTPRequestHandler):
    objects: dict[str, bytes] = {}

    def _key(self) -> str:
        return urlsplit(self.path).path

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        self.objects[self._key()] = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("ETag", '"stub"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self, body: bool = True) -> None:  # noqa: N802
        data = self.objects.get(self._key())
        if data is None:
            error = b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>"
            self.send_response(404)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            if body:
                self.wfile.write(error)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"stub"')
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET(body=False)

    def do_DELETE(self) -> None:  # noqa: N802
        self.objects.pop(self._key(), None)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def s3_stub(monkeypatch, tmp_path) -> Iterator[dict[str, bytes]]:
    objects: dict[str, bytes] = {}
    handler = type("Handler", (_S3Stub,), {"objects": objects})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "aws-config"
    config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}", "AWS_CONFIG_FILE": str(config),
        "AWS_ACCESS_KEY_ID": "stub", "AWS_SECRET_ACCESS_KEY": "stub", "AWS_DEFAULT_REGION": "us-east-1",
        # plain bodies, as the stub reads them (not aws-chunked with trailing checksums)
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }.items():
        monkeypatch.setenv(key, value)
    try:
        yield objects
    finally:
        server.shutdown()


def test_an_s3_location_stores_figures_and_checkpoints_under_its_prefix(s3_stub, tmp_path, monkeypatch) -> None:
    from hpo.training.checkpoints import TrialCheckpoints

    monkeypatch.setenv("HPO_ARTIFACTS", "s3://hpo-bucket/runs/")
    study = optuna.create_study(study_name="s3", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert artifact_location(study) == "s3://hpo-bucket/runs/"
    store = artifact_store(study)
    assert repr(store) == "s3://hpo-bucket/runs/"

    trial = study.ask()
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"\x89PNG" + b"x" * 5000)
    artifact_id = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(figure), study_or_trial=trial)
    assert s3_stub[f"/hpo-bucket/runs/{artifact_id}"] == figure.read_bytes()
    with store.open_reader(artifact_id) as f:
        assert f.read() == figure.read_bytes()

    store.write("checkpoint-k-a.pt", io.BytesIO(b"weights"))
    assert "/hpo-bucket/runs/checkpoint-k-a.pt" in s3_stub
    TrialCheckpoints(store, "k").remove()
    assert "/hpo-bucket/runs/checkpoint-k-a.pt" not in s3_stub
    with pytest.raises(ArtifactNotFound):
        store.open_reader("checkpoint-k-a.pt")
