"""The Kubernetes client (exit_handler/kube.py) against a real kube-apiserver.

The server tests (marked e2e) run on the control plane of tests/e2e_cluster.py with Argo's
CRDs installed and no Argo controller: the API server stores a Workflow as it is written,
status included (the CRD has no status subresource), which is all that get and patch need.
Identities are real: the admin kubeconfig, ServiceAccount tokens from the TokenRequest API
bound by RBAC Roles, and client certificates checked by a second kube-apiserver on the same
etcd. The load_config tests need no server.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from e2e_cluster import CONTROLLERS, KUBERNETES, Cluster, Processes, start_control_plane
from go_harness import tools
from nats_auth import TlsFiles, make_tls_files

from exit_handler import kube
from exit_handler.deadline import Deadline
from exit_handler.errors import BadInput, ExitStatus, Refused, Unavailable
from exit_handler.kube import KubeClient, KubeConfig, load_config
from exit_handler.testing import free_port

E2E = Path(__file__).parent.parent / "e2e"
NAMESPACE = "kube-client"
PUBLISHED = "kfp-exit-handler/published"
CERT_USER = "nats-auth test client"  # the common name of make_tls_files' client certificate


# --- load_config: no server ------------------------------------------------------------------


def _kubeconfig(
    path: Path,
    server: str = "https://kube.example:6443",
    user: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    **top: Any,
) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user if user is not None else {"token": "t0ken"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
        **top,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def _service_account(directory: Path, token: str, ca: bytes | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token + "\n")
    if ca is not None:
        (directory / "ca.crt").write_bytes(ca)
    return directory


def test_precedence_explicit_kubeconfig_environment_service_account_home(
    tmp_path: Path,
) -> None:
    explicit = _kubeconfig(tmp_path / "explicit", "https://explicit:1")
    listed = _kubeconfig(tmp_path / "listed", "https://listed:2")
    account = _service_account(tmp_path / "sa", "sa-token", b"unused")
    _kubeconfig(tmp_path / "home" / ".kube" / "config", "https://home:4")
    env = {
        "KUBECONFIG": f"{tmp_path / 'missing'}:{listed}",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "HOME": str(tmp_path / "home"),
    }

    assert load_config(env, str(explicit), account).server == "https://explicit:1"
    chosen = load_config(env, None, account)
    assert (chosen.server, chosen.where) == (
        "https://listed:2",
        f"kubeconfig {listed} (context ctx)",
    )
    del env["KUBECONFIG"]
    in_cluster = load_config(env, None, account)
    assert in_cluster == KubeConfig(
        server="https://10.96.0.1:443",
        where="the service account",
        token="sa-token",
        ca_file=str(account / "ca.crt"),
    )
    del env["KUBERNETES_SERVICE_HOST"]
    assert load_config(env, None, account).server == "https://home:4"


def test_in_cluster_brackets_ipv6_and_needs_the_token_file(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    account = _service_account(tmp_path / "sa", "sa-token")
    config = load_config(env, None, account)
    assert config.server == "https://[fd00::1]:6443"
    assert config.ca_file is None  # no ca.crt: the system's CAs

    # The variables without a token (automountServiceAccountToken: false) are not a pod's
    # credentials: ~/.kube/config is next.
    _kubeconfig(tmp_path / "home" / ".kube" / "config", "https://home:4")
    no_token = load_config({**env, "HOME": str(tmp_path / "home")}, None, tmp_path / "none")
    assert no_token.server == "https://home:4"


def test_no_credentials_at_all(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")}
    with pytest.raises(BadInput) as raised:
        load_config(env, None, tmp_path / "no-service-account")
    assert str(raised.value) == (
        "bad input: --workflow: no Kubernetes credentials: not in a pod with a service account "
        "token, and no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config)"
    )
    assert raised.value.status == ExitStatus.BAD_INPUT


def test_relative_paths_are_the_kubeconfigs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    (folder / "pki").mkdir(parents=True)
    (folder / "pki" / "token").write_text("from-file\n")
    path = _kubeconfig(
        folder / "config",
        cluster={"certificate-authority": "pki/ca.crt"},
        user={
            "tokenFile": "pki/token",
            "client-certificate": "pki/client.crt",
            "client-key": "/abs/client.key",
        },
    )
    monkeypatch.chdir(tmp_path)  # not the kubeconfig's directory
    config = load_config({}, "conf/config")
    assert config.ca_file == str(Path("conf/pki/ca.crt"))
    assert config.client_cert == str(Path("conf/pki/client.crt"))
    assert config.client_key == "/abs/client.key"
    assert config.token == "from-file"
    assert config.where == "kubeconfig conf/config (context ctx)"
    assert load_config({}, str(path)).ca_file == str(folder / "pki" / "ca.crt")


def test_data_forms_are_decoded_and_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    path = _kubeconfig(
        tmp_path / "config",
        cluster={"certificate-authority-data": b64(b"CA PEM"), "insecure-skip-tls-verify": False},
        user={
            "token": "s3cret-token",
            "client-certificate-data": b64(b"CERT PEM"),
            "client-key-data": b64(b"KEY PEM s3cret"),
        },
    )
    config = load_config({}, str(path))
    assert (config.ca_data, config.client_cert_data, config.client_key_data) == (
        b"CA PEM",
        b"CERT PEM",
        b"KEY PEM s3cret",
    )
    assert config.token == "s3cret-token"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("user", "named"),
    [
        (
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "gke-gcloud"}},
            "an exec credential plugin (exec)",
        ),
        ({"auth-provider": {"name": "gcp"}}, "an auth-provider plugin (auth-provider)"),
        ({"username": "admin", "password": "pw"}, "a username and password (basic auth)"),
    ],
)
def test_unsupported_user_auth_is_named(tmp_path: Path, user: dict[str, Any], named: str) -> None:
    path = _kubeconfig(tmp_path / "config", user=user)
    with pytest.raises(BadInput) as raised:
        load_config({}, str(path))
    assert str(raised.value).startswith(
        f"bad input: kubeconfig {path} (context ctx): user 'u' authenticates with {named}, "
        "which the exit handler does not support"
    )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"current-context": None}, "has no current-context"),
        ({"current-context": "other"}, "no entry named 'other' in contexts"),
        ({"clusters": {"c": {}}}, "clusters is not a list"),
        ({"clusters": [{"name": "c", "cluster": {"server": 6443}}]}, "clusters[c].cluster.server "),
        ({"clusters": [{"name": "c", "cluster": {"server": "kube:6443"}}]}, "is not an https://"),
        (
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": "https://k", "insecure-skip-tls-verify": "yes"},
                    }
                ]
            },
            "clusters[c].cluster.insecure-skip-tls-verify is not a bool",
        ),
        (
            {"users": [{"name": "u", "user": {"client-key-data": "!!not base64!!"}}]},
            "users[u].user.client-key-data is not base64",
        ),
        (
            {"users": [{"name": "u", "user": {"client-certificate": "c.crt"}}]},
            "users[u].user has no client-key(-data)",
        ),
        (
            {"users": [{"name": "u", "user": {"tokenFile": "missing-token"}}]},
            "users[u].user.tokenFile: cannot read",
        ),
    ],
)
def test_malformed_kubeconfig_names_file_and_field(
    tmp_path: Path, change: dict[str, Any], says: str
) -> None:
    path = _kubeconfig(tmp_path / "config", **change)
    with pytest.raises(BadInput) as raised:
        load_config({}, str(path))
    assert str(raised.value).startswith(f"bad input: kubeconfig {path}")
    assert says in str(raised.value)


def test_unreadable_or_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"^bad input: --kubeconfig: cannot read .*/nope: No such"):
        load_config({}, str(tmp_path / "nope"))
    (tmp_path / "bad").write_text("clusters: [unclosed\n")
    with pytest.raises(BadInput, match=r"^bad input: kubeconfig .*/bad is not YAML: "):
        load_config({}, str(tmp_path / "bad"))
    (tmp_path / "list").write_text("- a\n")
    with pytest.raises(BadInput, match=r"^bad input: kubeconfig .*/list is not a YAML mapping$"):
        load_config({}, str(tmp_path / "list"))


def test_client_certificate_data_is_loaded_through_a_private_file_then_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_tls_files(tmp_path / "tls")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = KubeConfig(
        server="https://127.0.0.1:1",
        where="test",
        client_cert_data=files.client_cert.read_bytes(),
        client_key_data=files.client_key.read_bytes(),
    )
    KubeClient(config)
    assert list(scratch.iterdir()) == []
    mismatched = KubeConfig(
        server="https://127.0.0.1:1",
        where="test",
        client_cert_data=files.client_cert.read_bytes(),
        client_key_data=files.server_key.read_bytes(),
    )
    with pytest.raises(BadInput, match=r"^bad input: test: its client certificate and key cannot"):
        KubeClient(mismatched)
    assert list(scratch.iterdir()) == []


def test_status_message_and_retry_after() -> None:
    """What the error lines quote of a Status body, and the delay a 429 or 503 asks for."""
    status = json.dumps({"kind": "Status", "message": " m" * 400, "code": 403}).encode()
    assert kube._status_message(status, "Forbidden") == ("m " * 150).strip()
    assert kube._status_message(b"<html>\n<h1>502 Bad Gateway</h1>", "x") == "<html>"
    assert kube._status_message(b"", "Service Unavailable") == "Service Unavailable"
    message = Message()
    assert kube._retry_after(message) is None
    message["Retry-After"] = "3"
    assert kube._retry_after(message) == 3.0
    message.replace_header("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT")
    assert kube._retry_after(message) is None


def test_import_does_not_load_yaml() -> None:
    import subprocess
    import sys

    code = "import sys, exit_handler.kube; print(sorted(m for m in sys.modules if 'yaml' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- against kube-apiserver ------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    """The control plane, the namespace the tests use, and its identities."""

    cluster: Cluster
    server: str
    ca: Path  # the apiserver's self-signed certificate (its CA follows it in the file)
    admin_token: str

    def token(self, account: str) -> str:
        return self.cluster.kubectl(
            "create", "token", account, "-n", NAMESPACE, "--duration=1h"
        ).strip()

    def workflow(self, status: dict[str, Any] | None = None) -> str:
        """Create a Workflow as Argo would have left it; return its name."""
        name = f"wf-{uuid.uuid4().hex[:10]}"
        self.cluster.api.call(
            "POST",
            f"/apis/argoproj.io/v1alpha1/namespaces/{NAMESPACE}/workflows",
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Workflow",
                "metadata": {"name": name, "labels": {"pipeline/runid": "run-1"}},
                "spec": {"entrypoint": "main", "templates": [{"name": "main"}]},
                "status": status or {"phase": "Succeeded"},
            },
            content_type="application/json",
        )
        return name

    def labels(self, name: str) -> dict[str, str]:
        out = self.cluster.kubectl(
            "get",
            "workflows.argoproj.io",
            name,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.metadata.labels}",
        )
        found: dict[str, str] = json.loads(out)
        return found

    def kubeconfig(self, path: Path, **cluster: Any) -> Path:
        """A kubeconfig for the admin token with the cluster settings given."""
        return _kubeconfig(path, self.server, {"token": self.admin_token}, cluster)


def _role(name: str, verbs: list[str], account: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": verbs}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [account_subject(account)],
        },
    ]


def account_subject(account: str) -> dict[str, str]:
    if account == CERT_USER:
        return {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": account}
    return {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Processes, Path]]:
    workdir = tmp_path_factory.mktemp("kube")
    logs = workdir / "logs"
    logs.mkdir()
    processes = Processes(logs)
    try:
        yield processes, workdir
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def api(processes: tuple[Processes, Path]) -> Api:
    """One control plane with Argo's CRDs; service accounts with get+patch, get, nothing."""
    running, workdir = processes
    cluster = start_control_plane(workdir, running)
    cluster.install_crds(CONTROLLERS[-1])
    cluster.kubectl("create", "namespace", NAMESPACE)
    for account in ("writer", "reader", "nobody"):
        cluster.kubectl("create", "serviceaccount", account, "-n", NAMESPACE)
    cluster.apply(
        NAMESPACE,
        *_role("workflow-writer", ["get", "patch"], "writer"),
        *_role("workflow-reader", ["get"], "reader"),
        *_role("workflow-cert-user", ["get", "patch"], CERT_USER),
    )
    admin = yaml.safe_load(cluster.kubeconfig.read_text())["users"][0]["user"]["token"]
    return Api(cluster, cluster.api.server, workdir / "apiserver" / "apiserver.crt", admin)


