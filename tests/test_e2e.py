"""End to end: Argo's real controller runs injected pipelines on a real Kubernetes API server.

Nothing Argo- or Kubernetes-shaped here is ours (tests/e2e_cluster.py): etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok and the workflow-controller of each release line
are built from the Go module proxy. The platform engineer's part is done as the README says:
`kubectl apply -k workflow-templates/` (and `cluster/`), the NATS Secret, the ConfigMap. Each
pipeline is the TFX penguin fixture (or the KFP `dsl.ExitHandler` one) put through
`exit-handler inject` and submitted with kubectl; kwok completes (or fails) its steps, and the
test runs the exit handler's pod from the Pod the controller wrote, against a real nats-server
(through a proxy that can lose JetStream acks) and fake-gcs-server. Every event the exit
handler publishes is received by argo-events' own NATS EventSource listener and judged by the
seed's Sensor (conformance/argo-events-v1.9.11).
"""

from __future__ import annotations

import base64
import gzip
import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import upload_model
from e2e_cluster import (
    CONTROLLERS,
    SUMMARY,
    Cluster,
    Kubelet,
    Processes,
    Ran,
    start_control_plane,
    wait_for,
)
from faults import NatsProxy
from test_conformance_argo_events import SEED_SENSOR, SUBJECT, V19, Listener, evaluate, fires

from exit_handler.testing import (
    FakeGcsServer,
    NatsServer,
    add_stream,
    check_message,
    jetstream_client_auth,
    stream_messages,
)
from exit_handler.workflow import PUBLISHED

pytestmark = pytest.mark.e2e

REPO = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
VENV_BIN = Path(sys.executable).parent
STREAM = "RUN_COMPLETION"
HOLD, EXIT_CODE = "e2e.kfp-exit-handler/hold", "e2e.kfp-exit-handler/exit-code"
# What this test cannot exercise without a container runtime; printed, and in the README.
NOT_EXERCISED = (
    "image pull and the image's own entrypoint",
    "the kubelet's mounts (files are written under a private root and paths mapped)",
    "runAsUser, readOnlyRootFilesystem and the other securityContext settings",
    "resource limits (no cgroup: an OOM kill is not produced)",
    "Argo's executor (argoexec): for each step kwok completes the test writes the "
    "WorkflowTaskResult its wait container would (declared outputs, placeholder values); "
    "exit-handler pods get none (v3.5.9 and later complete a pod without one)",
    "Services, DNS and NetworkPolicies: the exit handler reaches NATS and GCS on loopback",
    "the in-cluster token mount: each exit pod gets a token of its ServiceAccount, bound to the "
    "pod, from the TokenRequest API, as a kubeconfig; Workload Identity (GCS is reached "
    "without credentials)",
    "signals to running containers (argo stop is taken while the step's pod is Pending)",
)


@dataclass(frozen=True)
class Scenario:
    """One pipeline run: which fixture, how it is injected, and what the steps do."""

    fixture: str = "tfx_penguin.yaml"
    inject: tuple[str, ...] = ()
    step_annotations: tuple[tuple[str, str, str], ...] = ()  # (template, key, value)
    pipeline_root: str | None = None  # None: a fresh bucket of the run's own
    root_of: str | None = None  # share the pipeline root of that (earlier) scenario's run
    push: str | None = None  # the model version its Pusher writes while its pod runs
    push_after: str | None = None  # its Pusher starts after that scenario's has finished
    push_with: str | None = None  # its Pusher runs in the same seconds as that scenario's
    global_output: bool = False  # the evaluator sets the global output `accuracy`
    stop: str | None = None  # argo stop (Stop) or terminate (Terminate) while a step is held
    lose_first_ack: bool = False


