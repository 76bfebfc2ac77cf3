"""Reading an Argo Workflow object (exit_handler/workflow.py), and what publish does with it.

The objects are shaped as Argo's controller writes them: a compiled pipeline injected as KFP
submits it, node ids from the FNV-1a hash of the node name (the root's id is the workflow's
name), display names relative to the boundary, Retry parents above their pods, a templateRef
step without a templateName, the onExit wrapper that inject adds. `{{workflow.failures}}` is
built from the same nodes as Argo's operator.go builds it. No Kubernetes here: tests/test_kube.py
reads real objects from a kube-apiserver.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import random
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_models import validate
from conftest import upload_model

from exit_handler.deadline import Deadline
from exit_handler.errors import BadInput, Unavailable
from exit_handler.event import event_data, event_id
from exit_handler.inject import USER_STEP, InjectOptions, inject
from exit_handler.options import read_options
from exit_handler.pipeline_root import PipelineRoot, RootLister, Window
from exit_handler.publish import _component_windows, publish
from exit_handler.run import (
    MAX_PARAMETER_VALUE,
    OUR_STEP,
    WRAPPER,
    Failure,
    Run,
    RunText,
    parse_timestamp,
    read_run,
)
from exit_handler.testing import FakeGcsServer, free_port
from exit_handler.workflow import (
    PUBLISHED,
    Interval,
    OffloadedNodes,
    node_name,
    pipeline_name,
    read,
)

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
NAMESPACE = "kubeflow"
UID = "9c4e1b7a-3f2d-4e8a-b6c5-0d1e2f3a4b5c"
RUN_ID = "e2b7c9d4-5a61-4f3e-8b20-7c6d5e4f3a21"  # KFP's run id: label pipeline/runid
ROOT = "gs://penguin-runs/tfx/penguin-pipeline"  # what the run was submitted with
PENGUIN = "penguin-pipeline-x7k2p"  # tfx_penguin.yaml: Pusher retried once, our step running
FAILED = "penguin-pipeline-with-exit-k9m4t"  # kfp_exit_handler.yaml: the trainer OOMs
OURS = {"name": "kfp-exit-handler", "template": "publish"}  # inject's templateRef
PUSHED = "penguin-pipeline/Pusher/pushed_model"


# --- Workflow objects as the API returns them -----------------------------------------------


def at(clock: str | None) -> str | None:
    return f"2026-11-26T{clock}Z" if clock else None


def moment(clock: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-26T{clock}+00:00")


def node_id(workflow: str, name: str) -> str:
    """Argo's Workflow.NodeID: the workflow's name for the root, else name-<FNV-1a 32>."""
    if name == workflow:
        return workflow
    digest = 0x811C9DC5
    for byte in name.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{workflow}-{digest}"


class Nodes:
    """`status.nodes` of one workflow; names are given after the workflow's (`.trainer`)."""

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        self.by_id: dict[str, dict[str, Any]] = {}

    def id(self, name: str) -> str:
        return node_id(self.workflow, self.workflow + name)

    def add(
        self,
        name: str,
        type_: str,
        phase: str,
        started: str | None,
        finished: str | None,
        *,
        template: str | None = None,
        ref: dict[str, str] | None = None,  # a step calling a WorkflowTemplate
        parent: str | None = None,
        boundary: str | None = "",  # "" is the root; None: none (the root, onExit)
        display: str | None = None,
        message: str | None = None,
    ) -> None:
        full = self.workflow + name
        entry: dict[str, Any] = {
            "id": self.id(name),
            "name": full,
            "displayName": display or full.rpartition(".")[2],
            "type": type_,
        }
        if ref:
            entry["templateRef"] = ref
            entry["templateScope"] = f"namespaced/{ref['name']}"
        else:
            entry["templateName"] = template
            entry["templateScope"] = f"local/{self.workflow}"
        entry["phase"] = phase
        if boundary is not None:
            entry["boundaryID"] = self.id(boundary)
        if message:
            entry["message"] = message
        entry["startedAt"] = at(started)
        entry["finishedAt"] = at(finished)
        if type_ == "Pod":
            entry["progress"] = "1/1" if phase == "Succeeded" else "0/1"
            entry["hostNodeName"] = "gke-pipelines-pool-1-3f9c"
        self.by_id[entry["id"]] = entry
        if parent is not None:
            self.by_id[self.id(parent)].setdefault("children", []).append(entry["id"])

    def exit_handler(self, *, ended: bool, user_step: str | None = None) -> None:
        """The onExit wrapper inject adds; our step's first attempt died, the second runs
        (or, `ended`, failed too). `user_step`: the pipeline's own exit template beside it."""
        phase, end = ("Failed", "10:50:40") if ended else ("Running", None)
        wrapper, group, step = ".onExit", ".onExit[0]", f".onExit[0].{OUR_STEP}"
        self.add(wrapper, "Steps", phase, "10:45:01", end, template=WRAPPER, boundary=None,
                 display=self.workflow + wrapper)  # fmt: skip
        self.add(group, "StepGroup", phase, "10:45:01", end, template=WRAPPER, parent=wrapper,
                 boundary=wrapper, display="[0]")  # fmt: skip
        last = "Error (exit code 3)" if ended else None
        for name, type_, node_phase, started, finished, parent, message in (
            (step, "Retry", phase, "10:45:01", end, group, ended and "No more retries left"),
            (f"{step}(0)", "Pod", "Error", "10:45:01", "10:45:22", step, "pod deleted"),
            (f"{step}(1)", "Pod", phase, "10:45:35", end, step, last),
        ):
            self.add(name, type_, node_phase, started, finished, ref=OURS, parent=parent,
                     boundary=wrapper, message=message or None)  # fmt: skip
        if user_step:
            user_phase, user_end = ("Failed", "10:45:40") if ended else ("Running", None)
            self.add(f"{group}.{USER_STEP}", "Pod", user_phase, "10:45:01", user_end,
                     template=user_step, parent=group, boundary=wrapper,
                     message="Error (exit code 1)" if ended else None)  # fmt: skip


