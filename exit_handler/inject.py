"""`exit-handler inject`: opt a compiled pipeline into the run-completion exit handler.

Reads an Argo Workflow compiled by the KFP v1 SDK or TFX `KubeflowDagRunner` and points
`spec.onExit` at a small steps template whose step calls our WorkflowTemplate by
`templateRef`. An existing `onExit` (from `dsl.ExitHandler`) keeps running beside ours.
Injecting an injected workflow again gives what injecting the original with the same options
gives, whatever options it was injected with before.

By default the step passes `workflow: {{workflow.name}}`: publish reads the Workflow object
(status, failures, global outputs) and marks it published. `--from-variables` passes the run
as template variables instead, for service accounts that may not read Workflows.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from exit_handler.artifact_definitions import DefinitionError, parse_definition
from exit_handler.errors import BadInput
from exit_handler.pipeline_root import PipelineRoot
from exit_handler.run import OUR_STEP, OWN_NODES, WRAPPER, is_unicode
from exit_handler.workflow import ROOT_PARAMETERS, pipeline_name

USER_STEP = "pipeline-exit-handler"
# On every injected Workflow: the backstop watches only runs that opted in.
INJECTED_LABEL = "kfp-exit-handler/injected"
OUTPUT_PARAMETER_IN_OBJECT_MODE = (
    "bad input: --output-parameter: not needed: the Workflow object carries every global "
    "output and publish reads them all; it is for --from-variables, which passes outputs by name"
)
# Bytes of `{{workflow.failures}}` passed on. Argo 3.2-3.5 put the resolved template, which
# holds them twice (parameter and raw artifact), JSON-escaped into an environment variable
# of every container, and Linux refuses one over 128 KiB (E2BIG): the pod never starts.
# Escaping at most doubles Go-quoted text (only `"` and `\` grow), so the failures take at
# most 4 x 24 KiB = 96 KiB, leaving 32 KiB for the rest (2.9 KB measured).
FAILURES_BOUND = 24 * 1024
MAX_INPUT = 16 * 1024 * 1024
_ARGO_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_PARAMETER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class InjectOptions:
    """How to wire the exit handler in; every field has the WorkflowTemplate's default."""

    workflow_template: str = "kfp-exit-handler"
    template: str = "publish"
    cluster_scope: bool = False
    provider: str | None = None
    pipeline_root: str | None = None
    artifacts: tuple[tuple[str, str], ...] = ()
    output_parameters: tuple[str, ...] = ()
    continue_on_failure: bool = False
    # Pass the run as template variables (failures, output parameters) instead of letting
    # publish read the Workflow object.
    from_variables: bool = False


def parse_artifact(text: str, number: int) -> tuple[str, str]:
    """`NAME=PATH`, validated now so that a typo fails at compile time, not after a run."""
    name, equals, path = text.partition("=")
    if not equals:
        raise BadInput(f"bad input: --artifact {number}: {text[:60]!r} is not NAME=PATH")
    try:
        parse_definition(name, path, number=number)
    except DefinitionError as err:
        raise BadInput(f"bad input: --artifact: {err}") from None
    return name, path


def inject(workflow: dict[str, Any], options: InjectOptions) -> dict[str, Any]:
    """Return `workflow` with our exit handler wired in (the input is modified in place)."""
    _check_workflow(workflow)
    if options.output_parameters and not options.from_variables:
        raise BadInput(OUTPUT_PARAMETER_IN_OBJECT_MODE)
    spec = workflow["spec"]
    templates: list[dict[str, Any]] = spec["templates"]
    names = {template.get("name") for template in templates if isinstance(template, dict)}
    previous = spec.get("onExit")
    if previous == WRAPPER:  # injected before: keep the pipeline's own exit step, if any
        wrapper = next(t for t in templates if t.get("name") == WRAPPER)
        previous = _user_exit_template(wrapper)
        templates.remove(wrapper)
    elif previous is not None and previous not in names:
        raise BadInput(f"bad input: spec.onExit names template {previous!r}, which is not defined")
    _check_own_names_free(templates)
    _check_global_outputs(templates, options.output_parameters)
    parameters = _workflow_parameters(spec)
    steps = [_our_step(workflow, parameters, options)]
    if previous is not None:
        moved = next(t for t in templates if t.get("name") == previous)
        steps.append(_user_step(previous, moved, parameters))
    templates.append({"name": WRAPPER, "steps": [steps]})
    spec["onExit"] = WRAPPER
    _label(workflow)
    return workflow


def _label(workflow: dict[str, Any]) -> None:
    """Mark the run as opted in, keeping the labels it has (KFP adds its own on submission)."""
    metadata = workflow.setdefault("metadata", {})
    labels = metadata.setdefault("labels", {})
    if labels is None:
        labels = metadata["labels"] = {}
    labels[INJECTED_LABEL] = "true"