@pytest.mark.e2e
def test_get_workflow_with_the_admin_kubeconfig(api: Api) -> None:
    name = api.workflow()
    config = load_config({}, str(api.cluster.kubeconfig))
    assert config.insecure
    found = KubeClient(config).get_workflow(NAMESPACE, name, Deadline(30))
    assert found["kind"] == "Workflow"
    assert found["metadata"]["name"] == name
    assert found["status"] == {"phase": "Succeeded"}
    uid = api.cluster.kubectl(
        "get", "workflows.argoproj.io", name, "-n", NAMESPACE, "-o", "jsonpath={.metadata.uid}"
    )
    assert found["metadata"]["uid"] == uid


@pytest.mark.e2e
@pytest.mark.parametrize("form", ["relative file", "data"])
def test_get_workflow_verifying_the_servers_certificate(
    api: Api, tmp_path: Path, form: str
) -> None:
    shutil.copy(api.ca, tmp_path / "apiserver.crt")
    cluster = (
        {"certificate-authority": "apiserver.crt"}
        if form == "relative file"
        else {"certificate-authority-data": base64.b64encode(api.ca.read_bytes()).decode()}
    )
    config = load_config({}, str(api.kubeconfig(tmp_path / "config", **cluster)))
    assert not config.insecure
    name = api.workflow()
    assert (
        KubeClient(config).get_workflow(NAMESPACE, name, Deadline(30))["metadata"]["name"] == name
    )