def submitted(
    fixture: str, nodes: Nodes, phase: str, options: InjectOptions, run_id: str | None
) -> dict[str, Any]:
    """A compiled pipeline, injected, submitted by KFP (which rewrites `{{workflow.uid}}` to
    its run id and labels the run), as the API returns it while the run is in `phase`."""
    text = json.dumps(inject(yaml.safe_load((FIXTURES / fixture).read_text()), options))
    workflow: dict[str, Any] = json.loads(text.replace("{{workflow.uid}}", run_id or UID))
    metadata = workflow["metadata"]
    metadata.update(
        name=nodes.workflow,
        namespace=NAMESPACE,
        uid=UID,
        resourceVersion="48213",
        generation=9,
        creationTimestamp=at("10:00:00"),
    )
    metadata["labels"].update(
        {
            "workflows.argoproj.io/phase": phase,
            "workflows.argoproj.io/completed": "false" if phase == "Running" else "true",
            **({"pipeline/runid": run_id} if run_id else {}),
        }
    )
    metadata["annotations"]["pipelines.kubeflow.org/run_name"] = "penguin nightly"
    root = next(p for p in workflow["spec"]["arguments"]["parameters"] if "root" in p["name"])
    root["value"] = ROOT
    ended = phase != "Running"
    workflow["status"] = {
        "phase": phase,
        "startedAt": at("10:00:00"),
        "finishedAt": at("10:50:41") if ended else None,
        "progress": "6/8",
        "nodes": nodes.by_id,
    }
    return workflow


def penguin(*, run_id: str | None = RUN_ID, pusher_by_ref: bool = False) -> dict[str, Any]:
    """TFX's penguin pipeline succeeded, its Pusher on the second attempt; our exit step's
    first attempt died and the second is reading this object (status.phase still Running)."""
    nodes = Nodes(PENGUIN)
    nodes.add(
        "", "DAG", "Succeeded", "10:00:02", "10:44:58", template="penguin-pipeline", boundary=None
    )
    for name, start, end, parent in (
        ("csvexamplegen", "10:00:02", "10:06:40", ""),
        ("trainer", "10:06:45", "10:30:10", ".csvexamplegen"),
        ("evaluator", "10:30:15", "10:36:00", ".trainer"),
    ):
        nodes.add(f".{name}", "Pod", "Succeeded", start, end, template=name, parent=parent)
    pusher: dict[str, Any] = (
        {"ref": {"name": "pushers", "template": "push"}}
        if pusher_by_ref
        else {"template": "pusher"}
    )
    nodes.add(
        ".pusher", "Retry", "Succeeded", "10:36:05", "10:44:57", parent=".evaluator", **pusher
    )
    nodes.add(".pusher(0)", "Pod", "Failed", "10:36:05", "10:38:00", parent=".pusher",
              message="Error (exit code 1)", **pusher)  # fmt: skip
    nodes.add(".pusher(1)", "Pod", "Succeeded", "10:38:20", "10:44:57", parent=".pusher", **pusher)
    nodes.exit_handler(ended=False)
    artifacts = (
        ("serving-model", "Pusher:pushed_model:0[pushed == 1]"),
        ("model", "Trainer:model"),
    )
    options = InjectOptions(provider="tfx", artifacts=artifacts)
    return submitted("tfx_penguin.yaml", nodes, "Running", options, run_id)