def _check_workflow(workflow: object) -> None:
    if not isinstance(workflow, dict):
        raise BadInput("bad input: not an Argo Workflow: the YAML is not a mapping")
    api, kind = workflow.get("apiVersion"), workflow.get("kind")
    if api != "argoproj.io/v1alpha1" or kind != "Workflow":
        raise BadInput(
            f"bad input: not an Argo Workflow (apiVersion {api!r}, kind {kind!r}); compile the "
            "pipeline to an Argo Workflow first"
        )
    metadata = workflow.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadInput("bad input: the Workflow's metadata is not a mapping")
    if isinstance(metadata, dict) and not isinstance(metadata.get("labels") or {}, dict):
        raise BadInput("bad input: the Workflow's metadata.labels is not a mapping")
    spec = workflow.get("spec")
    if not isinstance(spec, dict):
        raise BadInput("bad input: the Workflow has no spec mapping")
    templates = spec.get("templates")
    if not isinstance(templates, list) or not templates:
        raise BadInput("bad input: the Workflow's spec.templates is not a non-empty list")
    if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in templates):
        raise BadInput("bad input: every entry of spec.templates needs a name")
    if not isinstance(spec.get("entrypoint"), str):
        raise BadInput("bad input: the Workflow has no spec.entrypoint")


def _check_own_names_free(templates: list[dict[str, Any]]) -> None:
    """The exit handler's own nodes are known by these names (run.py): a pipeline node
    bearing one would be taken for ours and vanish from `failures` and the event id."""
    for template in templates:
        dag = template.get("dag")
        named = [
            ("template", template),
            *(("step", step) for group in template.get("steps") or [] for step in group or []),
            *(
                ("task", task)
                for task in (dag.get("tasks") if isinstance(dag, dict) else None) or []
            ),
        ]
        for kind, node in named:
            if isinstance(node, dict) and node.get("name") in OWN_NODES:
                raise BadInput(
                    f"bad input: the workflow already has a {kind} named {node['name']!r}, a "
                    "name of the exit handler's own nodes; rename it"
                )


def _check_global_outputs(templates: list[dict[str, Any]], names: Sequence[str]) -> None:
    """`{{workflow.outputs.parameters.NAME}}` needs an output parameter with `globalName:
    NAME` in some template: without one, Argo refuses the whole Workflow at submission."""
    exported = {
        parameter.get("globalName")
        for template in templates
        for parameter in ((template.get("outputs") or {}).get("parameters") or [])
        if isinstance(parameter, dict)
    }
    for name in names:
        if name not in exported:
            raise BadInput(
                f"bad input: --output-parameter: no step outputs a parameter with globalName "
                f"{name!r}, so Argo would refuse the Workflow"
            )


def _workflow_parameters(spec: dict[str, Any]) -> list[str]:
    arguments = spec.get("arguments") or {}
    parameters = arguments.get("parameters") or [] if isinstance(arguments, dict) else []
    if not isinstance(parameters, list):
        raise BadInput("bad input: spec.arguments.parameters is not a list")
    return [p["name"] for p in parameters if isinstance(p, dict) and isinstance(p.get("name"), str)]


def _checked_name(name: str) -> str:
    """Refuse now a pipeline name that every run's exit step would refuse."""
    if len(name) > 253 or "{{" in name or not name.isprintable():
        raise BadInput(f"bad input: the pipeline name {name[:60]!r} cannot name events")
    return name


def _our_step(
    workflow: dict[str, Any], parameters: list[str], options: InjectOptions
) -> dict[str, Any]:
    root = next(
        (f"{{{{workflow.parameters.{p}}}}}" for p in ROOT_PARAMETERS if p in parameters),
        options.pipeline_root,
    )
    values: dict[str, str | None] = {
        # Object mode: publish reads this Workflow from the API (status, failures, global
        # outputs, times) and these settings from this step's arguments in it.
        "workflow": None if options.from_variables else "{{workflow.name}}",
        # Variables that always resolve in an exit handler: object mode falls back to them
        # (with a warning) when the API refuses the service account.
        "status": "{{workflow.status}}",
        "workflow-name": "{{workflow.name}}",
        "workflow-uid": "{{workflow.uid}}",
        "namespace": "{{workflow.namespace}}",
        "created-at": "{{workflow.creationTimestamp}}",
        # Argo's expression: a byte prefix that decode_failures reads up to the last whole entry.
        # Only variables mode passes them: the object holds them whole.
        "failures": f"{{{{=sprig.trunc({FAILURES_BOUND}, workflow.failures)}}}}"
        if options.from_variables
        else None,
        # KFP rewrites this text to its run id when it submits the run.
        "run-id": "{{workflow.uid}}",
        "pipeline-name": _checked_name(pipeline_name(workflow)),
        "pipeline-root": root,
        "exit-templates": ",".join(OWN_NODES),
        "provider": options.provider,
        "artifacts": json.dumps([{"name": n, "path": p} for n, p in options.artifacts])
        if options.artifacts
        else None,
        "output-parameters": ",".join(
            f"{name}={{{{workflow.outputs.parameters.{name}}}}}"
            for name in options.output_parameters
        )
        or None,
    }
    step: dict[str, Any] = {
        "name": OUR_STEP,
        "templateRef": {
            "name": options.workflow_template,
            "template": options.template,
            "clusterScope": options.cluster_scope,
        },
        "arguments": {
            "parameters": [
                {"name": name, "value": value} for name, value in values.items() if value
            ]
        },
    }
    if options.continue_on_failure:
        step["continueOn"] = {"failed": True, "error": True}
    return step