@pytest.mark.e2e
def test_a_certificate_from_another_ca_is_refused_at_once(api: Api, tmp_path: Path) -> None:
    other = make_tls_files(tmp_path / "other")
    kubeconfig = api.kubeconfig(tmp_path / "config", **{"certificate-authority": str(other.ca)})
    config = load_config({}, str(kubeconfig))
    started = time.monotonic()
    with pytest.raises(Refused) as raised:
        KubeClient(config).get_workflow(NAMESPACE, api.workflow(), Deadline(30))
    assert time.monotonic() - started < 10
    assert raised.value.status == ExitStatus.REFUSED
    assert str(raised.value).startswith(
        f"the Kubernetes API {api.server} failed TLS verification (self-signed certificate "
        "in certificate chain); check the CA of kubeconfig "
    )
    assert f"check the CA of kubeconfig {tmp_path / 'config'}" in str(raised.value)


def _in_cluster(api: Api, directory: Path, token: str) -> KubeClient:
    _service_account(directory, token, api.ca.read_bytes())
    host, port = api.server.removeprefix("https://").rsplit(":", 1)
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    config = load_config(env, None, directory)
    assert config.where == "the service account"
    assert not config.insecure
    return KubeClient(config)


@pytest.mark.e2e
def test_in_cluster_service_account_reads_and_labels(api: Api, tmp_path: Path) -> None:
    name = api.workflow()
    client = _in_cluster(api, tmp_path / "sa", api.token("writer"))
    assert client.get_workflow(NAMESPACE, name, Deadline(30))["metadata"]["name"] == name
    client.label_workflow(NAMESPACE, name, {PUBLISHED: "event-id-1"}, Deadline(30))
    assert api.labels(name) == {"pipeline/runid": "run-1", PUBLISHED: "event-id-1"}
    client.label_workflow(NAMESPACE, name, {PUBLISHED: "event-id-2"}, Deadline(30))
    assert api.labels(name)[PUBLISHED] == "event-id-2"