def failed_run(*, ended: bool, run_id: str | None = RUN_ID) -> dict[str, Any]:
    """KFP's `dsl.ExitHandler` pipeline: the trainer was OOM-killed, so its DAG and the root
    failed. Our exit step is on its second attempt beside the pipeline's own `notify`, or
    (`ended`) everything has ended and the backstop reads the object."""
    nodes = Nodes(FAILED)
    group, trainer = ".exit-handler-1", ".exit-handler-1.trainer"
    nodes.add("", "DAG", "Failed", "10:00:01", "10:12:31", template="penguin-pipeline-with-exit",
              boundary=None, message=f"child '{nodes.id(group)}' failed")  # fmt: skip
    nodes.add(group, "DAG", "Failed", "10:00:01", "10:12:31", template="exit-handler-1",
              parent="", message=f"child '{nodes.id(trainer)}' failed")  # fmt: skip
    nodes.add(f"{group}.example-gen", "Pod", "Succeeded", "10:00:01", "10:03:20",
              template="example-gen", parent=group, boundary=group)  # fmt: skip
    nodes.add(trainer, "Pod", "Failed", "10:03:25", "10:12:30", template="trainer",
              parent=f"{group}.example-gen", boundary=group,
              message="OOMKilled (exit code 137)")  # fmt: skip
    nodes.exit_handler(ended=ended, user_step="notify")
    phase = "Failed" if ended else "Running"
    return submitted("kfp_exit_handler.yaml", nodes, phase, InjectOptions(), run_id)


def workflow_failures(workflow: dict[str, Any]) -> str:
    """`{{workflow.failures}}` as Argo's operator.go builds it: every Failed or Error node, in
    Go's random map order, templateName from the templateRef when there is one (Argo 3.5+),
    json.Marshal'd, then strconv.Quote'd."""
    nodes = list(workflow["status"]["nodes"].values())
    random.shuffle(nodes)
    failures = [
        {
            "displayName": node["displayName"],
            "message": node.get("message", ""),
            "templateName": node["templateRef"]["template"]
            if "templateRef" in node
            else node.get("templateName", ""),
            "phase": node["phase"],
            "podName": node["id"],
            "finishedAt": node["finishedAt"],
        }
        for node in nodes
        if node["phase"] in ("Failed", "Error")
    ]
    return json.dumps(json.dumps(failures, separators=(",", ":")))


def from_object(workflow: dict[str, Any], **values: Any) -> Run:
    """The Run `publish --workflow` validates: the object's values, merged, through options."""
    return read_options(read(workflow).merge({}, values), {}).run


def from_variables(workflow: dict[str, Any], **text: Any) -> Run:
    """The Run of `inject --from-variables` for the same moment of the same run."""
    return read_run(
        RunText(
            status="Failed",
            pipeline_name="penguin-pipeline-with-exit",
            workflow_name=FAILED,
            workflow_uid=UID,
            failures=workflow_failures(workflow),
            **text,
        )
    )


def our_step(workflow: dict[str, Any]) -> dict[str, Any]:
    wrapper = next(t for t in workflow["spec"]["templates"] if t["name"] == WRAPPER)
    step: dict[str, Any] = next(s for s in wrapper["steps"][0] if s["name"] == OUR_STEP)
    return step


def identities(run: Run) -> list[tuple[str, str, str, str]]:
    return sorted(failure.identity() for failure in run.failures)


def test_the_objects_here_are_valid_argo_workflows() -> None:
    validate(penguin())
    validate(failed_run(ended=True))


# --- status --------------------------------------------------------------------------------


def test_status_from_the_root_node_while_the_exit_handler_runs() -> None:
    run = read(penguin())
    assert run.facts["status"] == "Succeeded"  # status.phase is still Running
    assert run.facts["finished_at"] == "2026-11-26T10:44:58Z"  # the root's, not the run's
    assert (run.namespace, run.name) == (NAMESPACE, PENGUIN)
    assert {key: run.facts[key] for key in ("workflow_name", "workflow_uid", "created_at")} == {
        "workflow_name": PENGUIN,
        "workflow_uid": UID,
        "created_at": "2026-11-26T10:00:00Z",
    }


def test_status_from_the_root_node_when_only_the_exit_handler_failed() -> None:
    """Argo marks the run Failed when the onExit node fails after a succeeded entrypoint;
    `{{workflow.status}}` said Succeeded, and so does the event."""
    workflow = penguin()
    workflow["status"]["phase"] = "Failed"
    assert read(workflow).facts["status"] == "Succeeded"


