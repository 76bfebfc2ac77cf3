"""A real Kubernetes control plane and Argo controller for the end-to-end test.

Every part is upstream code built from the Go module proxy at the version its `e2e/` folder
pins: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and Argo's
workflow-controller. There is no container runtime: kwok plays the one node and moves pods
through their phases by the Stages in `e2e/kwok-stages.yaml` (its own pod-ready and
pod-delete, plus two for Workflow pods); `Kubelet` runs the exit handler's own container on
this machine, from the Pod exactly as the controller wrote it, the way the kubelet and Argo's
executor would, then finishes the Pod with the exit code the command returned; for the steps
kwok completes it writes the WorkflowTaskResult that Argo's executor would report.

Every process runs in its own session with its log in the work directory and is stopped by
PID, newest first.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from go_harness import go, tools

from exit_handler.testing import free_port

REPO = Path(__file__).parent.parent
E2E = REPO / "e2e"
KUBERNETES, ETCD, KWOK = "kubernetes-v1.34.4", "etcd-v3.6.16", "kwok-v0.8.0"
CONTROLLERS = ("argo-workflows-v3.5.14", "argo-workflows-v3.6.18")
NODE = "kwok-node-0"
OUR_POD_LABEL = "app.kubernetes.io/name=kfp-exit-handler"
_STOP_GRACE_S = 10
SUMMARY: list[str] = []  # lines for the end of the pytest report (conftest.py prints them)


@dataclass
class Processes:
    """Children of the test: started with a log each, stopped by PID in reverse order."""

    logs: Path
    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    peak_rss_kib: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.running.append((name, proc))

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 120) -> None:
        """Poll READY; fail with the logs' tails if a process died or time ran out."""
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, proc in self.running if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                problem = f"{', '.join(dead)} exited" if dead else f"not within {timeout:g} s"
                raise RuntimeError(f"waiting for {what}: {problem}\n{self.tails(dead)}")
            time.sleep(0.2)

    def tails(self, names: list[str] | None = None, lines: int = 15) -> str:
        chosen = names or [name for name, _ in self.running]
        return "\n".join(
            f"--- {name}.log\n" + "\n".join(self.log(name).splitlines()[-lines:]) for name in chosen
        )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str | None = None) -> None:
        """Stop NAME (or all), SIGTERM then SIGKILL, recording each one's peak RSS."""
        for entry in reversed(list(self.running)):
            if name is not None and entry[0] != name:
                continue
            proc_name, proc = entry
            self.peak_rss_kib[proc_name] = _peak_rss_kib(proc.pid)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.running.remove(entry)


def _peak_rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


class Api:
    """Plain HTTPS calls to kube-apiserver as the admin user (what `Kubelet` needs)."""

    def __init__(self, server: str, token: str) -> None:
        self.server, self._token = server, token
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE  # the apiserver's own self-signed certificate

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        content_type: str = "application/merge-patch+json",
    ) -> Any:
        request = urllib.request.Request(
            self.server + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(request, context=self._tls, timeout=10) as response:
            return json.loads(response.read())

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def ready(self) -> bool:
        try:
            request = urllib.request.Request(
                self.server + "/readyz", headers={"Authorization": f"Bearer {self._token}"}
            )
            with urllib.request.urlopen(request, context=self._tls, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False


@dataclass
class Cluster:
    """A running control plane: kubectl and the API as its admin, and the node kwok plays."""

    kubeconfig: Path
    api: Api
    bin: Path
    processes: Processes
    workdir: Path

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def apply(self, namespace: str, *documents: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(documents))

    def install_crds(self, line: str) -> None:
        """Argo's CRDs as release LINE ships them (the minimal ones of its install.yaml)."""
        module = _module_dir(E2E / line, "github.com/argoproj/argo-workflows/v3")
        self.kubectl("apply", "--server-side", "-k", str(module / "manifests/base/crds/minimal"))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    def start_controller(self, line: str, namespace: str) -> None:
        """Argo's workflow-controller of LINE, watching NAMESPACE only, no leader election."""
        controller = tools(E2E / line)
        config = {"metricsConfig": yaml.safe_dump({"enabled": True, "port": free_port()})}
        self.apply(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "workflow-controller-configmap"},
                "data": config,
            },
        )
        self.processes.start(
            line,
            [
                str(controller / "workflow-controller"),
                f"--kubeconfig={self.kubeconfig}",
                f"--namespace={namespace}",
                "--namespaced",
                f"--managed-namespace={namespace}",
                "--workflow-workers=4",
                "--qps=200",  # 2,000 pods of one run (tests/test_e2e.py) at the default 20/s: 100 s
                "--burst=400",
            ],
            env={"LEADER_ELECTION_DISABLE": "true"},
        )
        self.processes.wait_until(
            f"{line} to start", lambda: "Starting Workflow Controller" in self.processes.log(line)
        )