@pytest.mark.e2e
def test_service_account_without_a_role_is_refused(api: Api, tmp_path: Path) -> None:
    name = api.workflow()
    client = _in_cluster(api, tmp_path / "sa", api.token("nobody"))
    with pytest.raises(Refused) as raised:
        client.get_workflow(NAMESPACE, name, Deadline(30))
    line = str(raised.value)
    assert int(raised.value.status) == 4
    assert line.startswith(
        f"the Kubernetes API {api.server} refused get workflow {NAMESPACE}/{name} (403): "
    )
    assert 'User "system:serviceaccount:kube-client:nobody" cannot get resource "workflows"' in line
    assert line.endswith(
        "; give the identity of the service account get and patch on workflows.argoproj.io "
        f"in namespace {NAMESPACE} (a Role and RoleBinding)"
    )
    assert "\n" not in line


@pytest.mark.e2e
def test_get_without_patch_reads_but_cannot_label(api: Api, tmp_path: Path) -> None:
    name = api.workflow()
    client = _in_cluster(api, tmp_path / "sa", api.token("reader"))
    assert client.get_workflow(NAMESPACE, name, Deadline(30))["metadata"]["name"] == name
    with pytest.raises(Refused) as raised:
        client.label_workflow(NAMESPACE, name, {PUBLISHED: "x"}, Deadline(30))
    line = str(raised.value)
    assert line.startswith(
        f"the Kubernetes API {api.server} refused patch workflow {NAMESPACE}/{name} (403): "
    )
    assert 'cannot patch resource "workflows" in API group "argoproj.io"' in line
    assert PUBLISHED not in api.labels(name)