def test_status_from_the_phase_when_the_run_ended_before_any_node() -> None:
    workflow = penguin()
    workflow["status"] = {
        "phase": "Error",
        "message": "spec.templates[0].name: 'x' is not a valid template name",
        "startedAt": at("10:00:00"),
        "finishedAt": at("10:00:00"),
    }
    run = read(workflow)
    assert (run.facts["status"], run.facts["failures"]) == ("Error", "[]")
    assert run.facts["finished_at"] == "2026-11-26T10:00:00Z"
    assert run.pods == ()
    assert from_object(workflow).status == "failed"


@pytest.mark.parametrize(("phase", "shown"), [("Running", "Running"), (None, "Pending")])
def test_a_running_run_is_bad_input_naming_the_workflow_and_the_phase(
    phase: str | None, shown: str
) -> None:
    workflow = penguin()
    root = workflow["status"]["nodes"][PENGUIN]
    root.update(phase="Running", finishedAt=None)
    workflow["status"]["phase"] = phase
    with pytest.raises(BadInput) as caught:
        read(workflow)
    assert str(caught.value) == (
        f"bad input: --workflow: workflow {NAMESPACE}/{PENGUIN} has not finished "
        f"(phase {shown}); publish runs in its onExit step or after it ends"
    )


def test_an_object_of_another_kind_is_bad_input() -> None:
    workflow = penguin()
    workflow["kind"] = "WorkflowTemplate"
    with pytest.raises(BadInput, match=f"workflow {NAMESPACE}/{PENGUIN} is not an Argo Workflow"):
        read(workflow)


# --- failures and the event id ---------------------------------------------------------------


def test_failures_are_every_failed_node_outside_on_exit_by_finished_at() -> None:
    """The root and its DAG are listed as `{{workflow.failures}}` lists them; our attempts and
    the pipeline's own `notify` beside ours are not, however they ended."""
    for ended in (False, True):
        assert json.loads(read(failed_run(ended=ended)).facts["failures"]) == [
            {
                "displayName": "trainer",
                "templateName": "trainer",
                "phase": "Failed",
                "message": "OOMKilled (exit code 137)",
                "finishedAt": "2026-11-26T10:12:30Z",
            },
            {  # a tie on finishedAt: by displayName
                "displayName": "exit-handler-1",
                "templateName": "exit-handler-1",
                "phase": "Failed",
                "message": f"child '{node_id(FAILED, FAILED + '.exit-handler-1.trainer')}' failed",
                "finishedAt": "2026-11-26T10:12:31Z",
            },
            {
                "displayName": FAILED,
                "templateName": "penguin-pipeline-with-exit",
                "phase": "Failed",
                "message": f"child '{node_id(FAILED, FAILED + '.exit-handler-1')}' failed",
                "finishedAt": "2026-11-26T10:12:31Z",
            },
        ]


def test_a_succeeded_run_keeps_the_failed_attempt_argo_lists() -> None:
    assert json.loads(read(penguin()).facts["failures"]) == [
        {
            "displayName": "pusher(0)",
            "templateName": "pusher",
            "phase": "Failed",
            "message": "Error (exit code 1)",
            "finishedAt": "2026-11-26T10:38:00Z",
        }
    ]


def test_one_event_id_whichever_path_built_the_run() -> None:
    """Variables: what our second attempt got (our first attempt's Error in it). Object: read
    by that attempt, and later by the backstop after everything in onExit failed."""
    mid_run = failed_run(ended=False)
    assert f"{OUR_STEP}(0)" in workflow_failures(mid_run)  # our own failed attempt is listed
    variables = from_variables(mid_run, run_id=RUN_ID)
    assert len(variables.failures) == 3  # and left out
    for ended in (False, True):
        run = from_object(failed_run(ended=ended))
        assert [failure.display_name for failure in run.failures] == [
            "trainer",
            "exit-handler-1",
            FAILED,
        ]
        assert run.finished_at == datetime(2026, 11, 26, 10, 12, 31, tzinfo=UTC)
        assert identities(run) == identities(variables)
        assert event_id(run) == event_id(variables)


def test_a_failed_template_ref_step_of_the_pipeline_has_one_id_on_both_paths() -> None:
    workflow = failed_run(ended=False)
    trainer = workflow["status"]["nodes"][node_id(FAILED, FAILED + ".exit-handler-1.trainer")]
    del trainer["templateName"]  # the task calls a WorkflowTemplate by templateRef
    trainer.update(templateRef={"name": "trainers", "template": "train"})
    assert event_id(from_object(workflow)) == event_id(from_variables(workflow, run_id=RUN_ID))


