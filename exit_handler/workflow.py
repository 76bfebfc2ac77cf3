"""What the Argo Workflow object tells about the run (`publish --workflow NAME`).

Template variables are a thin, lossy view of a run: failures travel through arguments, a
global output that a run never sets stops Argo from starting it, and nothing says when this
run's Pusher ran. The Workflow object says all of it. This module turns one Workflow, as the
Kubernetes API returns it, into the same option values that the variables path gives
(so one validation reads both) plus what only the object knows: when each component's node
ran, which bounds discovery to this run's own executions.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from exit_handler.deadline import Deadline
from exit_handler.errors import BadInput, InvalidFields, Refused
from exit_handler.run import OUR_STEP, WRAPPER, parse_timestamp

if TYPE_CHECKING:
    from exit_handler.kube import KubeClient

log = logging.getLogger(__name__)

# Set on the Workflow after a confirmed publish, to the event's id: the backstop skips runs
# that carry it, and a retried exit step that finds its own id has nothing left to do.
PUBLISHED = "kfp-exit-handler/published"
# What KFP v1 and kfp-operator write on the runs they create.
RUN_ID_LABEL = "pipeline/runid"
RUN_NAME_ANNOTATION = "pipelines.kubeflow.org/run_name"
PIPELINE_SPEC_ANNOTATION = "pipelines.kubeflow.org/pipeline_spec"
RUN_CONFIGURATION_LABEL = "pipelines.kubeflow.org/runconfiguration.name"
ROOT_PARAMETERS = ("pipeline-root", "pipeline_root")
FINAL = ("Succeeded", "Failed", "Error")
# Settings that inject writes into our onExit step's arguments, by `publish` option name:
# the backstop, which knows only the Workflow's name, finds there what the pipeline chose.
STEP_SETTINGS = (
    "pipeline-name",
    "pipeline-root",
    "artifacts",
    "provider",
    "pusher-components",
    "clock-skew",
    "exit-templates",
)
_WORKFLOW_PARAMETER = re.compile(r"\{\{\s*workflow\.parameters\.([A-Za-z0-9_.-]+)\s*\}\}")
_RETRY_SUFFIX = re.compile(r"\(\d+\)$")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Interval:
    """When one component's node ran in this run: its pods' first start to last finish."""

    start: datetime
    end: datetime | None  # None: still running (only a node of the exit handler itself)
    attempts: int  # pods started: each may write one execution


@dataclass(frozen=True)
class WorkflowRun:
    """One Workflow object, read: option values, intervals, and the published marker."""

    namespace: str
    name: str
    # The run's facts as `publish` option values (dest → text), the same validation's input.
    facts: dict[str, Any]
    # Settings inject wrote into our onExit step (dest → text), below the command line.
    settings: dict[str, str]
    # The pipeline's pod nodes (not the exit handler's): when each component ran.
    pods: tuple[Mapping[str, Any], ...] = ()
    published: str | None = None

    def merge(self, command_line: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """Option values: the object's facts over all; the command line over inject's
        settings; those over the environment (`values` is command line and environment)."""
        merged = dict(values)
        for key, value in self.settings.items():
            if not command_line.get(key) and not command_line.get(f"{key}_file"):
                merged[key] = value
                merged.pop(f"{key}_file", None)  # e.g. EXIT_HANDLER_ARTIFACTS_FILE: below it
        merged.update(self.facts)
        return merged

    def intervals(self, components: Iterable[str]) -> dict[str, Interval]:
        """When each component's pods ran, by the name the author writes (`Pusher`).

        A component is found by the template name the KFP v1 compiler gives it, or by its
        node's display name; one that ran no pod in this run is left out.
        """
        wanted = {node_name(component): component for component in components}
        found: dict[str, list[tuple[datetime, datetime | None]]] = {}
        for pod in self.pods:
            started = _time(pod.get("startedAt"))
            display = _RETRY_SUFFIX.sub("", str(pod.get("displayName") or ""))
            key = next((k for k in (pod.get("templateName"), display) if k in wanted), None)
            if started is not None and key is not None:
                found.setdefault(wanted[key], []).append((started, _time(pod.get("finishedAt"))))
        intervals = {}
        for component, times in found.items():
            ends = [end for _, end in times]
            intervals[component] = Interval(
                start=min(start for start, _ in times),
                end=None if None in ends else max(end for end in ends if end is not None),
                attempts=len(times),
            )
        return intervals


def read(workflow: Mapping[str, Any]) -> WorkflowRun:
    """Read a Workflow object; raise BadInput when it is no finished Argo Workflow."""
    metadata = _mapping(workflow.get("metadata"))
    spec = _mapping(workflow.get("spec"))
    status = _mapping(workflow.get("status"))
    name, namespace = str(metadata.get("name") or ""), str(metadata.get("namespace") or "")
    where = f"workflow {namespace}/{name}"
    if workflow.get("kind") != "Workflow" or not name:
        raise BadInput(f"bad input: --workflow: {where} is not an Argo Workflow object")
    labels = _strings(metadata.get("labels"))
    annotations = _strings(metadata.get("annotations"))
    nodes = _nodes(status, where)
    root = nodes.get(name) or {}
    phase = root.get("phase") if root.get("phase") in FINAL else status.get("phase")
    if phase not in FINAL:
        raise BadInput(
            f"bad input: --workflow: {where} has not finished (phase {phase or 'Pending'}); "
            "publish runs in its onExit step or after it ends"
        )
    main = {key: node for key, node in nodes.items() if not _is_exit_node(node, name)}
    failures = sorted(
        (_failure(node) for node in main.values() if node.get("phase") in ("Failed", "Error")),
        key=lambda failure: (failure.get("finishedAt") or "", failure.get("displayName") or ""),
    )
    outputs = _mapping(status.get("outputs")).get("parameters") or []
    facts: dict[str, Any] = {
        "status": phase,
        "workflow_name": name,
        "workflow_uid": metadata.get("uid"),
        "namespace": namespace,
        "created_at": metadata.get("creationTimestamp"),
        "run_id": labels.get(RUN_ID_LABEL),
        "run_name": annotations.get(RUN_NAME_ANNOTATION),
        "run_configuration_name": labels.get(RUN_CONFIGURATION_LABEL),
        "failures": json.dumps(failures, ensure_ascii=False),
        "failures_file": None,
        "finished_at": root.get("finishedAt") or status.get("finishedAt"),
        "output_parameter": [
            f"{output.get('name')}={output.get('value', '')}"
            for output in outputs
            if isinstance(output, dict) and output.get("name")
        ],
        "outputs_resolved": True,
    }
    settings = _step_settings(spec, name)
    settings.setdefault("pipeline_name", pipeline_name(workflow))
    if "pipeline_root" not in settings:
        parameters = _parameters(spec)
        root_value = next((parameters[p] for p in ROOT_PARAMETERS if parameters.get(p)), None)
        if root_value:
            settings["pipeline_root"] = root_value
    return WorkflowRun(
        namespace=namespace,
        name=name,
        facts=facts,
        settings=settings,
        pods=tuple(node for node in main.values() if node.get("type") == "Pod"),
        published=labels.get(PUBLISHED),
    )


def pipeline_name(workflow: Mapping[str, Any]) -> str:
    """The compiled pipeline's name: the KFP annotation's, else the entrypoint."""
    annotations = _mapping(_mapping(workflow.get("metadata")).get("annotations"))
    spec_text = annotations.get(PIPELINE_SPEC_ANNOTATION)
    if isinstance(spec_text, str):
        try:
            name = json.loads(spec_text).get("name")
        except (json.JSONDecodeError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    return str(_mapping(workflow.get("spec")).get("entrypoint") or "")


def node_name(component: str) -> str:
    """The Argo template name that the KFP v1 compiler gives a component (`Pusher` → `pusher`)."""
    return re.sub(r"-+", "-", re.sub(r"[^-0-9a-z]+", "-", component.lower())).strip("-")


def _nodes(status: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """`status.nodes`, or the gzip'd `compressedNodes` Argo writes for large runs."""
    nodes = status.get("nodes")
    compressed = status.get("compressedNodes")
    if not nodes and isinstance(compressed, str) and compressed:
        import base64  # only a large run's nodes come compressed
        import binascii
        import gzip

        try:
            nodes = json.loads(gzip.decompress(base64.b64decode(compressed, validate=True)))
        except (binascii.Error, OSError, EOFError, ValueError):
            raise BadInput(
                f"bad input: --workflow: {where}: status.compressedNodes is unreadable"
            ) from None
    if not nodes and status.get("offloadNodeStatusVersion"):
        raise OffloadedNodes(
            f"bad input: --workflow: {where} keeps its nodes in Argo's offload database, "
            "which only the Argo server reads"
        )
    if not isinstance(nodes, dict):
        return {}
    return {key: node for key, node in nodes.items() if isinstance(node, dict)}