@pytest.mark.e2e
def test_a_bad_token_is_refused_without_retrying_to_the_deadline(api: Api, tmp_path: Path) -> None:
    name = api.workflow()
    client = _in_cluster(api, tmp_path / "sa", "not-a-token")
    started = time.monotonic()
    with pytest.raises(Refused) as raised:
        client.get_workflow(NAMESPACE, name, Deadline(30))
    assert time.monotonic() - started < 10
    assert str(raised.value) == (
        f"the Kubernetes API {api.server} refused get workflow {NAMESPACE}/{name} (401): "
        "Unauthorized; the credentials of the service account are not accepted (expired token?)"
    )
    assert "not-a-token" not in str(raised.value)


@pytest.mark.e2e
def test_a_missing_workflow_is_bad_input(api: Api) -> None:
    client = KubeClient(load_config({}, str(api.cluster.kubeconfig)))
    with pytest.raises(BadInput) as raised:
        client.get_workflow(NAMESPACE, "no-such-workflow", Deadline(30))
    assert str(raised.value).startswith(
        f"bad input: --workflow: workflow {NAMESPACE}/no-such-workflow not found on {api.server} "
        '(workflows.argoproj.io "no-such-workflow" not found)'
    )
    with pytest.raises(BadInput, match="workflow other-namespace/no-such-workflow not found"):
        client.label_workflow("other-namespace", "no-such-workflow", {"a": "b"}, Deadline(30))


@pytest.mark.e2e
def test_nothing_listening_is_unavailable_at_the_deadline(api: Api, tmp_path: Path) -> None:
    """A port of the apiserver's address where nothing listens: retried until the deadline."""
    server = f"https://127.0.0.1:{free_port()}"
    path = _kubeconfig(tmp_path / "config", server, {"token": api.admin_token})
    client = KubeClient(load_config({}, str(path)))
    started = time.monotonic()
    with pytest.raises(Unavailable) as raised:
        client.get_workflow(NAMESPACE, "any", Deadline(2))
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 4
    assert raised.value.status == ExitStatus.UNAVAILABLE
    assert str(raised.value) == (
        f"the Kubernetes API {server} did not answer get workflow {NAMESPACE}/any before the "
        "deadline (2 s; last error: [Errno 111] Connection refused)"
    )


def _nodes(count: int) -> dict[str, Any]:
    """status.nodes as Argo writes them for a wide fan-out; about 600 bytes a node."""
    nodes = {}
    for index in range(count):
        node_id = f"wf-big-{index:010d}"
        nodes[node_id] = {
            "id": node_id,
            "name": f"wf-big.fan-out({index}:shard-{index})",
            "displayName": f"fan-out({index}:shard-{index})",
            "type": "Pod",
            "templateName": "trainer-shard",
            "templateScope": "local/wf-big",
            "phase": "Succeeded",
            "boundaryID": "wf-big",
            "startedAt": "2026-11-26T10:00:00Z",
            "finishedAt": "2026-11-26T10:04:13Z",
            "progress": "1/1",
            "resourcesDuration": {"cpu": 12, "memory": 96},
            "outputs": {
                "parameters": [{"name": "metrics", "value": f'{{"shard": {index}, "loss": 0.1}}'}],
                "exitCode": "0",
            },
            "hostNodeName": "kwok-node-0",
        }
    return nodes