def test_the_id_is_over_kfp_run_id_when_the_label_names_one() -> None:
    labelled = from_object(failed_run(ended=True))
    assert labelled.run_id == RUN_ID
    assert event_id(labelled) == event_id(from_variables(failed_run(ended=False), run_id=RUN_ID))
    assert event_id(labelled) != event_id(from_variables(failed_run(ended=False)))


def test_the_id_is_over_the_uid_without_the_label() -> None:
    unlabelled = from_object(failed_run(ended=True, run_id=None))
    assert unlabelled.run_id is None
    variables = failed_run(ended=False, run_id=None)
    assert event_id(unlabelled) == event_id(from_variables(variables))
    # inject's run-id argument, `{{workflow.uid}}`, when no KFP rewrote it
    assert event_id(unlabelled) == event_id(from_variables(variables, run_id=UID))
    assert event_id(unlabelled) != event_id(from_object(failed_run(ended=True)))


# --- settings and merging ------------------------------------------------------------------


def test_settings_come_from_our_on_exit_step_with_workflow_parameters_resolved() -> None:
    settings = dict(read(penguin()).settings)
    assert json.loads(settings.pop("artifacts")) == [
        {"name": "serving-model", "path": "Pusher:pushed_model:0[pushed == 1]"},
        {"name": "model", "path": "Trainer:model"},
    ]
    assert settings == {
        "pipeline_name": "penguin-pipeline",
        "pipeline_root": ROOT,  # {{workflow.parameters.pipeline-root}}, as submitted
        "exit_templates": f"{WRAPPER},{OUR_STEP}",
        "provider": "tfx",
    }


def test_unresolved_variables_and_other_arguments_are_not_settings() -> None:
    workflow = penguin()
    workflow["spec"]["arguments"]["parameters"].append({"name": "pushers", "value": "Pusher,Push2"})
    arguments = our_step(workflow)["arguments"]["parameters"]
    for argument in arguments:
        if argument["name"] == "provider":
            argument["value"] = "{{workflow.parameters.provider}}"  # no such parameter
    arguments += [
        {"name": "pusher-components", "value": "{{ workflow.parameters.pushers }}"},
        {"name": "clock-skew", "value": "{{inputs.parameters.skew}}"},
        {"name": "nats-url", "value": "nats://elsewhere:4222"},  # not a setting a step gives
    ]
    settings = read(workflow).settings
    assert settings["pusher_components"] == "Pusher,Push2"
    assert sorted(settings) == [
        "artifacts",
        "exit_templates",
        "pipeline_name",
        "pipeline_root",
        "pusher_components",
    ]


def test_pipeline_name_from_the_annotation_else_the_entrypoint() -> None:
    workflow = penguin()
    our_step(workflow)["arguments"]["parameters"] = [
        a for a in our_step(workflow)["arguments"]["parameters"] if a["name"] != "pipeline-name"
    ]
    annotations = workflow["metadata"]["annotations"]
    annotations["pipelines.kubeflow.org/pipeline_spec"] = '{"name": "Penguin (nightly)"}'
    assert pipeline_name(workflow) == "Penguin (nightly)"
    assert read(workflow).settings["pipeline_name"] == "Penguin (nightly)"
    workflow["spec"]["entrypoint"] = "penguin-entry"
    for spec in ("{not json", '["a list"]', '{"inputs": []}', None):
        if spec is None:
            del annotations["pipelines.kubeflow.org/pipeline_spec"]
        else:
            annotations["pipelines.kubeflow.org/pipeline_spec"] = spec
        assert pipeline_name(workflow) == "penguin-entry"
        assert read(workflow).settings["pipeline_name"] == "penguin-entry"


def test_pipeline_root_from_the_parameters_when_the_step_gives_none() -> None:
    workflow = failed_run(ended=True)  # kfp_exit_handler.yaml: `pipeline_root`
    arguments = our_step(workflow)["arguments"]["parameters"]
    assert {"name": "pipeline-root", "value": "{{workflow.parameters.pipeline_root}}"} in arguments
    assert read(workflow).settings["pipeline_root"] == ROOT
    arguments.remove({"name": "pipeline-root", "value": "{{workflow.parameters.pipeline_root}}"})
    assert read(workflow).settings["pipeline_root"] == ROOT
    workflow["spec"]["arguments"]["parameters"][0]["value"] = ""
    assert "pipeline_root" not in read(workflow).settings


