"""The event contract as JSON Schema (draft 2020-12): `exit-handler schema` prints it.

One source for three documents: the event data (what Sensors filter on, the same in both
content modes), the structured-mode CloudEvent (attributes and data in one JSON object) and
the binary-mode message (the NATS headers beside the data).

Objects allow keys they do not list (`additionalProperties` is not false): within the type
`org.kubeflow.pipelines.run-completion` changes are additive only, so a consumer that
validates with today's schema keeps accepting tomorrow's events. The project's own tests
validate with `strict()`, which closes every object, so nothing unlisted is ever produced.
"""

from __future__ import annotations

import copy
from typing import Any

from exit_handler.event import EVENT_TYPE
from exit_handler.run import MAX_FAILURE_MESSAGE, MAX_FAILURES_IN_EVENT

DIALECT = "https://json-schema.org/draft/2020-12/schema"
MODES = ("binary", "structured")
_UTC_SECONDS = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
_TEXT: dict[str, Any] = {"type": "string", "minLength": 1}


def _time(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "format": "date-time",
        "pattern": _UTC_SECONDS,
        "description": description,
    }


_ARTIFACT: dict[str, Any] = {
    "type": "object",
    "required": ["name", "location"],
    "properties": {
        "name": {**_TEXT, "description": "Which artifact: a definition's name, or the "
                 "pushed model's `pipeline:workflow:component:output:index`."},
        "location": {
            "type": "string",
            "pattern": "^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$",
            "description": "The artifact's folder or object under the pipeline root.",
        },
    },
}  # fmt: skip

_FAILURE: dict[str, Any] = {
    "type": "object",
    "description": "One failed node as Argo lists it in `{{workflow.failures}}`; "
    "keys Argo left empty are omitted.",
    "properties": {
        "displayName": _TEXT,
        "templateName": _TEXT,
        "phase": {**_TEXT, "examples": ["Failed", "Error"]},
        "message": {**_TEXT, "maxLength": MAX_FAILURE_MESSAGE},
        "finishedAt": _TEXT,
    },
}

DATA: dict[str, Any] = {
    "title": "Run-completion event data",
    "description": "The payload Sensors filter on (binary mode) or the CloudEvent's `data` "
    "(structured mode). The first five keys are always present; every other key is omitted "
    "when unknown, never null or empty.",
    "type": "object",
    "required": ["provider", "status", "pipelineName", "servingModelArtifacts", "artifacts"],
    "properties": {
        "provider": {**_TEXT, "description": "Who ran the pipeline; also the event's source."},
        "status": {
            "enum": ["succeeded", "failed"],
            "description": "Argo Succeeded is succeeded; Failed and Error are failed.",
        },
        "pipelineName": {**_TEXT, "description": "The pipeline's name; also the subject."},
        "servingModelArtifacts": {
            "type": "array",
            "items": _ARTIFACT,
            "description": "The model versions this run pushed (deprecated: use artifacts).",
        },
        "artifacts": {
            "type": "array",
            "items": _ARTIFACT,
            "description": "The author's Run Artifact Definitions, resolved for this run.",
        },
        "runId": {**_TEXT, "description": "The KFP run id."},
        "runName": {**_TEXT, "description": "The KFP run's display name."},
        "runConfigurationName": {**_TEXT, "description": "The recurring run that started it."},
        "workflowName": {**_TEXT, "description": "The Argo Workflow's name."},
        "namespace": {**_TEXT, "description": "The Workflow's namespace."},
        "runStartTime": _time("The Workflow's creation time."),
        "runEndTime": _time("When the exit handler started: Argo has not finished yet."),
        "failures": {
            "type": "array",
            "items": _FAILURE,
            "maxItems": MAX_FAILURES_IN_EVENT,
            "description": "Only for failed runs: Argo's failed nodes without the exit "
            "handler's own; in Argo's order, or by finishedAt when read from the Workflow.",
        },
        "outputParameters": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "The run's global output parameters: every one the Workflow "
            "holds, or those named at inject time (--from-variables).",
        },
        "overlappingComponents": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "uniqueItems": True,
            "description": "Components whose node ran in the same seconds as another run's "
            "of this pipeline: more executions fell inside their node's interval than its "
            "pods wrote. Their artifact definitions resolve to nothing and "
            "servingModelArtifacts lists every candidate; only when read from the Workflow.",
        },
    },
    "if": {"properties": {"status": {"const": "succeeded"}}},
    "then": {"not": {"required": ["failures"]}},
}

_ATTRIBUTES: dict[str, Any] = {
    "specversion": {"const": "1.0"},
    "id": {
        "type": "string",
        "pattern": _UUID,
        "description": "UUIDv5 of the run and its outcome: a retried exit step re-sends it.",
    },
    "source": {**_TEXT, "description": "The provider."},
    "type": {"const": EVENT_TYPE},
    "datacontenttype": {"const": "application/json"},
    "subject": {**_TEXT, "description": "The pipeline name."},
    "time": _time("When the exit handler observed the run's end."),
}

STRUCTURED: dict[str, Any] = {
    "title": "Run-completion CloudEvent, structured content mode",
    "description": "The NATS payload (Content-Type: application/cloudevents+json).",
    "type": "object",
    "required": [*_ATTRIBUTES, "data"],
    "properties": {**_ATTRIBUTES, "data": DATA},
}

# JetStream delivery only: the stream found covering the subject; the server refuses the
# message rather than let another stream store it.
_EXPECTED_STREAM: dict[str, Any] = {**_TEXT, "description": "The stream meant to store it."}
_PERCENT_ENCODED = "^([!#-$&-~]|%[0-9A-F]{2})+$"  # printable ASCII; space, `"`, `%` escaped
BINARY: dict[str, Any] = {
    "title": "Run-completion CloudEvent, binary content mode",
    "description": "A NATS message: its headers (each attribute as ce-<name>, percent-encoded) "
    "and its payload, the event data.",
    "type": "object",
    "required": ["headers", "data"],
    "properties": {
        "headers": {
            "type": "object",
            "required": [f"ce-{name}" for name in _ATTRIBUTES] + ["Content-Type", "Nats-Msg-Id"],
            "properties": {
                **{
                    f"ce-{name}": {"type": "string", "pattern": _PERCENT_ENCODED}
                    | {k: v for k, v in schema.items() if k in ("const", "pattern")}
                    for name, schema in _ATTRIBUTES.items()
                },
                "Content-Type": {"const": "application/json"},
                "Nats-Msg-Id": {"type": "string", "pattern": _UUID, "description": "= ce-id"},
                "Nats-Expected-Stream": _EXPECTED_STREAM,
            },
        },
        "data": DATA,
    },
}


def schema(mode: str | None = None) -> dict[str, Any]:
    """The data schema, or the whole event's in content mode MODE."""
    chosen = {None: DATA, "binary": BINARY, "structured": STRUCTURED}[mode]
    return {"$schema": DIALECT, **copy.deepcopy(chosen)}


def strict(document: dict[str, Any]) -> dict[str, Any]:
    """DOCUMENT with every listed object closed: what the project's own tests require."""
    closed = copy.deepcopy(document)

    def close(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(closed)
    return closed
