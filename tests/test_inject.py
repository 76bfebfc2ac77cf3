"""`exit-handler inject` on workflows compiled by the KFP v1 SDK and a TFX-shaped one."""

from __future__ import annotations

import copy
import errno
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from argo_models import validate
from conftest import Result
from test_argo_side import substitute, workflow_template

from exit_handler.cli import main
from exit_handler.errors import BadInput
from exit_handler.inject import (
    FAILURES_BOUND,
    INJECTED_LABEL,
    USER_STEP,
    InjectOptions,
    inject,
)
from exit_handler.run import OUR_STEP, WRAPPER, decode_failures

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
COMPILED = ["kfp_simple.yaml", "kfp_exit_handler.yaml", "kfp_no_root.yaml", "tfx_penguin.yaml"]
# What each mode passes beyond the arguments both pass.
OBJECT_ONLY = {"workflow"}
VARIABLES_ONLY = {"failures", "output-parameters"}


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((FIXTURES / name).read_text())
    return loaded


def run_inject(*args: str, stdin: str = "") -> Result:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(
        ["inject", *args], environ={}, stdout=stdout, stderr=stderr, stdin=io.StringIO(stdin)
    )
    return Result(int(status), stdout.getvalue(), stderr.getvalue())


def wrapper(workflow: dict[str, Any]) -> dict[str, Any]:
    assert workflow["spec"]["onExit"] == WRAPPER
    found: dict[str, Any] = next(t for t in workflow["spec"]["templates"] if t["name"] == WRAPPER)
    return found


def our_step(workflow: dict[str, Any]) -> dict[str, Any]:
    step: dict[str, Any] = next(s for s in wrapper(workflow)["steps"][0] if s["name"] == OUR_STEP)
    return step


def our_arguments(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in our_step(workflow)["arguments"]["parameters"]}


@pytest.mark.parametrize("from_variables", [False, True], ids=["object", "from-variables"])
@pytest.mark.parametrize("name", COMPILED)
def test_injected_workflows_validate_against_the_argo_model(
    name: str, from_variables: bool
) -> None:
    original = load(name)
    validate(original)  # the fixture itself is a valid Workflow
    options = InjectOptions(artifacts=(("m", "Trainer:model"),), from_variables=from_variables)
    injected = inject(copy.deepcopy(original), options)
    validate(injected)
    arguments = our_arguments(injected)
    # The fallback variables, in both modes.
    assert arguments["status"] == "{{workflow.status}}"
    assert arguments["workflow-name"] == "{{workflow.name}}"
    assert arguments["workflow-uid"] == "{{workflow.uid}}"
    assert arguments["namespace"] == "{{workflow.namespace}}"
    assert arguments["created-at"] == "{{workflow.creationTimestamp}}"
    assert arguments["run-id"] == "{{workflow.uid}}"
    if from_variables:
        assert not OBJECT_ONLY & set(arguments)
        bound = f"{{{{=sprig.trunc({FAILURES_BOUND}, workflow.failures)}}}}"
        assert arguments["failures"] == bound
    else:
        # publish reads this Workflow; the object holds the failures whole.
        assert arguments["workflow"] == "{{workflow.name}}"
        assert not VARIABLES_ONLY & set(arguments)
    assert injected["metadata"]["labels"][INJECTED_LABEL] == "true"
    tags = [tag for value in arguments.values() for tag in re.findall(r"\{\{(.*?)\}\}", value)]
    assert all(
        re.fullmatch(r"workflow\.[\w.-]+|=sprig\.trunc\(\d+, workflow\.failures\)", tag)
        for tag in tags
    ), "only {{workflow.*}} variables, which always resolve in an exit handler"
    # Nothing else of the pipeline changed.
    original_templates = original["spec"]["templates"]
    assert injected["spec"]["templates"][: len(original_templates)] == original_templates


@pytest.mark.parametrize(
    ("name", "pipeline", "root"),
    [
        ("kfp_simple.yaml", "penguin-pipeline", "{{workflow.parameters.pipeline_root}}"),
        ("tfx_penguin.yaml", "penguin-pipeline", "{{workflow.parameters.pipeline-root}}"),
        ("kfp_no_root.yaml", "hello-pipeline", None),
    ],
)
def test_pipeline_name_from_the_annotation_and_the_root_parameter(
    name: str, pipeline: str, root: str | None
) -> None:
    arguments = our_arguments(inject(load(name), InjectOptions()))
    assert arguments["pipeline-name"] == pipeline
    assert arguments.get("pipeline-root") == root