SERVING_MODEL = ("--artifact", "serving-model=Pusher:pushed_model:0[pushed == 1]")
SCENARIOS = {
    "succeeded": Scenario(push="1764300000", global_output=True),
    "failed": Scenario(step_annotations=(("trainer", EXIT_CODE, "1"),)),
    "exit-3-then-0": Scenario(lose_first_ack=True),
    "exit-2": Scenario(pipeline_root="s3://not-gcs/penguin-pipeline"),
    "user-exit-handler": Scenario(fixture="kfp_exit_handler.yaml"),
    "continue-on-failure": Scenario(
        inject=("--continue-on-failure",), pipeline_root="s3://not-gcs/penguin-pipeline"
    ),
    "stopped": Scenario(step_annotations=(("csvexamplegen", HOLD, "true"),), stop="Stop"),
    "terminated": Scenario(step_annotations=(("csvexamplegen", HOLD, "true"),), stop="Terminate"),
    "cluster-template": Scenario(inject=("--cluster-scope",), push="1764300000"),
    # 2,000 failed nodes: nothing about them travels through arguments any more.
    "2000-failures": Scenario(fixture="many_failures.yaml"),
    # Two runs of one pipeline on one root: A created, B created, B pushes 105, A pushes 106.
    "overlap-a": Scenario(inject=SERVING_MODEL, push="106", push_after="overlap-b"),
    "overlap-b": Scenario(inject=SERVING_MODEL, root_of="overlap-a", push="105"),
    # Two runs whose Pushers run in the same seconds: neither can tell its version.
    "same-seconds-a": Scenario(inject=SERVING_MODEL, push="107", push_with="same-seconds-b"),
    "same-seconds-b": Scenario(
        inject=SERVING_MODEL, root_of="same-seconds-a", push="108", push_with="same-seconds-a"
    ),
}


@dataclass
class Run:
    """A submitted Workflow and everything observed about it."""

    name: str
    uid: str
    root: str
    pushed: str | None = None
    workflow: dict[str, Any] | None = None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("e2e")
    logs = workdir / "logs"
    logs.mkdir()
    processes = Processes(logs)
    try:
        yield start_control_plane(workdir, processes)
    finally:
        processes.stop()
        peaks = processes.peak_rss_kib
        SUMMARY.append(
            f"peak RSS of the processes started: {sum(peaks.values()) / 1024:.0f} MiB in all ("
            + ", ".join(f"{name} {kib / 1024:.0f}" for name, kib in peaks.items())
            + ")"
        )
        SUMMARY.append("not exercised (no container runtime):")
        SUMMARY.extend(f"  - {what}" for what in NOT_EXERCISED)


@pytest.fixture(scope="module")
def nats() -> Iterator[tuple[NatsServer, NatsProxy, str]]:
    """nats-server with a stream on the subject; the exit handler logs in as a user through
    a proxy, the argo-events listener as the server's no-auth user (its harness has no auth)."""
    password = secrets.token_hex(16)
    users = (
        "authorization { users = [\n"
        f'  {{user: "exit-handler", password: "{password}"}}\n'
        '  {user: "listener", password: "unused"}\n'
        "] }\n"
        'no_auth_user: "listener"'
    )
    with NatsServer(config_extra=users) as server:
        add_stream(server.url, STREAM, SUBJECT)
        with NatsProxy(server.url) as proxy:
            yield server, proxy, jetstream_client_auth("exit-handler", password)