class OffloadedNodes(BadInput):
    """The nodes are not in the object: the variables path must stand in."""


def _is_exit_node(node: Mapping[str, Any], workflow: str) -> bool:
    """A node of `onExit` (ours, and a pipeline's own exit handler beside it).

    The variables path sees the failures as they were when the exit handler started, before
    any of these nodes ended; leaving all of them out gives the same failures, hence the same
    event id, before and after the exit handler ran.
    """
    name = str(node.get("name") or "")
    exit_root = f"{workflow}.onExit"
    return name == exit_root or name.startswith((exit_root + ".", exit_root + "["))


def _failure(node: Mapping[str, Any]) -> dict[str, str]:
    """The entry `{{workflow.failures}}` gives for a failed node (Argo's failedNodeStatus).

    A node that calls a template by `templateRef` has no templateName; Argo from 3.5 (KFP 2.5
    and later) lists the referenced template's name, as here, and 3.4 and older list "".
    """
    reference = _mapping(node.get("templateRef")).get("template")
    return {
        "displayName": str(node.get("displayName") or ""),
        "templateName": str(node.get("templateName") or reference or ""),
        "phase": str(node.get("phase") or ""),
        "message": str(node.get("message") or ""),
        "finishedAt": str(node.get("finishedAt") or ""),
    }