def _module_dir(folder: Path, module: str) -> Path:
    """Where the Go module cache holds MODULE at the version FOLDER's go.mod pins; downloads
    it (checked against go.sum) when a cold cache does not have it yet."""
    done = subprocess.run(
        [go(), "mod", "download", "-json", module],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=readonly", "GOWORK": "off"},
    )
    return Path(json.loads(done.stdout)["Dir"])


def start_control_plane(workdir: Path, processes: Processes) -> Cluster:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with one node."""
    k8s, etcd, kwok = tools(E2E / KUBERNETES), tools(E2E / ETCD), tools(E2E / KWOK)
    client, peer, secure = free_port(), free_port(), free_port()
    processes.start(
        "etcd",
        [
            str(etcd / "server"),
            "--name=e2e",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=e2e=http://127.0.0.1:{peer}",
        ],
    )
    processes.wait_until("etcd", lambda: _http_ok(f"http://127.0.0.1:{client}/health"))

    token = os.urandom(24).hex()
    (workdir / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")
    key, public = _service_account_keys(workdir)
    processes.start(
        "kube-apiserver",
        [
            str(k8s / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={secure}",
            f"--cert-dir={workdir / 'apiserver'}",
            f"--token-auth-file={workdir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={public}",
            f"--service-account-signing-key-file={key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--endpoint-reconciler-type=none",  # a loopback address cannot be an Endpoint
        ],
    )
    api = Api(f"https://127.0.0.1:{secure}", token)
    processes.wait_until("kube-apiserver", api.ready)

    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {"server": api.server, "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "admin", "user": {"token": token}}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
                "current-context": "e2e",
            }
        )
    )
    kubeconfig.chmod(0o600)
    common = [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
    processes.start(
        "kube-controller-manager",
        [
            str(k8s / "kube-controller-manager"),
            *common,
            f"--secure-port={free_port()}",
            f"--service-account-private-key-file={key}",
            "--use-service-account-credentials=false",
        ],
    )
    processes.start(
        "kube-scheduler", [str(k8s / "kube-scheduler"), *common, f"--secure-port={free_port()}"]
    )
    kwok_module = _module_dir(E2E / KWOK, "sigs.k8s.io/kwok")
    stages = workdir / "kwok-stages.yaml"
    stages.write_text(_kwok_stages(kwok_module))
    processes.start(
        "kwok",
        [
            str(kwok / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={stages}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{free_port()}",
            "--node-ip=127.0.0.1",
        ],
    )
    cluster = Cluster(kubeconfig, api, k8s, processes, workdir)
    cluster.apply("default", _node())
    processes.wait_until("the kwok node to be Ready", lambda: _node_ready(api))
    return cluster


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _service_account_keys(workdir: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key, public = workdir / "sa.key", workdir / "sa.pub"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, public


def _kwok_stages(kwok_module: Path) -> str:
    """kwok's own node stages, pod-ready and pod-delete, then ours for Workflow pods."""
    stage = kwok_module / "kustomize" / "stage"
    own = [
        stage / "node" / "fast" / "node-initialize.yaml",
        stage / "node" / "heartbeat" / "node-heartbeat.yaml",
        stage / "pod" / "fast" / "pod-ready.yaml",
        stage / "pod" / "fast" / "pod-delete.yaml",
    ]
    documents = [yaml.safe_load(path.read_text()) for path in own]
    documents[2]["spec"]["selector"]["matchExpressions"].append(
        # A pod annotated to hold stays Pending: the run is waiting for it when stopped.
        {"key": '.metadata.annotations["e2e.kfp-exit-handler/hold"]', "operator": "DoesNotExist"}
    )
    ours = yaml.safe_load_all((E2E / "kwok-stages.yaml").read_text())
    return yaml.safe_dump_all([*documents, *ours])