def test_merge_facts_over_all_command_line_over_the_step_over_the_environment() -> None:
    run = read(penguin())
    # What the WorkflowTemplate passes: every option, most of them empty; the environment
    # (ConfigMap) fills what the command line leaves empty.
    command_line = {
        "workflow": PENGUIN,
        "status": "Failed",  # a stale or wrong value: the object's facts win
        "workflow_uid": "another-uid",
        "run_id": "another-run",
        "failures_file": "/tmp/inputs/failures.json",  # always passed; holds `null` here
        "provider": "kfp-cli",
        "pipeline_name": "",
        "clock_skew": None,
    }
    environment = {"pipeline_name": "from-configmap", "clock_skew": "9", "subject": "runs.ended"}
    merged = run.merge(command_line, {**command_line, **environment})
    assert {key: merged[key] for key in ("status", "workflow_uid", "run_id", "failures_file")} == {
        "status": "Succeeded",
        "workflow_uid": UID,
        "run_id": RUN_ID,
        "failures_file": None,
    }
    assert merged["provider"] == "kfp-cli"  # command line over the step's tfx
    assert merged["pipeline_name"] == "penguin-pipeline"  # the step over the environment
    assert (merged["clock_skew"], merged["subject"]) == ("9", "runs.ended")  # no step setting
    options = read_options(merged, {})
    assert (options.provider, options.clock_skew, options.nats.subject) == (
        "kfp-cli",
        9.0,
        "runs.ended",
    )
    assert [failure.display_name for failure in options.run.failures] == ["pusher(0)"]


def test_an_artifacts_file_on_the_command_line_beats_the_steps_artifacts(tmp_path: Path) -> None:
    definitions = tmp_path / "definitions.yaml"
    definitions.write_text("- name: transform-graph\n  path: Transform:transform_graph\n")
    run = read(penguin())
    command_line = {"artifacts_file": str(definitions)}
    merged = run.merge(command_line, command_line)
    assert "artifacts" not in merged
    assert [d.name for d in read_options(merged, {}).artifacts] == ["transform-graph"]
    # without it, the step's definitions
    step = read_options(run.merge({}, {}), {}).artifacts
    assert [(d.name, d.component) for d in step] == [
        ("serving-model", "Pusher"),
        ("model", "Trainer"),
    ]


def test_the_steps_artifacts_beat_an_artifacts_file_from_the_environment() -> None:
    run = read(penguin())
    merged = run.merge({}, {"artifacts_file": "/etc/exit-handler/definitions.yaml"})
    assert [d.name for d in read_options(merged, {}).artifacts] == ["serving-model", "model"]


def test_every_global_output_becomes_an_output_parameter() -> None:
    workflow = penguin()
    workflow["status"]["outputs"] = {
        "parameters": [
            {"name": "accuracy", "value": "0.93"},
            {"name": "model-uri", "value": "gs://penguin-models/serving/42"},
            {"name": "notes", "value": "a=b, c=d"},
            {"name": "empty"},
        ]
    }
    run = read(workflow)
    assert run.facts["output_parameter"] == [
        "accuracy=0.93",
        "model-uri=gs://penguin-models/serving/42",
        "notes=a=b, c=d",
        "empty=",
    ]
    assert from_object(workflow).output_parameters == {
        "accuracy": "0.93",
        "model-uri": "gs://penguin-models/serving/42",
        "notes": "a=b, c=d",
        "empty": "",
    }
    del workflow["status"]["outputs"]
    assert read(workflow).facts["output_parameter"] == []


def test_a_global_output_that_looks_like_a_template_is_data() -> None:
    workflow = penguin()
    workflow["status"]["outputs"] = {
        "parameters": [
            {"name": "accuracy", "value": "0.93"},
            {"name": "prompt", "value": "Classify {{species}} from its bill length"},
        ]
    }
    assert from_object(workflow).output_parameters == {
        "accuracy": "0.93",
        "prompt": "Classify {{species}} from its bill length",
    }


def test_a_global_output_over_the_size_bound_is_left_out_and_the_rest_kept() -> None:
    workflow = penguin()
    huge = "x" * (MAX_PARAMETER_VALUE + 1)
    workflow["status"]["outputs"] = {
        "parameters": [{"name": "accuracy", "value": "0.93"}, {"name": "blob", "value": huge}]
    }
    assert from_object(workflow).output_parameters == {"accuracy": "0.93"}


# --- when each component ran ---------------------------------------------------------------


def test_intervals_by_template_name_from_first_start_to_last_finish() -> None:
    intervals = read(penguin()).intervals(["Pusher", "Trainer", "Transform", OUR_STEP])
    assert intervals == {
        "Pusher": Interval(moment("10:36:05"), moment("10:44:57"), attempts=2),
        "Trainer": Interval(moment("10:06:45"), moment("10:30:10"), attempts=1),
        # Transform ran no pod; our step's pods are in onExit, not the pipeline's
    }