def _step_settings(spec: Mapping[str, Any], workflow: str) -> dict[str, str]:
    """The arguments inject gave our step, as option dests; unresolved variables dropped."""
    parameters = _parameters(spec)
    settings: dict[str, str] = {}
    for template in spec.get("templates") or []:
        if not isinstance(template, dict) or template.get("name") != WRAPPER:
            continue
        for group in template.get("steps") or []:
            for step in group or []:
                if not isinstance(step, dict) or step.get("name") != OUR_STEP:
                    continue
                for argument in _mapping(step.get("arguments")).get("parameters") or []:
                    if not isinstance(argument, dict) or argument.get("name") not in STEP_SETTINGS:
                        continue
                    value = _WORKFLOW_PARAMETER.sub(
                        lambda found: parameters.get(found.group(1), found.group()),
                        str(argument.get("value") or ""),
                    )
                    if value and "{{" not in value:
                        settings[str(argument["name"]).replace("-", "_")] = value
    return settings


def _parameters(spec: Mapping[str, Any]) -> dict[str, str]:
    arguments = _mapping(spec.get("arguments")).get("parameters") or []
    return {
        str(p["name"]): str(p.get("value") or "")
        for p in arguments
        if isinstance(p, dict) and p.get("name")
    }


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: object) -> dict[str, str]:
    return {str(k): v for k, v in _mapping(value).items() if isinstance(v, str)}


def fetch(
    values: Mapping[str, Any],
    command_line: Mapping[str, Any],
    environ: Mapping[str, str],
    deadline: Deadline,
) -> tuple[dict[str, Any], WorkflowRun | None, KubeClient | None]:
    """Read `--workflow` from the API and merge it into the option values.

    When the API refuses (no `get workflows` for this service account) or Argo keeps the
    nodes elsewhere, the variables on the command line stand in, with a warning, as long as
    they name the run; the event then lacks what only the object knows.
    """
    from exit_handler.kube import KubeClient, load_config

    name, namespace = str(values["workflow"]), str(values.get("namespace") or "")
    problems = []
    if not _NAME.fullmatch(name) or len(name) > 253:
        problems.append(f"--workflow: {name[:60]!r} is not a Workflow name")
    if not namespace:
        problems.append("--namespace: required with --workflow")
    elif not _NAMESPACE.fullmatch(namespace):
        problems.append(f"--namespace: {namespace[:60]!r} is not a namespace name")
    if problems:
        raise InvalidFields(problems)
    client = KubeClient(load_config(environ, values.get("kubeconfig") or None))
    try:
        run = read(client.get_workflow(namespace, name, deadline))
    except (Refused, OffloadedNodes) as err:
        if not (values.get("status") and values.get("workflow_uid")):
            raise
        log.warning(
            "reading the Workflow failed (%s): falling back to the variables passed on the "
            "command line; the event has no failures, global outputs or node times",
            err,
        )
        return dict(values), None, None
    return run.merge(command_line, values), run, client