@pytest.mark.e2e
def test_a_workflow_of_two_thousand_nodes_reads_whole(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd's default request limit (1.5 MiB) bounds what the API server stores: ~1.3 MB here."""
    status = {"phase": "Succeeded", "nodes": _nodes(2000)}
    name = api.workflow(status)
    client = KubeClient(load_config({}, str(api.cluster.kubeconfig)))
    found = client.get_workflow(NAMESPACE, name, Deadline(30))
    assert found["status"] == status
    size = len(json.dumps(found))
    assert size > 1_000_000

    monkeypatch.setattr(kube, "MAX_BODY", size // 2)
    with pytest.raises(BadInput) as raised:
        client.get_workflow(NAMESPACE, name, Deadline(30))
    assert str(raised.value).startswith(
        f"bad input: --workflow: workflow {NAMESPACE}/{name} from {api.server} is "
    )
    assert f"over {size // 2}" in str(raised.value)


# --- client certificates: a second kube-apiserver on the same etcd that checks them ---------


@pytest.fixture(scope="module")
def cert_server(api: Api, processes: tuple[Processes, Path]) -> tuple[str, TlsFiles]:
    """kube-apiserver with --client-ca-file (the first has none), serving make_tls_files'
    server certificate; returns its URL and the files."""
    running, workdir = processes
    files = make_tls_files(workdir / "mtls")
    (first,) = (proc for name, proc in running.running if name == "kube-apiserver")
    argv = cast("list[str]", first.args)  # Processes starts each from an argv list
    wanted = (
        "--etcd-servers=",
        "--service-account-issuer=",
        "--service-account-key-file=",
        "--service-account-signing-key-file=",
        "--service-cluster-ip-range=",
    )
    shared = [arg for arg in argv if arg.startswith(wanted)]
    port = free_port()
    running.start(
        "kube-apiserver-mtls",
        [
            str(tools(E2E / KUBERNETES) / "kube-apiserver"),
            *shared,
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={files.server_cert}",
            f"--tls-private-key-file={files.server_key}",
            f"--client-ca-file={files.ca}",
            "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none",
        ],
    )
    server = f"https://127.0.0.1:{port}"
    tls = ssl.create_default_context(cafile=files.ca)

    def ready() -> bool:  # /readyz is open to anonymous users
        try:
            with urllib.request.urlopen(server + "/readyz", context=tls, timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    running.wait_until("the second kube-apiserver", ready)
    return server, files


@pytest.mark.e2e
@pytest.mark.parametrize("form", ["files", "data"])
def test_client_certificate_authenticates(
    api: Api, cert_server: tuple[str, TlsFiles], tmp_path: Path, form: str
) -> None:
    server, files = cert_server

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    if form == "files":
        for path in (files.ca, files.client_cert, files.client_key):
            shutil.copy(path, tmp_path / path.name)
        cluster = {"certificate-authority": files.ca.name}
        user = {"client-certificate": files.client_cert.name, "client-key": files.client_key.name}
    else:
        cluster = {"certificate-authority-data": b64(files.ca)}
        user = {
            "client-certificate-data": b64(files.client_cert),
            "client-key-data": b64(files.client_key),
        }
    client = KubeClient(
        load_config({}, str(_kubeconfig(tmp_path / "config", server, user, cluster)))
    )
    name = api.workflow()
    assert client.get_workflow(NAMESPACE, name, Deadline(30))["metadata"]["name"] == name
    client.label_workflow(NAMESPACE, name, {PUBLISHED: form}, Deadline(30))
    assert api.labels(name)[PUBLISHED] == form


@pytest.mark.e2e
def test_a_client_certificate_of_another_ca_is_refused(
    api: Api, cert_server: tuple[str, TlsFiles], tmp_path: Path
) -> None:
    server, files = cert_server
    other = make_tls_files(tmp_path / "other")
    user = {"client-certificate": str(other.client_cert), "client-key": str(other.client_key)}
    path = _kubeconfig(tmp_path / "config", server, user, {"certificate-authority": str(files.ca)})
    with pytest.raises(Refused, match=r"refused get workflow .* \(401\): Unauthorized; the cred"):
        KubeClient(load_config({}, str(path))).get_workflow(NAMESPACE, api.workflow(), Deadline(30))
