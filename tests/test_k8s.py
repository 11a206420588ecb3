"""The Kubernetes manifests (docker/k8s), checked offline: no cluster, no network.

Every manifest is validated against the Kubernetes OpenAPI schemas that ``kubernetes-validate``
bundles, in strict mode (an unknown or misspelt field is an error), for the oldest Kubernetes
the manifests need (1.33, where per-index backoff limits are GA) and the newest bundled one.
Each topology a user can apply (bundled PostgreSQL or an external database, each with or
without the storage proxy) is rendered with ``kubectl kustomize``, which reads local files only,
and the rendered objects are validated too and checked for what the README promises: the
dashboard reachable through port-forward only, passwords only in mounted files, workers with no
shared volume, the workers' URL naming the right Service and port, limits on every container.
Where kubectl is missing, the bundled topology (a plain list of files) is assembled by hand and
the others are skipped.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from sqlalchemy.engine import make_url

from hpo.cli import main

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install '.[test]'")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
NAMESPACE = K8S / "namespace.yaml"
# The oldest Kubernetes the manifests are written for, and the newest kubernetes-validate 1.37 bundles.
K8S_VERSIONS = ("1.33.0", "1.37.0")

KUBECTL = shutil.which("kubectl")  # `kubectl kustomize` renders the kustomizations, offline
TOPOLOGIES = ("bundled", "bundled+proxy", "external-db", "external-db+proxy")
SECRET_MOUNTS = ("secret", "projected")
EXPOSING_KINDS = {"Ingress", "IngressClass", "Gateway", "HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute", "Route"}


# --- Reading the manifests -------------------------------------------------------------------


def _load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def _kustomizations() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def _resource_files() -> list[Path]:
    """Every file a kustomization lists under ``resources`` (folders are kustomizations themselves),
    and the namespace, which the README applies by hand."""
    files = {NAMESPACE}
    for folder in _kustomizations():
        for entry in _kustomization(folder).get("resources", []):
            path = (folder / entry).resolve()
            if path.is_file():
                files.add(path)
    return sorted(files)


def _render(folder: Path) -> list[dict]:
    """``kubectl kustomize FOLDER``: local files only; KUBECONFIG points nowhere to prove it."""
    out = subprocess.run(
        [KUBECTL, "kustomize", str(folder)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _assemble(folder: Path, namespace: str | None = None, images: list | None = None) -> list[dict]:
    """What ``kubectl kustomize`` makes of a kustomization that only lists resources and sets the
    namespace and images: the bundled topology, checked even where kubectl is missing."""
    k = _kustomization(folder)
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources", "images"}, f"{folder}: needs kubectl kustomize"
    namespace, images = namespace or k.get("namespace"), images or k.get("images", [])
    docs = []
    for entry in k["resources"]:
        path = folder / entry
        docs += _assemble(path, namespace, images) if path.is_dir() else _load(path)
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for _, pod in _pods([doc]):
            for c in _containers(pod):
                for image in images:
                    if c["image"].split(":")[0] == image["name"]:
                        c["image"] = f"{image['newName']}:{image['newTag']}"
    return docs


def _with_proxy(tmp: Path, kustomization: Path) -> Path:
    """A copy of docker/k8s where the storage-proxy lines of ``kustomization`` are uncommented,
    as the README tells users to do."""
    copy_root = tmp / "k8s"
    shutil.copytree(K8S, copy_root)
    target = copy_root / kustomization.relative_to(K8S) / "kustomization.yaml"
    text = target.read_text()
    new = re.sub(r"(?m)^(\s*)# (\s*(?:components:|- (?:\.\./)?components/storage-proxy)\s*)$", r"\1\2", text)
    components = yaml.safe_load(new).get("components") or []
    assert any(c.endswith("components/storage-proxy") for c in components), f"no storage-proxy line to uncomment in {target}"
    target.write_text(new)
    return target.parent


class _Topologies(dict):
    def __missing__(self, name: str) -> list[dict]:
        pytest.skip(f"kubectl not found: topology {name} cannot be rendered (its files are still validated one by one)")


@pytest.fixture(scope="module")
def topologies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    if KUBECTL is None:
        return _Topologies(bundled=_assemble(K8S))
    tmp = tmp_path_factory.mktemp("k8s")
    return _Topologies({
        "bundled": _render(K8S),
        "bundled+proxy": _render(_with_proxy(tmp / "a", K8S)),
        "external-db": _render(K8S / "external-db"),
        "external-db+proxy": _render(_with_proxy(tmp / "b", K8S / "external-db")),
    })


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not found")
def test_assembling_the_bundled_topology_by_hand_matches_kubectl(topologies: dict[str, list[dict]]) -> None:
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(_assemble(K8S), key=key) == sorted(topologies["bundled"], key=key)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


# --- Helpers on Kubernetes objects -------------------------------------------------------------


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pods(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload, pod spec) for every object that makes pods."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
            yield d, d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d, d["spec"]


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def _hpo(pod: dict) -> dict:
    (container,) = [c for c in pod["containers"] if c["name"] == "hpo"]
    return container


def _volume_at(pod: dict, container: dict, path: str) -> tuple[dict, dict]:
    """(volume, mount) under which ``path`` lies in the container."""
    mounts = [m for m in container.get("volumeMounts", []) if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no volume of {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in pod.get("volumes", []) if v["name"] == mount["name"]]
    return volume, mount


def _secret_file(pod: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) of the mounted Secret file at ``path``."""
    volume, mount = _volume_at(pod, container, path)
    assert "secret" in volume, f"{path} is not in a Secret volume"
    assert mount.get("readOnly") is True
    relative = path[len(mount["mountPath"].rstrip("/")) + 1:]
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    return volume["secret"]["secretName"], items.get(relative, relative)