def _user_step(name: str, template: dict[str, Any], parameters: list[str]) -> dict[str, Any]:
    """The pipeline's own exit template as a step; Argo gave it the workflow's arguments."""
    inputs = ((template.get("inputs") or {}).get("parameters")) or []
    arguments = []
    for parameter in inputs:
        input_name = parameter.get("name") if isinstance(parameter, dict) else None
        if not isinstance(input_name, str):
            raise BadInput(f"bad input: template {name!r} has an input parameter without a name")
        if input_name in parameters:
            arguments.append(
                {"name": input_name, "value": f"{{{{workflow.parameters.{input_name}}}}}"}
            )
        elif "value" not in parameter and "default" not in parameter:
            raise BadInput(
                f"bad input: the existing onExit template {name!r} takes input {input_name!r}, "
                "which is no workflow parameter: it cannot be run beside the exit handler"
            )
    step: dict[str, Any] = {"name": USER_STEP, "template": name}
    if arguments:
        step["arguments"] = {"parameters": arguments}
    return step


def _user_exit_template(wrapper: dict[str, Any]) -> str | None:
    for group in wrapper.get("steps") or []:
        for step in group:
            if step.get("name") == USER_STEP:
                template: str = step["template"]
                return template
    return None


def read_workflow(source: str, stdin: TextIO) -> dict[str, Any]:
    """Load the compiled workflow from a file or `-` (stdin), with the safe loader only."""
    import yaml

    try:
        text = stdin.read(MAX_INPUT + 1) if source == "-" else _read(source)
    except OSError as err:
        raise BadInput(f"bad input: cannot read {source}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise BadInput(f"bad input: {source} is not UTF-8 text") from None
    if len(text) > MAX_INPUT:
        raise BadInput(f"bad input: {source} is larger than {MAX_INPUT} bytes")
    if not is_unicode(text):  # stdin decodes invalid UTF-8 to lone surrogates
        raise BadInput(f"bad input: {source} is not UTF-8 text")
    try:
        loaded = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506  # a safe loader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed"
        raise BadInput(f"bad input: {source} is not valid YAML: {problem}{where}") from None
    _check_workflow(loaded)
    workflow: dict[str, Any] = loaded
    return workflow


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="strict") as file:
        return file.read(MAX_INPUT + 1)


def write_workflow(workflow: dict[str, Any], target: str | None, stdout: TextIO) -> None:
    """Write YAML to `target` atomically (nothing is written on failure), or to stdout."""
    import yaml

    text = yaml.safe_dump(workflow, sort_keys=False, width=120, allow_unicode=True)
    if target is None or target == "-":
        stdout.write(text)
        return
    path = Path(target)
    if path.is_dir():
        raise BadInput(f"bad input: -o {target} is a directory; name the output file")
    try:
        # The file keeps its mode when it is rewritten in place, else gets the umask's.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".inject-", suffix=".yaml")
    except OSError as err:
        raise BadInput(f"bad input: cannot write {target}: {err.strerror or err}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it; put it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_names(options: InjectOptions, output_parameters: Sequence[str]) -> None:
    """Names that end up in Argo fields must be valid there (and object mode takes none)."""
    if output_parameters and not options.from_variables:
        raise BadInput(OUTPUT_PARAMETER_IN_OBJECT_MODE)
    for option, value in (
        ("--workflow-template", options.workflow_template),
        ("--template", options.template),
    ):
        if not _ARGO_NAME.fullmatch(value):
            raise BadInput(f"bad input: {option}: {value[:60]!r} is not a valid Argo name")
    for name in output_parameters:
        if not _PARAMETER.fullmatch(name):
            raise BadInput(f"bad input: --output-parameter: {name[:60]!r} is not a parameter name")
    if options.pipeline_root:
        try:
            PipelineRoot.parse(options.pipeline_root)
        except ValueError as err:
            raise BadInput(f"bad input: --pipeline-root: {err}") from None
    provider = options.provider or "kfp"
    if len(provider) > 253 or not provider.isprintable() or " " in provider:
        raise BadInput(f"bad input: --provider: {provider[:40]!r} is not a single printable word")