def test_without_annotation_the_entrypoint_names_the_pipeline() -> None:
    workflow = load("kfp_simple.yaml")
    del workflow["metadata"]["annotations"]["pipelines.kubeflow.org/pipeline_spec"]
    assert (
        our_arguments(inject(workflow, InjectOptions()))["pipeline-name"]
        == (workflow["spec"]["entrypoint"])
    )


def test_missing_root_parameter_takes_the_option(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    result = run_inject(
        str(FIXTURES / "kfp_no_root.yaml"), "-o", str(out), "--pipeline-root=gs://bucket/p"
    )
    assert result.status == 0, result.stderr
    assert our_arguments(yaml.safe_load(out.read_text()))["pipeline-root"] == "gs://bucket/p"


def test_existing_on_exit_keeps_running_beside_ours() -> None:
    workflow = load("kfp_exit_handler.yaml")
    assert workflow["spec"]["onExit"] == "notify"
    injected = inject(workflow, InjectOptions())
    validate(injected)
    steps = wrapper(injected)["steps"]
    assert len(steps) == 1, "one step group: both run side by side"
    user = next(step for step in steps[0] if step["name"] == USER_STEP)
    assert user["template"] == "notify"
    # Argo handed onExit the workflow's arguments; as a step they are passed explicitly.
    assert user["arguments"]["parameters"] == [
        {"name": "pipeline_root", "value": "{{workflow.parameters.pipeline_root}}"}
    ]


MODES: dict[str, list[str]] = {
    "object": ["--artifact=serving-model=Pusher:pushed_model:0[pushed == 1]", "--provider=tfx"],
    "object-plain": [],
    "from-variables": ["--from-variables", "--artifact=model=Trainer:model"],
    "from-variables-continue": ["--from-variables", "--continue-on-failure", "--provider=tfx"],
}


@pytest.mark.parametrize("name", COMPILED)
def test_injecting_twice_changes_nothing(name: str, tmp_path: Path) -> None:
    once, twice = tmp_path / "once.yaml", tmp_path / "twice.yaml"
    for options in MODES.values():
        assert run_inject(str(FIXTURES / name), "-o", str(once), *options).status == 0
        assert run_inject(str(once), "-o", str(twice), *options).status == 0
        assert once.read_text() == twice.read_text(), options


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("before", list(MODES))
def test_reinjecting_with_other_flags_is_injecting_the_original_with_them(
    name: str, before: str, tmp_path: Path
) -> None:
    """Whatever mode and options a workflow was injected with, injecting it again gives what
    injecting the compiled pipeline gives: nothing of the earlier injection is left."""
    earlier = tmp_path / "earlier.yaml"
    assert run_inject(str(FIXTURES / name), "-o", str(earlier), *MODES[before]).status == 0
    for after, options in MODES.items():
        again = run_inject(str(earlier), *options)
        fresh = run_inject(str(FIXTURES / name), *options)
        assert (again.status, fresh.status) == (0, 0)
        assert again.stdout == fresh.stdout, (before, after)
        if after != before:  # the flags matter: the comparison above is not vacuous
            assert again.stdout != earlier.read_text(), (before, after)


def exporting(workflow_text: str, output: str) -> str:
    """The pipeline with a global output OUTPUT: its first container's output parameter with
    `globalName` (KFP v1 and TFX write none)."""
    workflow = yaml.safe_load(workflow_text)
    container = next(t for t in workflow["spec"]["templates"] if "container" in t)
    container.setdefault("outputs", {}).setdefault("parameters", []).append(
        {"name": output, "globalName": output, "valueFrom": {"path": f"/tmp/{output}"}}
    )
    text: str = yaml.safe_dump(workflow, sort_keys=False)
    return text


def test_options_reach_the_step() -> None:
    result = run_inject(
        "-",
        "--from-variables",
        "--artifact=serving-model=Pusher:pushed_model:0[pushed == 1]",
        "--artifact=model=Trainer:model",
        "--output-parameter=accuracy",
        "--provider=tfx",
        "--workflow-template=exit-handler-v2",
        "--template=publish",
        "--cluster-scope",
        "--continue-on-failure",
        stdin=exporting((FIXTURES / "tfx_penguin.yaml").read_text(), "accuracy"),
    )
    assert result.status == 0, result.stderr
    injected = yaml.safe_load(result.stdout)
    validate(injected)
    step = wrapper(injected)["steps"][0][0]
    assert step["templateRef"] == {
        "name": "exit-handler-v2",
        "template": "publish",
        "clusterScope": True,
    }
    assert step["continueOn"] == {"failed": True, "error": True}
    arguments = our_arguments(injected)
    assert arguments["provider"] == "tfx"
    assert arguments["output-parameters"] == "accuracy={{workflow.outputs.parameters.accuracy}}"
    assert yaml.safe_load(arguments["artifacts"]) == [
        {"name": "serving-model", "path": "Pusher:pushed_model:0[pushed == 1]"},
        {"name": "model", "path": "Trainer:model"},
    ]
    assert arguments["exit-templates"] == f"{WRAPPER},{OUR_STEP}"


def test_object_mode_refuses_output_parameters_the_object_carries(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    text = exporting((FIXTURES / "tfx_penguin.yaml").read_text(), "accuracy")
    refused = run_inject("-", "-o", str(out), "--output-parameter=accuracy", stdin=text)
    assert refused.status == 2, refused.stderr
    (line,) = refused.stderr.splitlines()
    assert "--output-parameter" in line
    assert "the Workflow object carries every global output" in line
    assert "--from-variables" in line
    assert not out.exists()
    with pytest.raises(BadInput, match="carries every global output"):
        inject(yaml.safe_load(text), InjectOptions(output_parameters=("accuracy",)))
    # The same request with --from-variables is what that mode is for.
    accepted = run_inject("-", "--from-variables", "--output-parameter=accuracy", stdin=text)
    assert accepted.status == 0, accepted.stderr


def test_an_output_parameter_no_step_exports_is_refused() -> None:
    """`{{workflow.outputs.parameters.NAME}}` without a `globalName: NAME` output: Argo
    refuses the whole Workflow at submission (test_conformance_argo_workflows shows it)."""
    text = exporting(SIMPLE, "loss")
    result = run_inject("-", "--from-variables", "--output-parameter=accuracy", stdin=text)
    assert result.status == 2, result.stderr
    assert "no step outputs a parameter with globalName 'accuracy'" in result.stderr
    assert result.stdout == ""
    assert run_inject("-", "--from-variables", "--output-parameter=loss", stdin=text).status == 0


@pytest.mark.parametrize("mode", [[], ["--from-variables"]], ids=["object", "from-variables"])
def test_inject_labels_the_run_and_keeps_its_labels(mode: list[str]) -> None:
    """The backstop watches only Workflows with this label: the runs that opted in."""
    labelled, unlabelled = yaml.safe_load(SIMPLE), yaml.safe_load(SIMPLE)
    labelled["metadata"]["labels"]["team"] = "ml"
    del unlabelled["metadata"]["labels"]
    kept = {"pipelines.kubeflow.org/kfp_sdk_version": "1.8.22", "team": "ml"}
    for workflow, wanted in (
        (labelled, {**kept, INJECTED_LABEL: "true"}),
        (unlabelled, {INJECTED_LABEL: "true"}),
    ):
        result = run_inject("-", *mode, stdin=yaml.safe_dump(workflow, sort_keys=False))
        assert result.status == 0, result.stderr
        injected = yaml.safe_load(result.stdout)
        assert injected["metadata"]["labels"] == wanted
        # Quoted: a Kubernetes label value is a string, and YAML's bare true is a boolean.
        assert f"{INJECTED_LABEL}: 'true'" in result.stdout
        assert {k: v for k, v in injected["metadata"].items() if k != "labels"} == {
            k: v for k, v in workflow["metadata"].items() if k != "labels"
        }


SIMPLE = (FIXTURES / "kfp_simple.yaml").read_text()
MALFORMED: list[tuple[str, list[str], str]] = [
    ("not YAML", ["-"], "is not valid YAML"),
    ("a list", ["-"], "not a mapping"),
    ("a WorkflowTemplate", ["-"], "not an Argo Workflow"),
    ("a Deployment", ["-"], "not an Argo Workflow"),
    ("no spec", ["-"], "no spec mapping"),
    ("templates not a list", ["-"], "spec.templates is not a non-empty list"),
    ("onExit names nothing", ["-"], "spec.onExit names template 'ghost'"),
    ("labels not a mapping", ["-"], "metadata.labels is not a mapping"),
    ("object mode with an output", ["-", "--output-parameter=accuracy"], "--from-variables"),
    ("bad artifact", ["-", "--artifact=m=Pusher:pushed_model[pushed ==]"], "column 30"),
    ("artifact without =", ["-", "--artifact=Pusher:pushed_model"], "is not NAME=PATH"),
    ("bad template name", ["-", "--workflow-template=Bad_Name"], "not a valid Argo name"),
    ("bad root", ["-", "--pipeline-root=s3://b"], "--pipeline-root: "),
    ("missing file", ["/nonexistent/pipeline.yaml"], "cannot read /nonexistent/pipeline.yaml"),
]
TEXTS = {
    "not YAML": "spec: [unclosed",
    "a list": "- 1\n- 2\n",
    "a WorkflowTemplate": SIMPLE.replace("kind: Workflow", "kind: WorkflowTemplate", 1),
    "a Deployment": "apiVersion: apps/v1\nkind: Deployment\nspec: {}\n",
    "no spec": "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\n",
    "templates not a list": (
        "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nspec: {entrypoint: a, templates: {}}\n"
    ),
    "onExit names nothing": SIMPLE + "  onExit: ghost\n",
    "labels not a mapping": SIMPLE.replace(
        "  labels: {pipelines.kubeflow.org/kfp_sdk_version: 1.8.22}", "  labels: [a, b]", 1
    ),
}


@pytest.mark.parametrize(("what", "args", "fault"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_exits_2_and_writes_nothing(
    tmp_path: Path, what: str, args: list[str], fault: str
) -> None:
    out = tmp_path / "out.yaml"
    result = run_inject(*args, "-o", str(out), stdin=TEXTS.get(what, SIMPLE))
    assert result.status == 2, result.stderr
    assert fault in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "no temporary file left behind"


def test_output_errors_exit_2(tmp_path: Path) -> None:
    source = str(FIXTURES / "kfp_simple.yaml")
    into_directory = run_inject(source, "-o", str(tmp_path))
    into_nowhere = run_inject(source, "-o", str(tmp_path / "missing" / "out.yaml"))
    assert (into_directory.status, into_nowhere.status) == (2, 2)
    assert "is a directory" in into_directory.stderr
    assert "cannot write" in into_nowhere.stderr
    assert list(tmp_path.iterdir()) == []


def test_rewriting_in_place_keeps_the_file_mode(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text((FIXTURES / "kfp_simple.yaml").read_text())
    pipeline.chmod(0o640)
    assert run_inject(str(pipeline), "-o", str(pipeline)).status == 0
    assert pipeline.stat().st_mode & 0o777 == 0o640
    assert yaml.safe_load(pipeline.read_text())["spec"]["onExit"] == WRAPPER


@pytest.mark.parametrize(
    ("args", "stdin", "fault"),
    [
        (["-"], "\udcff\udcfe", "is not UTF-8 text"),
        (["-", "--provider=k f p"], SIMPLE, "--provider: "),
        (["-", "--from-variables", "--output-parameter=../x"], SIMPLE, "--output-parameter: "),
    ],
)
def test_inputs_every_run_would_refuse_are_refused_now(
    args: list[str], stdin: str, fault: str
) -> None:
    result = run_inject(*args, stdin=stdin)
    assert result.status == 2, result.stderr
    assert fault in result.stderr
    assert result.stdout == ""


def pipeline_using(kind: str, name: str) -> dict[str, Any]:
    workflow = load("kfp_simple.yaml")
    templates = workflow["spec"]["templates"]
    dag = next(t for t in templates if "dag" in t)
    if kind == "template":
        templates.append({"name": name, "container": {"image": "alpine"}})
    elif kind == "task":
        dag["dag"]["tasks"][0]["name"] = name
    else:
        templates.append({"name": "steps", "steps": [[{"name": name, "template": dag["name"]}]]})
    return workflow


@pytest.mark.parametrize("name", [OUR_STEP, WRAPPER])
@pytest.mark.parametrize("kind", ["template", "step", "task"])
def test_a_pipeline_node_named_like_ours_is_refused(kind: str, name: str) -> None:
    """The event drops nodes by these names: a pipeline's own would vanish from it."""
    with pytest.raises(BadInput, match=f"already has a {kind} named '{name}'"):
        inject(pipeline_using(kind, name), InjectOptions())


def go_json(value: object) -> str:
    """Go's json.Marshal: compact, UTF-8, and HTML-safe (`<`, `>`, `&`, U+2028, U+2029 become
    six-byte escapes), the worst case for a size bound."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def ordinary_failures(count: int, message: str = "Error (exit code 1)") -> str:
    """{{workflow.failures}} for `count` failed TFX Trainer pods as operator.go writes it:
    json.Marshal, then strconv.Quote (which quotes this ASCII text as JSON does)."""
    nodes = [
        {
            "displayName": "trainer",
            "message": message,
            "templateName": "trainer",
            "phase": "Failed",
            "podName": f"penguin-pipeline-x7k2p-trainer-{1849502734 + 7919 * number:010d}",
            "finishedAt": "2026-11-26T10:41:00Z",
        }
        for number in range(count)
    ]
    return json.dumps(go_json(nodes))


def argo_template(step: dict[str, Any], failures: str) -> tuple[str, str]:
    """(ARGO_TEMPLATE, the failures passed) for our exit pod. Argo 3.2-3.5 set ARGO_TEMPLATE
    in every container (workflowpod.go): json.Marshal of the WorkflowTemplate's template with
    the step's arguments resolved (steps.go) and its inputs substituted (ProcessArgs)."""
    variables = {
        "workflow.status": "Failed",
        "workflow.name": "penguin-pipeline-x7k2p",
        "workflow.uid": "3f2c9a8e-1b7d-4c55-9e0a-5d6f7a8b9c0d",
        "workflow.namespace": "kubeflow",
        "workflow.creationTimestamp": "2026-11-26T10:00:00Z",
        "workflow.parameters.pipeline-root": "gs://ml-pipelines/tfx/penguin-pipeline",
        "workflow.failures": failures,
    }
    passed = {p["name"]: substitute(p["value"], variables) for p in step["arguments"]["parameters"]}
    (template,) = workflow_template()["spec"]["templates"]
    for parameter in template["inputs"]["parameters"]:
        parameter["value"] = passed.get(parameter["name"], parameter.get("value"))
    inputs = {
        f"inputs.parameters.{p['name']}": p["value"] for p in template["inputs"]["parameters"]
    }

    def resolved(node: object) -> object:
        if isinstance(node, str):
            return substitute(node, inputs)
        if isinstance(node, list):
            return [resolved(item) for item in node]
        if isinstance(node, dict):
            return {key: resolved(value) for key, value in node.items()}
        return node

    return go_json(resolved(template)), passed["failures"]


def starts(template: str) -> bool:
    """Whether a container with this ARGO_TEMPLATE starts: Linux refuses an environment
    string over 128 KiB (MAX_ARG_STRLEN) with E2BIG when it execs the entrypoint."""
    try:
        subprocess.run(["/bin/true"], env={"ARGO_TEMPLATE": template}, check=True)
    except OSError as err:
        if err.errno != errno.E2BIG:
            raise
        return False
    return True


def test_the_exit_pod_starts_whatever_the_failure_count() -> None:
    """In variables mode; object mode passes no failures at all."""
    bounded = our_step(inject(load("tfx_penguin.yaml"), InjectOptions(from_variables=True)))
    unbounded = copy.deepcopy(bounded)
    for parameter in unbounded["arguments"]["parameters"]:
        if parameter["name"] == "failures":
            parameter["value"] = "{{workflow.failures}}"
    # Unbounded, the figure README gives: 242 start, 243 do not (244 before the metrics block).
    assert starts(argo_template(unbounded, ordinary_failures(200))[0])
    assert not starts(argo_template(unbounded, ordinary_failures(250))[0])
    assert not starts(argo_template(unbounded, ordinary_failures(10_000))[0])
    env, passed = argo_template(bounded, ordinary_failures(10_000))
    assert starts(env)
    assert len(passed.encode()) == FAILURES_BOUND
    assert decode_failures(passed) == (decode_failures(ordinary_failures(114)).entries, True)
    # The worst escaping: a message of backslashes doubles twice, in both copies.
    assert starts(argo_template(bounded, ordinary_failures(100, "\\" * 3000))[0])
    # HTML characters: the inner json.Marshal already escapes them, so the quoted text holds
    # only ASCII that the outer Marshal at most doubles; the bound holds for them too.
    assert starts(argo_template(bounded, ordinary_failures(100, "<&>\u2028" * 1000))[0])