def _node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }


def _node_ready(api: Api) -> bool:
    try:
        node = api.get(f"/api/v1/nodes/{NODE}")
    except (OSError, urllib.error.URLError):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


# --- the kubelet and Argo's executor, for the exit handler's one container ---------------


@dataclass
class Ran:
    """One exit-handler pod run here: its name, the argv run, and what the command did."""

    pod: str
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class Kubelet:
    """Runs the exit handler's pods of one namespace on this machine.

    For the `main` container it does what the kubelet and Argo's emissary executor would:
    env from the ConfigMaps of `envFrom` and from `env` (with `$(VAR)` references expanded),
    the Secret and ConfigMap volumes written under a private root, the template's raw input
    artifacts written at their paths, the command after emissary's `--` with `$(VAR)`s in
    it expanded; then the Pod's status becomes what the kubelet reports for that exit code.
    Paths inside the pod are mapped under the root (there is no mount namespace here).
    For the steps kwok completes it writes what Argo's wait container reports, the
    WorkflowTaskResult of their declared outputs: no executor runs here.
    """

    cluster: Cluster
    namespace: str
    venv_bin: Path
    ran: list[Ran] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    before_run: Callable[[dict[str, Any]], None] | None = None

    def run_pending(self) -> list[Ran]:
        """Run every exit-handler pod kwok has made Running, and report the outputs of the
        steps kwok completed; return what ran now."""
        steps = self.cluster.api.get(
            f"/api/v1/namespaces/{self.namespace}/pods"
            f"?labelSelector=workflows.argoproj.io/workflow,!app.kubernetes.io/name"
        )["items"]
        for pod in steps:
            if (
                pod["status"].get("phase") == "Succeeded"
                and pod["metadata"]["uid"] not in self.reported
            ):
                self._report_outputs(pod)
                self.reported.add(pod["metadata"]["uid"])
        pods = self.cluster.api.get(
            f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={OUR_POD_LABEL}"
        )["items"]
        done = []
        for pod in pods:
            if pod["status"].get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
                continue
            if any(r.pod == pod["metadata"]["name"] for r in self.ran):
                continue
            if self.before_run is not None:
                self.before_run(pod)
            ran = self._run(pod)
            self._finish(pod, ran.exit_code)
            self.ran.append(ran)
            done.append(ran)
        return done

    def _run(self, pod: dict[str, Any]) -> Ran:
        name = pod["metadata"]["name"]
        root = self.cluster.workdir / "pods" / name
        root.mkdir(parents=True)
        (main,) = (c for c in pod["spec"]["containers"] if c["name"] == "main")
        env = self._environment(pod, main)
        paths = self._mount(pod, main, root)
        template = self._template(pod)
        for artifact in template.get("inputs", {}).get("artifacts", []):
            if "raw" in artifact:
                target = root / artifact["path"].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(artifact["raw"]["data"])
                paths.append(artifact["path"])
        command = main.get("command", [])
        # Argo's emissary runs the template's own command after `--`.
        command = command[command.index("--") + 1 :] if "--" in command else command
        argv = [_expand(part, env) for part in [*command, *main.get("args", [])]]
        local = [_under(root, part, paths) for part in argv]
        local_env = {key: _under(root, value, paths) for key, value in env.items()}
        local_env["PATH"] = f"{self.venv_bin}{os.pathsep}/usr/bin:/bin"
        local_env["KUBECONFIG"] = str(self._service_account(pod, root))
        done = subprocess.run(
            local,
            env=local_env,
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
            timeout=int(pod["spec"].get("activeDeadlineSeconds") or 300),
        )
        return Ran(name, argv, done.returncode, done.stdout, done.stderr)

    def _service_account(self, pod: dict[str, Any], root: Path) -> Path:
        """The pod's identity: a token of its ServiceAccount from the TokenRequest API, bound
        to the pod, as the kubelet projects one. The token and the API server's CA reach the
        process as a kubeconfig (no mount namespace here to put them at the in-cluster path)."""
        account = pod["spec"].get("serviceAccountName") or "default"
        request = self.cluster.api.call(
            "POST",
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": 3600,
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": pod["metadata"]["name"],
                        "uid": pod["metadata"]["uid"],
                    },
                },
            },
            content_type="application/json",
        )
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "in-cluster",
                            "cluster": {
                                "server": self.cluster.api.server,
                                "certificate-authority": str(
                                    self.cluster.workdir / "apiserver" / "apiserver.crt"
                                ),
                            },
                        }
                    ],
                    "users": [{"name": account, "user": {"token": request["status"]["token"]}}],
                    "contexts": [
                        {"name": "pod", "context": {"cluster": "in-cluster", "user": account}}
                    ],
                    "current-context": "pod",
                }
            )
        )
        kubeconfig.chmod(0o600)
        return kubeconfig

    def _report_outputs(self, pod: dict[str, Any]) -> None:
        """What Argo's wait container reports for a step that succeeded: a WorkflowTaskResult
        with the template's declared outputs (placeholder values: no step really ran).
        v3.6 holds a step that declares outputs until this report arrives."""
        declared = self._template(pod).get("outputs", {})
        if not declared.get("parameters") and not declared.get("artifacts"):
            return
        workflow = pod["metadata"]["labels"]["workflows.argoproj.io/workflow"]
        (owner,) = pod["metadata"]["ownerReferences"]
        (main,) = (c for c in pod["spec"]["containers"] if c["name"] == "main")
        (node_id,) = (e["value"] for e in main["env"] if e["name"] == "ARGO_NODE_ID")
        outputs = {
            # As argoexec reports them: the declared parameter (its globalName too) with the
            # value of a step that never wrote its file, the default.
            "parameters": [
                {
                    key: value
                    for key, value in (
                        ("name", p["name"]),
                        ("value", p.get("valueFrom", {}).get("default", "")),
                        ("globalName", p.get("globalName")),
                    )
                    if value is not None
                }
                for p in declared.get("parameters", [])
            ],
            "artifacts": [
                {
                    "name": a["name"],
                    "path": a.get("path", ""),
                    "s3": {"key": f"{node_id}/{a['name']}.tgz"},
                }
                for a in declared.get("artifacts", [])
            ],
        }
        self.cluster.api.call(
            "POST",
            f"/apis/argoproj.io/v1alpha1/namespaces/{self.namespace}/workflowtaskresults",
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "WorkflowTaskResult",
                "metadata": {
                    "name": node_id,
                    "labels": {
                        "workflows.argoproj.io/workflow": workflow,
                        "workflows.argoproj.io/report-outputs-completed": "true",
                    },
                    "ownerReferences": [
                        {key: owner[key] for key in ("apiVersion", "kind", "name", "uid")}
                    ],
                },
                "outputs": {key: value for key, value in outputs.items() if value},
            },
            content_type="application/json",
        )

    def _template(self, pod: dict[str, Any]) -> dict[str, Any]:
        """The resolved template Argo hands its executor: ARGO_TEMPLATE of the init container
        (v3.6 sets it there only), or the ConfigMap it was offloaded to when too large."""
        (init,) = (c for c in pod["spec"].get("initContainers", []) if c["name"] == "init")
        (value,) = (e["value"] for e in init["env"] if e["name"] == "ARGO_TEMPLATE")
        if value == "offloaded":
            value = self._read("configmaps", pod["metadata"]["name"], False)["ARGO_TEMPLATE"]
        template: dict[str, Any] = json.loads(value)
        return template

    def _environment(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            ref = source["configMapRef"]
            data = self._read("configmaps", ref["name"], ref.get("optional", False))
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        for variable in container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = _expand(variable["value"], env)
            elif "valueFrom" in variable:
                env[variable["name"]] = self._value_from(pod, variable["valueFrom"])
            else:
                env[variable["name"]] = ""
        return env

    def _value_from(self, pod: dict[str, Any], source: dict[str, Any]) -> str:
        if "fieldRef" in source:
            value: Any = pod
            for part in source["fieldRef"]["fieldPath"].split("."):
                value = value.get(part, "") if isinstance(value, dict) else ""
            return str(value)
        raise NotImplementedError(f"env valueFrom {sorted(source)}: not emulated")

    def _mount(self, pod: dict[str, Any], container: dict[str, Any], root: Path) -> list[str]:
        """Write the files of each mounted volume under ROOT; return the pod paths mapped."""
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        paths = []
        for mount in container.get("volumeMounts", []):
            target = root / mount["mountPath"].lstrip("/")
            paths.append(mount["mountPath"])
            volume = volumes[mount["name"]]
            files: dict[str, bytes] = {}
            if "secret" in volume:
                source = volume["secret"]
                data = self._read("secrets", source["secretName"], source.get("optional", False))
                files = {key: base64.b64decode(value) for key, value in data.items()}
            elif "configMap" in volume:
                source = volume["configMap"]
                data = self._read("configmaps", source["name"], source.get("optional", False))
                files = {key: value.encode() for key, value in data.items()}
            if "subPath" in mount:  # one file of the volume (Argo's input artifacts), or none yet
                target.parent.mkdir(parents=True, exist_ok=True)
                if mount["subPath"] in files:
                    target.write_bytes(files[mount["subPath"]])
                continue
            target.mkdir(parents=True, exist_ok=True)
            for key, value in files.items():
                (target / key).write_bytes(value)
        return paths

    def _read(self, kind: str, name: str, optional: bool) -> dict[str, str]:
        try:
            found = self.cluster.api.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")
        except urllib.error.HTTPError as err:
            if err.code == 404 and optional:
                return {}
            raise
        data: dict[str, str] = found.get("data") or {}
        return data

    def _finish(self, pod: dict[str, Any], exit_code: int) -> None:
        """Report what the kubelet would: every container terminated, the pod's phase."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        statuses = [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
            for container in pod["spec"]["containers"]
            for code in [exit_code if container["name"] == "main" else 0]
        ]
        phase = "Succeeded" if exit_code == 0 else "Failed"
        self.cluster.api.call(
            "PATCH",
            f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}/status",
            {"status": {"phase": phase, "containerStatuses": statuses}},
        )


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`,
    anything else stays as written."""

    def replace(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        return env.get(found.group(1), found.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def _under(root: Path, text: str, paths: list[str]) -> str:
    """TEXT with each pod path (whole, or after `=`) moved under ROOT."""
    for path in sorted(paths, key=len, reverse=True):
        found = re.search(rf"(^|=){re.escape(path)}(?=/|$)", text)
        if found is not None:
            text = text[: found.end(1)] + str(root) + text[found.end(1) :]
    return text


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    """Poll CHECK until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.3)