def test_intervals_by_display_name_less_its_retry_suffix() -> None:
    """A Pusher task calling a WorkflowTemplate: its pods have no templateName, and are
    `pusher(0)`, `pusher(1)`."""
    run = read(penguin(pusher_by_ref=True))
    assert [pod["displayName"] for pod in run.pods if "templateName" not in pod] == [
        "pusher(0)",
        "pusher(1)",
    ]
    assert run.intervals(["Pusher"]) == {
        "Pusher": Interval(moment("10:36:05"), moment("10:44:57"), attempts=2)
    }


def test_a_pod_that_never_started_is_not_an_attempt() -> None:
    workflow = penguin()
    first = workflow["status"]["nodes"][node_id(PENGUIN, PENGUIN + ".pusher(0)")]
    first["startedAt"] = None
    assert read(workflow).intervals(["Pusher"]) == {
        "Pusher": Interval(moment("10:38:20"), moment("10:44:57"), attempts=1)
    }


def test_component_names_become_the_kfp_template_names() -> None:
    assert [node_name(c) for c in ("Pusher", "CsvExampleGen", "My_Pusher v2", "--x--")] == [
        "pusher",
        "csvexamplegen",
        "my-pusher-v2",
        "x",
    ]


def test_publish_gives_each_component_its_own_window_with_skew() -> None:
    run = read(penguin())
    options = replace(
        read_options(run.merge({}, {"pusher_components": "Pusher,CanaryPusher"}), {}),
        workflow=run,
    )
    windows = _component_windows(options, timedelta(seconds=3))
    # A component that ran no pod in this run wrote nothing in it: no window to look in.
    assert windows.pop("CanaryPusher").attempts == 0
    assert windows == {
        # start - skew, end + the second Kubernetes cut off + skew
        "Pusher": Window(moment("10:36:02"), moment("10:45:01"), 2),
        "Trainer": Window(moment("10:06:42"), moment("10:30:14"), 1),
    }


# --- how the nodes are stored --------------------------------------------------------------


def compressed(nodes: object) -> str:
    """Argo's `compressedNodes`: base64 of the gzip'd JSON of the nodes."""
    return base64.b64encode(gzip.compress(json.dumps(nodes).encode())).decode()


def test_compressed_nodes_read_like_nodes() -> None:
    workflow = failed_run(ended=True)
    workflow["status"]["compressedNodes"] = compressed(workflow["status"].pop("nodes"))
    assert read(workflow) == read(failed_run(ended=True))
    assert read(workflow).facts["status"] == "Failed"


@pytest.mark.parametrize(
    "text",
    [
        "not base64!",
        base64.b64encode(b"not gzip").decode(),
        compressed({"a": 1})[:-12],  # cut
        base64.b64encode(gzip.compress(b"{not json")).decode(),
        base64.b64encode(gzip.compress(b"\xff\xfe")).decode(),
    ],
    ids=["base64", "gzip", "cut", "json", "utf-8"],
)
def test_unreadable_compressed_nodes_are_bad_input(text: str) -> None:
    workflow = failed_run(ended=True)
    del workflow["status"]["nodes"]
    workflow["status"]["compressedNodes"] = text
    with pytest.raises(BadInput) as caught:
        read(workflow)
    assert str(caught.value) == (
        f"bad input: --workflow: workflow {NAMESPACE}/{FAILED}: "
        "status.compressedNodes is unreadable"
    )


def test_offloaded_nodes_say_so() -> None:
    workflow = failed_run(ended=True)
    del workflow["status"]["nodes"]
    workflow["status"]["offloadNodeStatusVersion"] = "fnv:1847306321"
    with pytest.raises(OffloadedNodes) as caught:
        read(workflow)
    assert isinstance(caught.value, BadInput)
    assert f"workflow {NAMESPACE}/{FAILED} keeps its nodes in Argo's offload database" in str(
        caught.value
    )


# --- the published marker ------------------------------------------------------------------


def test_published_is_the_label() -> None:
    workflow = penguin()
    assert read(workflow).published is None
    workflow["metadata"]["labels"][PUBLISHED] = "0f8b6a4e-2d1c-5b3a-9e8f-7a6b5c4d3e2f"
    assert read(workflow).published == "0f8b6a4e-2d1c-5b3a-9e8f-7a6b5c4d3e2f"
    assert PUBLISHED == "kfp-exit-handler/published"