def _labels_match(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are understood here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _admits(policy: dict, labels: dict, port: int | str) -> bool:
    """Whether a NetworkPolicy lets a pod of this namespace with ``labels`` connect to ``port``."""
    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"].get("ingress", []):
        sources = rule.get("from", [])
        ports = [p["port"] for p in rule.get("ports", [])]
        from_ok = not sources or any(
            set(s) == {"podSelector"} and _labels_match(s["podSelector"], labels) for s in sources
        )
        if from_ok and (not ports or port in ports):
            return True
    return False


def _policies_for(docs: list[dict], labels: dict) -> list[dict]:
    return [d for d in docs if d["kind"] == "NetworkPolicy" and _labels_match(d["spec"]["podSelector"], labels)]


def _quantity(q: str | int) -> float:
    """A Kubernetes quantity (``1536Mi``, ``500m``, ``1``) as a number (bytes, cores)."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    assert m, q
    unit = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    return float(m.group(1)) * unit[m.group(2)]


def _hpo_accepts(args: list[str]) -> None:
    """Parse ``hpo ARGS`` with the real command line (raises on an unknown option or command)."""
    command = main.commands[args[0]]
    with command.make_context(args[0], list(args[1:]), resilient_parsing=False):
        pass


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _sets(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")


# --- Validation ------------------------------------------------------------------------------


def _validate(doc: dict, where: str) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {doc['kind']}/{doc['metadata'].get('name')} is not valid Kubernetes {version}: {exc}")


def test_the_schemas_are_bundled_and_need_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from kubernetes_validate.utils import all_versions

    assert set(K8S_VERSIONS) <= set(all_versions())

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("kubernetes-validate tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for doc in _load(K8S / "base" / "worker.yaml"):
        _validate(doc, "offline")


@pytest.mark.parametrize("path", _resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = _load(path)
    assert docs
    for doc in docs:
        _validate(doc, str(path.relative_to(ROOT)))


def test_validation_is_strict_enough_to_catch_a_typo() -> None:
    job = _one(_load(K8S / "base" / "worker.yaml"), "Job", "hpo-worker")
    for mutate in (
        lambda j: j["spec"].__setitem__("parallelsm", 4),  # misspelt
        lambda j: j["spec"]["template"]["spec"]["containers"][0].__setitem__("resources", {"limit": {"cpu": "1"}}),
        lambda j: j["spec"]["template"]["spec"]["containers"][0].pop("name"),  # required
        lambda j: j["spec"].__setitem__("completions", "four"),
    ):
        broken = copy.deepcopy(job)
        mutate(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_every_file_under_docker_k8s_is_used_and_every_reference_exists() -> None:
    used = {K8S / "README.rst", NAMESPACE}
    for folder in _kustomizations():
        k = _kustomization(folder)
        used.add(folder / "kustomization.yaml")
        entries = [*k.get("resources", []), *k.get("components", [])]
        entries += [p["path"] for p in k.get("patches", []) if "path" in p]
        for entry in entries:
            path = (folder / entry).resolve()
            assert path.exists(), f"{folder.relative_to(ROOT)}/kustomization.yaml: {entry} does not exist"
            if path.is_file():
                used.add(path)
        for entry in k.get("components", []):
            assert _kustomization((folder / entry).resolve())["kind"] == "Component"
    files = {p.resolve() for p in K8S.rglob("*") if p.is_file()}
    assert files == {p.resolve() for p in used}, f"not used by any kustomization: {sorted(map(str, files - used))}"


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_rendered_topology_is_valid_kubernetes(topologies: dict[str, list[dict]], topology: str) -> None:
    docs = topologies[topology]
    for doc in docs:
        _validate(doc, topology)
        # Not the Namespace itself: `kubectl delete -k` would delete it, and the database's volume with it.
        assert doc["kind"] != "Namespace"
        assert doc["metadata"].get("namespace") == _load(NAMESPACE)[0]["metadata"]["name"], doc["metadata"]["name"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Job", "hpo-worker") in kinds and ("Deployment", "hpo-dashboard") in kinds
    assert (("StatefulSet", "hpo-postgres") in kinds) == topology.startswith("bundled")
    assert (("Deployment", "hpo-storage-proxy") in kinds) == topology.endswith("+proxy")


# --- What must not regress -------------------------------------------------------------------


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_nothing_is_reachable_from_outside_the_cluster(topologies: dict[str, list[dict]], topology: str) -> None:
    docs = topologies[topology]
    assert not {d["kind"] for d in docs} & EXPOSING_KINDS
    for service in (d for d in docs if d["kind"] == "Service"):
        spec = service["spec"]
        assert spec.get("type") == "ClusterIP", f"Service {service['metadata']['name']}: {spec.get('type')}"
        assert not spec.get("externalIPs") and not spec.get("loadBalancerIP") and "externalName" not in spec
    for _, pod in _pods(docs):
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for c in _containers(pod):
            assert all("hostPort" not in p for p in c.get("ports", []))

    # The dashboard (no login, can delete studies): ClusterIP for port-forward, and no pod may connect.
    service = _one(docs, "Service", "hpo-dashboard")
    dashboard = _one(docs, "Deployment", "hpo-dashboard")
    pod = dashboard["spec"]["template"]
    container = _hpo(pod["spec"])
    assert _labels_match({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    (container_port,) = container["ports"]
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])
    args = container["args"]
    assert args[0] == "dashboard" and int(_option(args, "--port")) == container_port["containerPort"]
    _hpo_accepts(args)
    policies = _policies_for(docs, pod["metadata"]["labels"])
    assert policies and all(p["spec"].get("ingress", []) == [] for p in policies)
    readme = (K8S / "README.rst").read_text()
    forward = f"kubectl -n hpo port-forward svc/hpo-dashboard {port['port']}:{port['port']}"
    assert forward in readme and forward in (K8S / "base" / "dashboard.yaml").read_text()


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_passwords_are_files_from_secrets_never_values(topologies: dict[str, list[dict]], topology: str) -> None:
    docs = topologies[topology]
    # No Secret is part of the manifests: they are created by hand (README), never committed.
    assert not [d for d in docs if d["kind"] == "Secret"]
    password_files = 0
    for workload, pod in _pods(docs):
        for c in _containers(pod):
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert not [e for e in c.get("envFrom", []) if "secretRef" in e], f"{where}: a whole Secret in the environment"
            for name, e in _env(c).items():
                if "PASSWORD" in name or "TOKEN" in name:
                    assert name.endswith("_FILE"), f"{where}: ${name}"
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                assert not ref or ref["key"] != "password", f"{where}: ${name} holds the password"
                value = e.get("value", "")
                if "://" in value:
                    assert make_url(value).password is None, f"{where}: ${name} has a password in it"
                if name.endswith("PASSWORD_FILE"):
                    secret, key = _secret_file(pod, c, value)
                    assert key == "password", (where, secret, key)
                    password_files += 1
            for v in pod.get("volumes", []):
                assert "hostPath" not in v, f"{workload['metadata']['name']}: hostPath"
    assert password_files >= 2  # PostgreSQL or the dashboard, and at least one more client

    if topology.startswith("bundled"):
        pg = _one(docs, "StatefulSet", "hpo-postgres")["spec"]["template"]["spec"]
        (container,) = pg["containers"]
        env = _env(container)
        assert "POSTGRES_PASSWORD" not in env
        server_secret = _secret_file(pg, container, env["POSTGRES_PASSWORD_FILE"]["value"])
        for workload, pod in _pods(docs):
            if workload["metadata"]["labels"].get("hpo/storage") == "direct":
                c = _hpo(pod)
                assert _secret_file(pod, c, _env(c)["HPO_STORAGE_PASSWORD_FILE"]["value"]) == server_secret
        assert f"create secret generic {server_secret[0]}" in (K8S / "README.rst").read_text()


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_database_clients_name_the_database_they_are_given(topologies: dict[str, list[dict]], topology: str) -> None:
    docs = topologies[topology]
    clients = [(w, p) for w, p in _pods(docs) if w["metadata"]["labels"].get("hpo/storage") == "direct"]
    names = {w["metadata"]["name"] for w, _ in clients}
    assert names == {"hpo-dashboard"} | ({"hpo-storage-proxy"} if "proxy" in topology else {"hpo-worker"})
    for workload, pod in clients:
        c = _hpo(pod)
        env = _env(c)
        if topology.startswith("bundled"):
            pg = _one(docs, "StatefulSet", "hpo-postgres")
            pg_env = _env(pg["spec"]["template"]["spec"]["containers"][0])
            service = _one(docs, "Service", "hpo-postgres")
            url = make_url(env["HPO_STORAGE"]["value"])
            assert url.drivername == "postgresql+psycopg"
            assert (url.host, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
            assert (url.username, url.database) == (pg_env["POSTGRES_USER"]["value"], pg_env["POSTGRES_DB"]["value"])
            assert _labels_match({"matchLabels": service["spec"]["selector"]}, pg["spec"]["template"]["metadata"]["labels"])
            # The database's NetworkPolicy lets exactly its clients in.
            (policy,) = _policies_for(docs, pg["spec"]["template"]["metadata"]["labels"])
            assert _admits(policy, _pod_labels(workload), "postgres")
        else:
            assert "value" not in env["HPO_STORAGE"]
            assert env["HPO_STORAGE"]["valueFrom"]["secretKeyRef"] == {"name": "hpo-database", "key": "url"}
            assert _secret_file(pod, c, env["HPO_STORAGE_PASSWORD_FILE"]["value"]) == ("hpo-database", "password")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_workers_are_an_indexed_job_with_nothing_shared_but_the_database(
    topologies: dict[str, list[dict]], topology: str, compose: dict
) -> None:
    docs = topologies[topology]
    job = _one(docs, "Job", "hpo-worker")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 1
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = _hpo(pod)

    # The command the README documents, accepted by the real command line.
    args = container["args"]
    assert args[:5] == ["optimize", "--study", "imdb", "--trials", "100"]
    _hpo_accepts(args)

    # A SIGTERM hand-over (exit 130) or an eviction is not a failure of the index.
    rules = spec["podFailurePolicy"]["rules"]
    assert any(r["action"] == "Ignore" and 130 in r.get("onExitCodes", {}).get("values", [])
               and r["onExitCodes"].get("containerName") in (None, "hpo") for r in rules)
    assert any(r["action"] == "Ignore" and {"type": "DisruptionTarget", "status": "True"} in r.get("onPodConditions", [])
               for r in rules)
    compose_grace = int(compose["services"]["worker"]["stop_grace_period"].removesuffix("s"))
    assert pod["terminationGracePeriodSeconds"] >= compose_grace

    # No shared volume and no artifact folder: the database is all a worker needs.
    env = _env(container)
    assert "HPO_ARTIFACTS" not in env
    kinds = {v["name"]: (set(v) - {"name"}).pop() for v in pod["volumes"]}
    assert set(kinds.values()) <= {"emptyDir", *SECRET_MOUNTS}, kinds
    for key in ("HPO_CACHE_DIR", "MPLCONFIGDIR"):
        volume, _ = _volume_at(pod, container, env[key]["value"])
        assert "emptyDir" in volume, key
    assert "emptyDir" in _volume_at(pod, container, "/tmp")[0]

    if topology.endswith("+proxy"):
        # Through the proxy the workers hold no database password at all, only the proxy's token.
        assert "HPO_STORAGE_PASSWORD_FILE" not in env
        assert set(kinds.values()) == {"emptyDir", "secret"}
        assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == ["hpo-proxy-token"]
        assert job["metadata"]["labels"]["hpo/storage"] == _pod_labels(job)["hpo/storage"] == "proxy"
    else:
        assert env["HPO_STORAGE_PASSWORD_FILE"]["value"].startswith("/run/secrets/")


@pytest.mark.parametrize("topology", ("bundled+proxy", "external-db+proxy"))
def test_workers_reach_the_proxy_by_its_service_name_and_port(topologies: dict[str, list[dict]], topology: str) -> None:
    docs = topologies[topology]
    job = _one(docs, "Job", "hpo-worker")
    proxy = _one(docs, "Deployment", "hpo-storage-proxy")
    service = _one(docs, "Service", "hpo-storage-proxy")
    container = _hpo(proxy["spec"]["template"]["spec"])
    args = container["args"]
    assert args[0] == "storage-proxy" and _option(args, "--host") == "0.0.0.0"
    port, artifacts = service["spec"]["ports"]
    container_port, artifact_port = container["ports"]
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])
    assert int(_option(args, "--port")) == container_port["containerPort"]
    # The artifact store: where a worker on grpc://HOST:PORT looks for it, HOST:PORT+1.
    assert artifacts["targetPort"] in (artifact_port["name"], artifact_port["containerPort"])
    assert int(_option(args, "--artifact-port")) == artifact_port["containerPort"]
    assert artifacts["port"] == port["port"] + 1
    assert _labels_match({"matchLabels": service["spec"]["selector"]}, _pod_labels(proxy))

    url = _env(_hpo(job["spec"]["template"]["spec"]))["HPO_STORAGE"]
    assert url == {"name": "HPO_STORAGE", "value": f"grpc://{service['metadata']['name']}:{port['port']}"}

    # The proxy listens on 0.0.0.0, which it refuses without a token: it and the workers read the
    # same one, from the same Secret, as a file.
    tokens = []
    for workload in (proxy, job):
        pod, c = workload["spec"]["template"]["spec"], _hpo(workload["spec"]["template"]["spec"])
        env = _env(c)
        assert "HPO_PROXY_TOKEN" not in env
        tokens.append(_secret_file(pod, c, env["HPO_PROXY_TOKEN_FILE"]["value"]))
    assert tokens[0] == tokens[1] == ("hpo-proxy-token", "token")
    assert f"create secret generic {tokens[0][0]} --from-file=token=/dev/stdin" in (K8S / "README.rst").read_text()

    # Only the workers may talk to the proxy (besides its token), and they no longer reach the database.
    (policy,) = _policies_for(docs, _pod_labels(proxy))
    for name in (container_port["name"], artifact_port["name"]):
        assert _admits(policy, _pod_labels(job), name)
        assert not _admits(policy, _pod_labels(_one(docs, "Deployment", "hpo-dashboard")), name)
    assert "HPO_ARTIFACTS" not in _env(_hpo(job["spec"]["template"]["spec"]))  # the proxy serves the artifacts
    for db_policy in _policies_for(docs, {"app.kubernetes.io/name": "hpo", "app.kubernetes.io/component": "database"}):
        assert not _admits(db_policy, _pod_labels(job), "postgres")
        assert _admits(db_policy, _pod_labels(proxy), "postgres")


def test_the_proxy_command_is_one_hpo_accepts() -> None:
    args = _hpo(_one(_load(K8S / "components" / "storage-proxy" / "storage-proxy.yaml"), "Deployment", "hpo-storage-proxy")["spec"]["template"]["spec"])["args"]
    assert args[0] == "storage-proxy"
    _hpo_accepts(args)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_container_has_limits_and_workers_fit_one_core(topologies: dict[str, list[dict]], topology: str) -> None:
    docs = topologies[topology]
    for workload, pod in _pods(docs):
        for c in _containers(pod):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{workload['metadata']['name']}/{c['name']}: {part}"
            for resource in ("cpu", "memory"):
                assert _quantity(res["requests"][resource]) <= _quantity(res["limits"][resource])

    container = _hpo(_one(docs, "Job", "hpo-worker")["spec"]["template"]["spec"])
    res, args = container["resources"], container["args"]
    # One core and ~1.2 GiB peak per worker process, with headroom: an OOM kill costs a trial.
    assert _quantity(res["limits"]["cpu"]) == _quantity(res["requests"]["cpu"]) == 1
    assert 1.25 * 2**30 <= _quantity(res["requests"]["memory"]) == _quantity(res["limits"]["memory"]) <= 2 * 2**30
    # hpo's default is a thread per core of the node, not of the CPU limit.
    jobs = int(_option(args, "--jobs"))
    assert jobs == 1 and jobs * int(_sets(args)["train.threads"]) == _quantity(res["limits"]["cpu"])


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_pod_meets_the_restricted_pod_security_standard(topologies: dict[str, list[dict]], topology: str) -> None:
    docs = topologies[topology]
    (namespace,) = _load(NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload, pod in _pods(docs):
        name = workload["metadata"]["name"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security.get("runAsUser", 1) != 0, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        for v in pod.get("volumes", []):
            assert set(v) - {"name"} <= {"emptyDir", "secret", "persistentVolumeClaim", "configMap", "projected"}, (name, v)
        for c in _containers(pod):
            s = c["securityContext"]
            assert s["allowPrivilegeEscalation"] is False and not s.get("privileged"), name
            assert s["capabilities"]["drop"] == ["ALL"] and not s["capabilities"].get("add"), name
            assert s["readOnlyRootFilesystem"] is True, name
            assert s.get("runAsUser", 1) != 0, name


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_images_are_the_ones_compose_uses(topologies: dict[str, list[dict]], topology: str, compose: dict) -> None:
    images = {c["name"]: set() for _, pod in _pods(topologies[topology]) for c in _containers(pod)}
    for _, pod in _pods(topologies[topology]):
        for c in _containers(pod):
            images[c["name"]].add(c["image"])
    assert images.pop("hpo") == {compose["services"]["worker"]["image"]}
    if topology.startswith("bundled"):
        assert images.pop("postgres") == {compose["services"]["postgres"]["image"]}
    assert not images


def test_hpo_pods_run_the_compose_image_as_its_user(compose: dict) -> None:
    """In the files themselves too: the kustomizations' ``images:`` would hide a stray tag."""
    dockerfile = (DOCKER / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+) hpo", dockerfile).group(1))
    seen = 0
    for path in _resource_files():
        for workload, pod in _pods(_load(path)):
            if any(c["name"] == "hpo" for c in pod["containers"]):
                assert pod["securityContext"]["runAsUser"] == uid, workload["metadata"]["name"]
                assert _hpo(pod)["image"] == compose["services"]["worker"]["image"], workload["metadata"]["name"]
                seen += 1
    assert seen == 3  # workers, dashboard, storage proxy
    for folder in (K8S, K8S / "external-db"):
        (image,) = _kustomization(folder)["images"]
        assert f"{image['newName']}:{image['newTag']}" == compose["services"]["worker"]["image"]


def test_the_readme_tells_how_to_run_it() -> None:
    readme = (K8S / "README.rst").read_text()
    for command in (
        "kubectl apply -f docker/k8s/namespace.yaml",
        "kubectl -n hpo create secret generic hpo-postgres --from-file=password=/dev/stdin",
        "kubectl apply -k docker/k8s",
        "kubectl -n hpo patch job hpo-worker",
        "kubectl -n hpo port-forward svc/hpo-dashboard 8080:8080",
        "components/storage-proxy",
        "kubectl -n hpo delete job hpo-worker",
        "kubectl -n hpo create secret generic hpo-proxy-token",
        "kubectl -n hpo create secret generic hpo-database",
        "kubectl apply -k docker/k8s/external-db",
    ):
        assert command in readme, command
    # The password never goes through a command line or a file of the repository.
    assert "--from-literal=password" not in readme and "--from-literal=token" not in readme


def test_kubernetes_validate_is_a_test_dependency() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(r"kubernetes-validate\b", r) for r in extras["test"])
