"""The run-completion CloudEvent (docs/events.md): its data, its attributes, its id.

The event model stands apart from how it travels (`wire.py`): this module knows the
schema that consumers filter on and nothing about NATS.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from exit_handler.run import MAX_FAILURES_IN_EVENT, Run

EVENT_TYPE = "org.kubeflow.pipelines.run-completion"
# Fixed forever: changing it changes every event id and defeats de-duplication.
ID_NAMESPACE = uuid.UUID("6f1c3e2a-8d4b-5c7e-9a10-4b2f6d8e0c31")


@dataclass(frozen=True)
class Artifact:
    """One entry of `servingModelArtifacts` or `artifacts`."""

    name: str
    location: str

    def to_data(self) -> dict[str, str]:
        return {"name": self.name, "location": self.location}


def event_id(run: Run) -> str:
    """UUIDv5 over the run, status and the failures: a retried pod re-sends the same id.

    The run is KFP's run id when there is one, else the Workflow's uid: the exit handler,
    the backstop and an operator's replay all name one run alike. A cut list keeps a
    different subset in every exit pod (Argo walks a Go map), so its id stands for "more
    failures than fit" instead: retries of one run still agree.
    """
    failures = sorted(failure.identity() for failure in run.failures)
    canonical = json.dumps(failures, ensure_ascii=False, separators=(",", ":"))
    digest = "cut" if run.failures_cut else hashlib.sha256(canonical.encode()).hexdigest()
    return str(uuid.uuid5(ID_NAMESPACE, f"{run.run_id or run.workflow_uid}/{run.status}/{digest}"))


def event_data(
    run: Run,
    *,
    provider: str,
    observed_at: datetime,
    serving_model_artifacts: Sequence[Artifact],
    artifacts: Sequence[Artifact],
    overlapping: Sequence[str] = (),
    failure_limit: int = MAX_FAILURES_IN_EVENT,
) -> dict[str, Any]:
    """The payload (docs/events.md): the seed's five keys first, then every known extra key."""
    data: dict[str, Any] = {
        "provider": provider,
        "status": run.status,
        "pipelineName": run.pipeline_name,
        "servingModelArtifacts": [artifact.to_data() for artifact in serving_model_artifacts],
        "artifacts": [artifact.to_data() for artifact in artifacts],
        "runId": run.run_id,
        "runName": run.run_name,
        "runConfigurationName": run.run_configuration_name,
        "workflowName": run.workflow_name,
        "namespace": run.namespace,
        "runStartTime": rfc3339(run.created_at) if run.created_at else None,
        "runEndTime": rfc3339(run.finished_at or observed_at),
    }
    if run.status == "failed" and run.failures and failure_limit > 0:
        data["failures"] = [failure.to_data() for failure in run.failures[:failure_limit]]
    if run.output_parameters:
        data["outputParameters"] = dict(run.output_parameters)
    if overlapping:
        data["overlappingComponents"] = sorted(overlapping)
    return {key: value for key, value in data.items() if value is not None}


def build_event(
    run: Run, data: dict[str, Any], *, source: str, observed_at: datetime
) -> CloudEvent:
    """The CloudEvent, with `id` and `time` set explicitly (the SDK would invent them)."""
    return CloudEvent(
        attributes={
            "specversion": "1.0",
            "id": event_id(run),
            "source": source,
            "type": EVENT_TYPE,
            "datacontenttype": "application/json",
            "subject": run.pipeline_name,
            "time": observed_at,
        },
        data=data,
    )


def rfc3339(moment: datetime) -> str:
    """UTC, whole seconds, `Z`: the form Argo itself uses."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