def test_publish_skips_a_run_labelled_with_this_events_id(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(logging.getLogger("exit_handler"), "handlers", [handler])
    logger = logging.getLogger("exit_handler")
    request.addfinalizer(partial(logger.setLevel, logger.level))
    logger.setLevel(logging.INFO)  # not the attribute: setLevel clears the loggers' level cache
    unpublished = read(penguin())
    nowhere = {"nats_url": f"nats://127.0.0.1:{free_port()}", "timeout": "1"}
    options = replace(read_options(unpublished.merge({}, nowhere), {}), root=None, workflow=None)
    this_id = event_id(options.run)
    stdout = io.StringIO()
    publish(replace(options, workflow=replace(unpublished, published=this_id)), stdout=stdout)
    assert stdout.getvalue() == ""
    assert records == [
        f"workflow {NAMESPACE}/{PENGUIN} is labelled {PUBLISHED}={this_id}: this event was "
        "published; nothing to do"
    ]
    # Another outcome's id (before the run was retried): this one is sent, to nowhere here.
    other = replace(unpublished, published=str(event_id(replace(options.run, status="failed"))))
    with pytest.raises(Unavailable):
        publish(replace(options, workflow=other), stdout=stdout, deadline=Deadline(0.3))


# --- the event ------------------------------------------------------------------------------


def test_event_data_overlapping_components_and_the_end_of_the_run() -> None:
    run = from_object(failed_run(ended=True))
    observed = datetime(2026, 11, 26, 10, 50, 41, tzinfo=UTC)

    def data(run: Run, overlapping: list[str]) -> dict[str, Any]:
        return event_data(
            run,
            provider="kfp",
            observed_at=observed,
            serving_model_artifacts=[],
            artifacts=[],
            overlapping=overlapping,
        )

    payload = data(run, ["Trainer", "Pusher"])
    assert payload["overlappingComponents"] == ["Pusher", "Trainer"]
    assert payload["runEndTime"] == "2026-11-26T10:12:31Z"  # the root node's end
    assert payload["runStartTime"] == "2026-11-26T10:00:00Z"
    assert [f["displayName"] for f in payload["failures"]] == ["trainer", "exit-handler-1", FAILED]
    assert (payload["runId"], payload["runName"]) == (RUN_ID, "penguin nightly")
    assert "overlappingComponents" not in data(run, [])
    assert data(replace(run, finished_at=None), [])["runEndTime"] == "2026-11-26T10:50:41Z"
    assert run.failures[0] == Failure(
        "trainer", "trainer", "Failed", "OOMKilled (exit code 137)", "2026-11-26T10:12:30Z"
    )


# --- windows against a real GCS API (fake-gcs-server) --------------------------------------


def created_times(gcs: FakeGcsServer, bucket: str, prefix: str) -> dict[str, datetime]:
    """When GCS stamped each execution directory: its oldest object's timeCreated."""
    query = urllib.parse.urlencode({"prefix": prefix + "/"})
    url = f"{gcs.endpoint}/storage/v1/b/{bucket}/o?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  # loopback emulator
        items = json.load(response)["items"]
    times: dict[str, datetime] = {}
    for item in items:
        version = item["name"][len(prefix) + 1 :].split("/")[0]
        created = parse_timestamp(item["timeCreated"])
        times[version] = min(created, times.get(version, created))
    return times


def test_component_windows_keep_this_runs_executions_and_flag_overlaps(
    gcs: FakeGcsServer, bucket: str
) -> None:
    run_start = datetime.now(UTC) - timedelta(seconds=1)
    for version in ("7", "8", "9"):  # another run's Pusher, this run's, another run's
        upload_model(gcs, bucket, PUSHED, version)
        time.sleep(0.3)
    created = created_times(gcs, bucket, PUSHED)
    assert created["7"] < created["8"] < created["9"]
    margin = timedelta(milliseconds=100)

    def found(windows: dict[str, Window]) -> tuple[list[str], set[str]]:
        lister = RootLister(
            PipelineRoot.parse(f"gs://{bucket}/penguin-pipeline"),
            window_start=run_start,
            window_end=datetime.now(UTC) + timedelta(seconds=5),
            deadline=Deadline(10),
            component_windows=windows,
        )
        executions = lister.executions("Pusher", "pushed_model")
        return [execution.version for execution in executions], lister.overlapping

    assert found({}) == (["7", "8", "9"], set())  # all inside the run's window
    own = Window(created["8"] - margin, created["8"] + margin, 1)
    assert found({"Pusher": own}) == (["8"], set())
    assert found({"Trainer": own}) == (["7", "8", "9"], set())  # another component's window
    crowded = Window(created["7"] - margin, created["9"] + margin, 2)
    assert found({"Pusher": crowded}) == (["7", "8", "9"], {"Pusher"})
    assert found({"Pusher": crowded._replace(attempts=3)}) == (["7", "8", "9"], set())