@pytest.fixture(scope="module")
def listener(
    nats: tuple[NatsServer, NatsProxy, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listener]:
    log = tmp_path_factory.mktemp("argo-events") / "listener.log"
    with Listener(V19, nats[0].url, log) as running:
        yield running


@pytest.fixture(scope="module", params=CONTROLLERS)
def line(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Namespace:
    name: str
    cluster: Cluster
    kubelet: Kubelet
    runs: dict[str, Run]
    events: dict[str, dict[str, Any]]
    pods: dict[str, list[Ran]]


@pytest.fixture(scope="module")
def namespace(
    line: str,
    cluster: Cluster,
    nats: tuple[NatsServer, NatsProxy, str],
    listener: Listener,
    gcs_server: FakeGcsServer,
) -> Namespace:
    """The platform engineer's setup in a namespace of LINE's own, the controller, and every
    scenario's run submitted at once and watched to the end."""
    name = "e2e-" + line.removeprefix("argo-workflows-").replace(".", "-")
    _, proxy, client_auth = nats
    cluster.kubectl("create", "namespace", name)
    cluster.install_crds(line)
    cluster.kubectl("apply", "-k", str(REPO / "workflow-templates" / "cluster"))
    wait_for("the default ServiceAccount", lambda: _exists(cluster, name, "serviceaccount/default"))
    cluster.kubectl("create", "serviceaccount", "pipeline-runner", "-n", name)  # KFP's, for steps
    cluster.kubectl("apply", "-n", name, "-k", str(REPO / "workflow-templates"))
    cluster.kubectl(
        "create", "secret", "generic", "kfp-exit-handler-nats", "-n", name,
        "--from-file=client-auth=/dev/stdin", stdin=client_auth,
    )  # fmt: skip
    settings = {
        "EXIT_HANDLER_NATS_URL": proxy.url,
        "EXIT_HANDLER_NATS_AUTH_SECRET_FILE": "/var/run/secrets/exit-handler/nats/client-auth",
        "EXIT_HANDLER_TIMEOUT": "8",
        "EXIT_HANDLER_CLOCK_SKEW": "0",
        "STORAGE_EMULATOR_HOST": gcs_server.endpoint,  # the pod's environment, for the emulator
    }
    cluster.kubectl(
        "patch", "configmap", "kfp-exit-handler-config", "-n", name,
        "--type=merge", "-p", json.dumps({"data": settings}),
    )  # fmt: skip
    cluster.start_controller(line, name)

    runs: dict[str, Run] = {}
    scenario_of: dict[str, Scenario] = {}  # by workflow name
    attempted: set[str] = set()

    def before_run(pod: dict[str, Any]) -> None:
        """JetStream acks are lost for the first exit pod of a run that asks for it."""
        workflow = pod["metadata"]["labels"]["workflows.argoproj.io/workflow"]
        proxy.drop_acks = scenario_of[workflow].lose_first_ack and workflow not in attempted
        attempted.add(workflow)

    kubelet = Kubelet(cluster, name, VENV_BIN, before_run=before_run)
    listener.drain()
    for scenario_name, scenario in SCENARIOS.items():
        root = runs[scenario.root_of].root if scenario.root_of else None
        run = _submit(cluster, name, scenario, gcs_server, root)
        runs[scenario_name] = run
        scenario_of[run.name] = scenario
    helpers = [
        threading.Thread(target=_stop_when_held, args=(cluster, name, runs[key], scenario.stop))
        for key, scenario in SCENARIOS.items()
        if scenario.stop
    ] + [
        threading.Thread(target=_push, args=(cluster, name, runs, key, gcs_server))
        for key, scenario in SCENARIOS.items()
        if scenario.push
    ]
    for thread in helpers:
        thread.start()

    try:
        _drive(cluster, name, kubelet, runs)
    finally:
        for thread in helpers:
            thread.join()
        proxy.drop_acks = False
        cluster.processes.stop(line)
    events: dict[str, dict[str, Any]] = {}
    for item in listener.drain():
        event = item["event"]
        view = json.loads(event["sensor"]["data"])  # {subject, header, body}: the Sensor's
        check_message(
            {name: values[0] for name, values in view["header"].items()},
            json.dumps(view["body"]).encode(),
        )
        events.setdefault(str(view["body"].get("workflowName")), event)
    pods = {
        scenario_name: [r for r in kubelet.ran if r.pod.startswith(run.name + "-")]
        for scenario_name, run in runs.items()
    }
    return Namespace(name, cluster, kubelet, runs, events, pods)


def _exists(cluster: Cluster, namespace: str, what: str) -> bool:
    try:
        cluster.kubectl("get", "-n", namespace, what)
    except RuntimeError:
        return False
    return True


def _submit(
    cluster: Cluster, namespace: str, scenario: Scenario, gcs: FakeGcsServer, root: str | None
) -> Run:
    """`exit-handler inject` the fixture, then `kubectl create` it with its pipeline root."""
    injected = subprocess.run(
        [str(VENV_BIN / "exit-handler"), "inject", str(FIXTURES / scenario.fixture),
         *scenario.inject],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    workflow = yaml.safe_load(injected)
    annotations = [
        *scenario.step_annotations,
        *((("pusher", HOLD, "true"),) if scenario.push else ()),
        *((("evaluator", HOLD, "true"),) if scenario.push_after else ()),
    ]
    for template in workflow["spec"]["templates"]:
        for owner, key, value in annotations:
            if template["name"] == owner:
                template.setdefault("metadata", {}).setdefault("annotations", {})[key] = value
        if scenario.global_output and template["name"] == "evaluator":
            template.setdefault("outputs", {}).setdefault("parameters", []).append(
                {
                    "name": "accuracy",
                    "globalName": "accuracy",
                    "valueFrom": {"path": "/tmp/accuracy", "default": "0.93"},
                }
            )
    root = root or scenario.pipeline_root
    if root is None:
        bucket = f"e2e-{uuid.uuid4().hex[:12]}"
        gcs.create_bucket(bucket)
        root = f"gs://{bucket}/tfx/penguin-pipeline"
    for parameter in workflow["spec"].get("arguments", {}).get("parameters", []):
        if parameter["name"] in ("pipeline-root", "pipeline_root"):
            parameter["value"] = root
    created = json.loads(
        cluster.kubectl("create", "-n", namespace, "-o", "json", "-f", "-",
                        stdin=yaml.safe_dump(workflow))
    )  # fmt: skip
    return Run(created["metadata"]["name"], created["metadata"]["uid"], root)


def _held_pod(cluster: Cluster, namespace: str, run: Run, step: str) -> dict[str, Any] | None:
    """The pod of RUN's STEP while it is held Pending, else None."""
    pods = cluster.api.get(
        f"/api/v1/namespaces/{namespace}/pods"
        f"?labelSelector=workflows.argoproj.io/workflow={run.name}"
    )["items"]
    for pod in pods:
        annotations = pod["metadata"].get("annotations") or {}
        node = annotations.get("workflows.argoproj.io/node-name", "")
        if HOLD in annotations and node.endswith(f".{step}"):
            return dict(pod)
    return None


def _release(cluster: Cluster, namespace: str, pod: dict[str, Any]) -> None:
    cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, f"{HOLD}-")


def _step_finished(cluster: Cluster, namespace: str, run: Run, step: str) -> bool:
    workflow = cluster.api.get(
        f"/apis/argoproj.io/v1alpha1/namespaces/{namespace}/workflows/{run.name}"
    )
    return any(
        node.get("templateName") == step and node.get("finishedAt")
        for node in workflow.get("status", {}).get("nodes", {}).values()
    )


def _push(
    cluster: Cluster, namespace: str, runs: dict[str, Run], key: str, gcs: FakeGcsServer
) -> None:
    """What a Pusher does while its pod runs: write the model's copy under the root."""
    scenario, run = SCENARIOS[key], runs[key]
    if scenario.push_after:
        other = runs[scenario.push_after]
        wait_for(
            f"{other.name}'s pusher", lambda: _step_finished(cluster, namespace, other, "pusher")
        )
        time.sleep(1.5)  # node times are whole seconds: start this Pusher in a later one
        held = wait_for(
            "the held evaluator", lambda: _held_pod(cluster, namespace, run, "evaluator")
        )
        _release(cluster, namespace, held)
    pod = wait_for(
        f"{run.name}'s held pusher", lambda: _held_pod(cluster, namespace, run, "pusher")
    )
    if scenario.push_with:
        other = runs[scenario.push_with]
        wait_for("the other pusher", lambda: _held_pod(cluster, namespace, other, "pusher"))
    bucket, _, path = run.root.removeprefix("gs://").partition("/")
    assert scenario.push is not None
    run.pushed = upload_model(gcs, bucket, f"{path}/Pusher/pushed_model", scenario.push)
    if scenario.push_with:
        other = runs[scenario.push_with]
        wait_for("the other push", lambda: other.pushed)
    _release(cluster, namespace, pod)


def _stop_when_held(cluster: Cluster, namespace: str, run: Run, strategy: str) -> None:
    """`argo stop` (Stop) or `argo terminate` (Terminate) once the held step's pod exists."""
    wait_for("the held pod", lambda: _held_pod(cluster, namespace, run, "csvexamplegen"))
    cluster.kubectl(
        "patch", "workflow", run.name, "-n", namespace,
        "--type=merge", "-p", json.dumps({"spec": {"shutdown": strategy}}),
    )  # fmt: skip


def _drive(cluster: Cluster, namespace: str, kubelet: Kubelet, runs: dict[str, Run]) -> None:
    """Run exit-handler pods as they come until every Workflow has finished."""
    deadline = time.monotonic() + 300
    while True:
        kubelet.run_pending()
        pending = []
        for run in runs.values():
            workflow = cluster.api.get(
                f"/apis/argoproj.io/v1alpha1/namespaces/{namespace}/workflows/{run.name}"
            )
            run.workflow = workflow
            if workflow.get("status", {}).get("phase") not in ("Succeeded", "Failed", "Error"):
                pending.append(run.name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still running after 300 s: {pending}\n{cluster.processes.tails()}"
            )
        time.sleep(0.3)


# --- the scenarios ------------------------------------------------------------------------


class Phase(str):
    """A Workflow's phase that shows its nodes when an assertion on it fails."""

    nodes: str

    def __repr__(self) -> str:
        return f"{str(self)!r} (nodes: {self.nodes})"


def phase(ns: Namespace, scenario: str) -> Phase:
    workflow = ns.runs[scenario].workflow
    assert workflow is not None
    found = Phase(workflow["status"]["phase"])
    found.nodes = "; ".join(
        f"{n['displayName']} {n['phase']} {n.get('message', '')}".strip()
        for n in nodes(workflow).values()
    )
    return found


def exit_codes(ns: Namespace, scenario: str) -> list[int]:
    return [ran.exit_code for ran in ns.pods[scenario]]


def event_body(ns: Namespace, scenario: str) -> dict[str, Any]:
    name = ns.runs[scenario].name
    assert name in ns.events, f"no event for {scenario} ({name}); got {sorted(ns.events)}"
    data = json.loads(ns.events[name]["sensor"]["data"])
    body: dict[str, Any] = data.get("body", data)
    return body


def seed_fires(ns: Namespace, scenario: str) -> bool:
    event = ns.events[ns.runs[scenario].name]
    answer = evaluate(V19, [{"bus": event["bus"]}], [SEED_SENSOR])
    return fires(answer["results"][0][0])


def nodes(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`status.nodes`, or what Argo gzips into `compressedNodes` when the Workflow grows large."""
    status = workflow["status"]
    if "compressedNodes" in status:
        found: dict[str, dict[str, Any]] = json.loads(
            gzip.decompress(base64.b64decode(status["compressedNodes"]))
        )
        return found
    return dict(status.get("nodes") or {})


def node_phases(ns: Namespace, scenario: str, match: Callable[[dict[str, Any]], bool]) -> list[str]:
    workflow = ns.runs[scenario].workflow
    assert workflow is not None
    return [n["phase"] for n in nodes(workflow).values() if match(n)]


def event_id(ns: Namespace, scenario: str) -> str:
    view = json.loads(ns.events[ns.runs[scenario].name]["sensor"]["data"])
    return str(view["header"]["ce-id"][0])


def labels(ns: Namespace, scenario: str) -> dict[str, str]:
    workflow = ns.cluster.api.get(
        f"/apis/argoproj.io/v1alpha1/namespaces/{ns.name}/workflows/{ns.runs[scenario].name}"
    )
    return dict(workflow["metadata"].get("labels") or {})


def locations(artifacts: list[dict[str, str]]) -> list[str]:
    return [artifact["location"] for artifact in artifacts]


def test_a_succeeded_run_publishes_the_model_it_pushed(namespace: Namespace) -> None:
    ns = namespace
    assert phase(ns, "succeeded") == "Succeeded"
    assert exit_codes(ns, "succeeded") == [0]
    (ran,) = ns.pods["succeeded"]
    assert f"--workflow-uid={ns.runs['succeeded'].uid}" in ran.argv
    assert "--status=Succeeded" in ran.argv
    body = event_body(ns, "succeeded")
    assert body["status"] == "succeeded"
    assert body["pipelineName"] == "penguin-pipeline"
    assert body["workflowName"] == ns.runs["succeeded"].name
    assert body["namespace"] == ns.name
    assert [a["location"] for a in body["servingModelArtifacts"]] == [ns.runs["succeeded"].pushed]
    assert body["outputParameters"] == {"accuracy": "0.93"}  # from the Workflow's status
    assert seed_fires(ns, "succeeded")


def test_a_run_with_2000_failed_nodes_publishes_them_from_the_workflow(
    namespace: Namespace,
) -> None:
    ns = namespace
    assert phase(ns, "2000-failures") == "Failed"
    failed = node_phases(ns, "2000-failures", lambda n: n.get("templateName") == "fail")
    assert failed == ["Failed"] * 2000
    assert exit_codes(ns, "2000-failures") == [0]
    (ran,) = ns.pods["2000-failures"]
    assert not any(part.startswith("--failures=") for part in ran.argv)
    assert sum(len(part) for part in ran.argv) < 4096  # no argument grows with the run
    body = event_body(ns, "2000-failures")
    assert len(body["failures"]) == 20
    assert {f["templateName"] for f in body["failures"]} <= {"fail", "many-failures"}


def test_overlapping_runs_each_publish_the_model_they_pushed(namespace: Namespace) -> None:
    """A created, B created, B pushed 105, A pushed 106: each event names its own version."""
    ns = namespace
    for scenario, version in (("overlap-a", "106"), ("overlap-b", "105")):
        assert exit_codes(ns, scenario) == [0]
        body = event_body(ns, scenario)
        pushed = ns.runs[scenario].pushed
        assert str(pushed).endswith(f"/{version}")
        assert locations(body["servingModelArtifacts"]) == [pushed], scenario
        assert body["artifacts"] == [{"name": "serving-model", "location": pushed}], scenario
        assert "overlappingComponents" not in body


def test_runs_whose_pushers_ran_in_the_same_seconds_say_so(namespace: Namespace) -> None:
    ns = namespace
    both = sorted(str(ns.runs[s].pushed) for s in ("same-seconds-a", "same-seconds-b"))
    for scenario in ("same-seconds-a", "same-seconds-b"):
        body = event_body(ns, scenario)
        assert body["overlappingComponents"] == ["Pusher"]
        assert body["artifacts"] == []  # no guess
        assert sorted(locations(body["servingModelArtifacts"])) == both


def test_every_published_run_is_labelled_with_its_event_id(namespace: Namespace) -> None:
    ns = namespace
    published = [s for s in SCENARIOS if ns.runs[s].name in ns.events]
    assert len(published) >= 8, published
    for scenario in published:
        assert labels(ns, scenario).get(PUBLISHED) == event_id(ns, scenario), scenario
    assert PUBLISHED not in labels(ns, "exit-2")


def _backstop(
    ns: Namespace, scenario: str, nats_url: str, gcs: FakeGcsServer
) -> subprocess.CompletedProcess[str]:
    """What the backstop's Workflow runs: the Workflow's name and namespace, nothing else."""
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "KUBECONFIG": str(ns.cluster.kubeconfig),
        "EXIT_HANDLER_NATS_URL": nats_url,
        "EXIT_HANDLER_TIMEOUT": "10",
        "STORAGE_EMULATOR_HOST": gcs.endpoint,
    }
    return subprocess.run(
        [str(VENV_BIN / "exit-handler"), "publish", f"--workflow={ns.runs[scenario].name}",
         f"--namespace={ns.name}"],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("scenario", ["failed", "user-exit-handler", "exit-3-then-0"])
def test_the_finished_workflow_gives_the_id_its_exit_handler_sent(
    namespace: Namespace, scenario: str, gcs_server: FakeGcsServer
) -> None:
    """Read again after the run ended (its onExit nodes done, a retried attempt among them),
    the Workflow names the same outcome: the backstop and an operator send the same id."""
    ns = namespace
    done = subprocess.run(
        [str(VENV_BIN / "exit-handler"), "publish", f"--workflow={ns.runs[scenario].name}",
         f"--namespace={ns.name}", "--dry-run"],
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "KUBECONFIG": str(ns.cluster.kubeconfig),
             "STORAGE_EMULATOR_HOST": gcs_server.endpoint},
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["headers"]["ce-id"] == event_id(ns, scenario)


def test_the_backstop_publishes_a_terminated_run_once(
    namespace: Namespace, nats: tuple[NatsServer, NatsProxy, str], gcs_server: FakeGcsServer
) -> None:
    ns, url = namespace, nats[0].url
    assert phase(ns, "terminated") == "Failed"
    assert exit_codes(ns, "terminated") == []  # Terminate runs no exit handler
    assert PUBLISHED not in labels(ns, "terminated")
    name = ns.runs["terminated"].name

    def stored() -> list[dict[str, Any]]:
        messages = stream_messages(url, STREAM)
        return [json.loads(m.data) for m in messages if name.encode() in m.data]

    first = _backstop(ns, "terminated", url, gcs_server)
    assert first.returncode == 0, first.stderr
    (body,) = stored()
    assert body["status"] == "failed"
    assert body["workflowName"] == name
    assert body["pipelineName"] == "penguin-pipeline"
    assert labels(ns, "terminated")[PUBLISHED] in first.stderr  # the id it logged
    again = _backstop(ns, "terminated", url, gcs_server)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert len(stored()) == 1


def test_the_backstop_leaves_a_published_run_alone(
    namespace: Namespace, nats: tuple[NatsServer, NatsProxy, str], gcs_server: FakeGcsServer
) -> None:
    ns, url = namespace, nats[0].url
    before = len(stream_messages(url, STREAM))
    done = _backstop(ns, "succeeded", url, gcs_server)
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stderr
    assert len(stream_messages(url, STREAM)) == before


def test_a_refused_service_account_falls_back_to_the_variables(namespace: Namespace) -> None:
    """The API refuses `get workflows`: the variables on the command line stand in."""
    ns = namespace
    ns.cluster.kubectl("create", "serviceaccount", "no-rights", "-n", ns.name)
    token = ns.cluster.kubectl("create", "token", "no-rights", "-n", ns.name).strip()
    kubeconfig = yaml.safe_load(ns.cluster.kubeconfig.read_text())
    kubeconfig["users"][0]["user"] = {"token": token}
    path = ns.cluster.workdir / "no-rights.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    run = ns.runs["succeeded"]
    common = [
        str(VENV_BIN / "exit-handler"), "publish", f"--workflow={run.name}",
        f"--namespace={ns.name}", f"--kubeconfig={path}", "--dry-run",
    ]  # fmt: skip
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin"}
    fallback = subprocess.run(
        [*common, "--status=Succeeded", f"--workflow-name={run.name}",
         f"--workflow-uid={run.uid}", "--pipeline-name=penguin-pipeline"],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert fallback.returncode == 0, fallback.stderr
    assert "falling back to the variables" in fallback.stderr
    assert "forbidden" in fallback.stderr.lower()
    assert json.loads(json.loads(fallback.stdout)["payload"])["workflowName"] == run.name
    refused = subprocess.run(
        common, env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert refused.returncode == 4, refused.stderr


def test_a_failed_run_carries_the_failures_the_controller_filled(namespace: Namespace) -> None:
    ns = namespace
    assert phase(ns, "failed") == "Failed"
    assert exit_codes(ns, "failed") == [0]
    body = event_body(ns, "failed")
    assert body["status"] == "failed"
    trainer = [f for f in body["failures"] if f.get("templateName") == "trainer"]
    assert trainer, body["failures"]
    assert "exit code 1" in trainer[0]["message"]
    assert not seed_fires(ns, "failed")


def test_exit_3_is_retried_and_the_stream_stores_one_event(
    namespace: Namespace, nats: tuple[NatsServer, NatsProxy, str]
) -> None:
    ns = namespace
    assert exit_codes(ns, "exit-3-then-0") == [3, 0]
    assert phase(ns, "exit-3-then-0") == "Succeeded"
    name = ns.runs["exit-3-then-0"].name
    stored = [m for m in stream_messages(nats[0].url, STREAM) if name.encode() in m.data]
    assert len(stored) == 1, [m.headers for m in stored]


def test_bad_input_exits_2_once_and_fails_the_run(namespace: Namespace) -> None:
    ns = namespace
    assert exit_codes(ns, "exit-2") == [2]
    assert "pipeline-root" in ns.pods["exit-2"][0].stderr
    assert phase(ns, "exit-2") == "Failed"
    assert ns.runs["exit-2"].name not in ns.events


def test_a_users_exit_handler_runs_beside_ours(namespace: Namespace) -> None:
    ns = namespace
    assert phase(ns, "user-exit-handler") == "Succeeded"
    assert exit_codes(ns, "user-exit-handler") == [0]
    assert node_phases(ns, "user-exit-handler", lambda n: n.get("templateName") == "notify") == [
        "Succeeded"
    ]
    assert event_body(ns, "user-exit-handler")["pipelineName"] == "penguin-pipeline-with-exit"


def test_continue_on_failure_keeps_the_run_succeeded(namespace: Namespace) -> None:
    ns = namespace
    assert exit_codes(ns, "continue-on-failure") == [2]
    assert phase(ns, "continue-on-failure") == "Succeeded"


def test_a_stopped_run_still_runs_the_exit_handler(namespace: Namespace) -> None:
    ns = namespace
    assert phase(ns, "stopped") == "Failed"
    assert ns.runs["stopped"].workflow is not None
    assert "Stopped" in ns.runs["stopped"].workflow["status"].get("message", "")
    assert exit_codes(ns, "stopped") == [0]
    assert event_body(ns, "stopped")["status"] == "failed"


def test_the_cluster_workflow_template_publishes_too(namespace: Namespace) -> None:
    ns = namespace
    assert phase(ns, "cluster-template") == "Succeeded"
    assert exit_codes(ns, "cluster-template") == [0]
    body = event_body(ns, "cluster-template")
    assert [a["location"] for a in body["servingModelArtifacts"]] == [
        ns.runs["cluster-template"].pushed
    ]
    assert seed_fires(ns, "cluster-template")
