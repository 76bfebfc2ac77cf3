"""What we ship, judged by Argo Workflows' own code on each release line KFP bundles (README).

One harness per line in ``conformance/argo-workflows-vX.Y.Z/`` (the real module from the Go
proxy, pinned by a committed go.sum; nothing upstream is copied here) reads a batch of
manifests and answers, with that release's code:

- ``dropped``: every field its Go types do not have (decoded strictly, as its Kubernetes
  client reads them, case-sensitive): what that release silently ignores;
- ``checks``: its ``workflow/validate`` package with map-backed template getters, in each
  caller's options: ``lint`` (``argo lint --offline``), ``submit`` (the argo server) and
  ``controller`` (what the workflow controller does before it runs a Workflow; a Sensor's
  submitted Workflow meets only this one); templates get ``lint`` and ``create``;
- ``decisions``: whether the controller retries an attempt that ended so, with its retry
  policy gate and, from v3.2, the expression evaluated by its own ``argoexpr``/``env``
  packages over the ``lastRetry.*`` keys its ``workflow/common`` names;
- ``substitutions``: our exit step after its ``util/template.Replace``, as the controller
  resolves it before it runs it, and the publish template's metrics, as it resolves them when
  the step ends.

Injected workflows are made here, at test time, by ``exit_handler.inject.inject``: what is
judged is always what inject writes today.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from go_harness import CONFORMANCE, run_harness
from test_argo_side import ENDED, MANIFESTS, assert_metrics, metric_scope, our_step, substitute

from exit_handler.errors import BadInput
from exit_handler.inject import FAILURES_BOUND, InjectOptions, inject

pytestmark = pytest.mark.conformance

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
# Release lines, each as the Kubeflow Pipelines releases that install it.
LINES: dict[str, str] = {
    "v3.1.6": "KFP 1.8.13-1.8.22 (docker executor)",
    "v3.3.10": "KFP 2.0-2.1",
    "v3.4.17": "KFP 2.2-2.4",
    "v3.5.14": "KFP 2.5",
    "v3.6.12": "KFP 2.14",
}
EXPRESSION = "spec.templates[0].retryStrategy.expression"
# Every field a line drops from what we ship, by document: anything else dropped fails.
DROPPED: dict[str, dict[str, list[str]]] = {
    "v3.1.6": {"workflowtemplate": [EXPRESSION], "clusterworkflowtemplate": [EXPRESSION]},
}
WORKFLOW_CHECKS = {"lint", "submit", "controller"}
TEMPLATE_CHECKS = {"lint", "create"}
COMPILED = ["kfp_simple.yaml", "kfp_exit_handler.yaml", "kfp_no_root.yaml", "tfx_penguin.yaml"]
EVERY_OPTION = InjectOptions(
    continue_on_failure=True,
    artifacts=(("model", "Trainer:model"), ("schema", "SchemaGen:schema")),
    cluster_scope=True,
    provider="kfp-prod",
    pipeline_root="gs://ml-pipelines/fallback",
)
OPTIONS: dict[str, InjectOptions] = {
    "plain": InjectOptions(),
    "from-variables": InjectOptions(from_variables=True),
    "continue-on-failure": InjectOptions(continue_on_failure=True),
    "artifact": InjectOptions(artifacts=(("model", "Trainer:model"),)),
    "output-parameter": InjectOptions(output_parameters=("accuracy",), from_variables=True),
    "cluster-scope": InjectOptions(cluster_scope=True),
    "all": EVERY_OPTION,
    "all-from-variables": replace(
        EVERY_OPTION, output_parameters=("accuracy",), from_variables=True
    ),
}
# (phase, exit code, message) of a failed attempt -> whether our retryStrategy retries it.
ATTEMPTS: list[tuple[str, str | None, str, bool]] = [
    ("Failed", "3", "Error (exit code 3)", True),  # NATS or GCS unavailable
    ("Failed", "137", "OOMKilled (exit code 137)", True),  # killed by a signal
    ("Error", None, "pod deleted", True),  # died before exiting: exitCode "-1"
    ("Failed", "2", "Error (exit code 2)", False),  # bad input
    ("Failed", "4", "Error (exit code 4)", False),  # refused
    ("Failed", "1", "Error (exit code 1)", False),  # a bug
]
# lastRetry keys as the controller sets them for the attempt above that OOM-killed.
SCOPE_PROBES = {
    "exitCode": 'lastRetry.exitCode == "137"',
    "status": 'lastRetry.status == "Failed"',
    "duration": 'lastRetry.duration == "7"',  # the harness's attempts last 7 s
    "message": 'lastRetry.message == "OOMKilled (exit code 137)"',
}
VALUES = {  # the controller's global values for an exit handler (operator.go)
    "workflow.status": "Failed",
    "workflow.name": "penguin-pipeline-x7k2p",
    "workflow.uid": "3f2c9a8e-1b7d-4c55-9e0a-5d6f7a8b9c0d",
    "workflow.namespace": "kubeflow",
    "workflow.creationTimestamp": "2026-11-26T10:00:00Z",
    "workflow.parameters.pipeline-root": "gs://ml-pipelines/tfx/penguin-pipeline",
    "workflow.parameters.pipeline_root": "gs://ml-pipelines/penguin-pipeline",
    "workflow.outputs.parameters.accuracy": "0.93",
}


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def workflow_template() -> dict[str, Any]:
    return load(MANIFESTS / "workflowtemplate.yaml")


def cluster_workflow_template() -> dict[str, Any]:
    return load(MANIFESTS / "cluster" / "clusterworkflowtemplate.yaml")


def backstop_workflow() -> dict[str, Any]:
    """The Workflow the backstop Sensor submits for a terminated run."""
    sensor = load(MANIFESTS / "backstop" / "sensor.yaml")
    (trigger,) = sensor["spec"]["triggers"]
    resource: dict[str, Any] = trigger["template"]["argoWorkflow"]["source"]["resource"]
    return resource


def exporting_accuracy(workflow: dict[str, Any]) -> dict[str, Any]:
    """The pipeline with a global output `accuracy`, as `--output-parameter accuracy` needs:
    a step's output parameter given `globalName` (KFP v1 and TFX never write one)."""
    for template in workflow["spec"]["templates"]:
        for parameter in (template.get("outputs") or {}).get("parameters") or []:
            parameter["globalName"] = "accuracy"
            return workflow
    # A pipeline whose steps output no parameter: give its first container one.
    container = next(t for t in workflow["spec"]["templates"] if "container" in t)
    container.setdefault("outputs", {})["parameters"] = [
        {"name": "accuracy", "globalName": "accuracy", "valueFrom": {"path": "/tmp/accuracy"}}
    ]
    return workflow


def injected(fixture: str, options: InjectOptions) -> dict[str, Any]:
    workflow = load(FIXTURES / fixture)
    if options.output_parameters:
        workflow = exporting_accuracy(workflow)
    return inject(workflow, options)


def with_argument(workflow: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    """The injection with our step's argument NAME set to VALUE (added when absent)."""
    parameters = our_step(workflow)["arguments"]["parameters"]
    parameters[:] = [p for p in parameters if p["name"] != name]
    parameters.append({"name": name, "value": value})
    return workflow


@functools.cache
def shipped() -> dict[str, dict[str, Any]]:
    """Every manifest that must pass every check on every line, by id."""
    cases = {
        "workflowtemplate": workflow_template(),
        "clusterworkflowtemplate": cluster_workflow_template(),
        "backstop-workflow": backstop_workflow(),
    }
    for fixture in COMPILED:
        for label, options in OPTIONS.items():
            cases[f"{fixture}:{label}"] = injected(fixture, options)
    return cases


@functools.cache
def broken() -> dict[str, tuple[dict[str, Any], str]]:
    """Deliberately broken injections, by id: each must fail every check on every line, with
    an error naming what is wrong."""
    tfx = "tfx_penguin.yaml"
    plain = InjectOptions()
    return {
        "wrong-template-name": (injected(tfx, InjectOptions(template="publsh")), "publsh"),
        "wrong-workflowtemplate-name": (
            injected(tfx, InjectOptions(workflow_template="kfp-exit-handlr")),
            "kfp-exit-handlr",
        ),
        "wrong-clusterworkflowtemplate-name": (
            injected(tfx, InjectOptions(workflow_template="kfp-exit-handlr", cluster_scope=True)),
            "kfp-exit-handlr",
        ),
        # Every input has a default now (a caller may pass only `workflow` and `namespace`):
        # what the checks still catch is a variable that does not exist.
        "unknown-workflow-variable": (
            with_argument(injected(tfx, plain), "workflow", "{{workflow.nam}}"),
            "workflow.nam",
        ),
        "unknown-variable-from-variables": (
            with_argument(
                injected("kfp_exit_handler.yaml", OPTIONS["from-variables"]),
                "status",
                "{{workflow.stauts}}",
            ),
            "workflow.stauts",
        ),
    }


def with_metric(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The WorkflowTemplate with its first metric (the published result) changed."""
    template = workflow_template()
    change(template["spec"]["templates"][0]["metrics"]["prometheus"][0])
    return template


@functools.cache
def broken_metrics() -> dict[str, tuple[dict[str, Any], str, set[str]]]:
    """The publish template with a metric broken, by id: (template, what the error names, the
    lines whose validation refuses it)."""
    every = set(LINES)
    colon_refused = {"v3.6.12"}  # Prometheus' legacy names allow ':'; Argo 3.6 no longer does
    return {
        "metric-name-with-dashes": (
            with_metric(lambda m: m.update(name="kfp-exit-handler-result")),
            "kfp-exit-handler-result",
            every,
        ),
        "metric-name-with-colon": (
            with_metric(lambda m: m.update(name="kfp:exit_handler_result")),
            "kfp:exit_handler_result",
            colon_refused,
        ),
        "metric-without-help": (with_metric(lambda m: m.update(help="")), "help", every),
        "metric-label-key-with-dashes": (
            with_metric(lambda m: m["labels"][1].update(key="pipeline-name")),
            "pipeline-name",
            every,
        ),
    }


def metric_as_step(metric: dict[str, Any]) -> dict[str, Any]:
    """A metric's text as a WorkflowStep, for the harness to resolve: computeMetrics puts each
    metric, marshaled, through the same util/template.Replace, unresolved tags refused."""
    (kind,) = {"counter", "gauge", "histogram"} & set(metric)
    parameters = [{"name": label["key"], "value": label["value"]} for label in metric["labels"]]
    parameters.append({"name": "metric-value", "value": metric[kind]["value"]})
    return {
        "name": metric["name"],
        "when": metric.get("when", ""),
        "arguments": {"parameters": parameters},
    }


def metric_substitutions() -> list[dict[str, Any]]:
    """Each metric we ship against the scope the controller gives an ended step, and one with a
    misspelled tag (lint lets `{{statuss}}` through: it checks only the prefixes it knows)."""
    metrics = workflow_template()["spec"]["templates"][0]["metrics"]["prometheus"]
    cases = [
        {
            "id": f"metric-{n}-{phase}",
            "object": metric_as_step(metric),
            "values": metric_scope(phase),
        }
        for n, metric in enumerate(metrics)
        for phase in ENDED
    ]
    misspelled = metric_as_step({**metrics[0], "when": "{{statuss}} == Succeeded"})
    cases.append(
        {"id": "metric-misspelled", "object": misspelled, "values": metric_scope("Failed")}
    )
    return cases


def unexported_output_parameter() -> dict[str, Any]:
    """`--output-parameter accuracy` on a pipeline that exports no `accuracy`, which inject
    refuses (asserted here): made by injecting one that does, then dropping its globalName."""
    options = OPTIONS["output-parameter"]
    with pytest.raises(BadInput, match="globalName 'accuracy'"):
        inject(load(FIXTURES / "kfp_simple.yaml"), options)
    workflow = injected("kfp_simple.yaml", options)
    for template in workflow["spec"]["templates"]:
        for parameter in (template.get("outputs") or {}).get("parameters") or []:
            parameter.pop("globalName", None)
    return workflow


def failures_value(count: int, message: str) -> str:
    """{{workflow.failures}} as the controller sets it: strconv.Quote of the JSON of the failed
    nodes (printable non-ASCII kept as it is, as Quote keeps it)."""
    nodes = [
        {
            "displayName": "trainer",
            "message": message,
            "templateName": "trainer",
            "phase": "Failed",
            "podName": f"penguin-pipeline-x7k2p-trainer-{1849502734 + 7919 * n:010d}",
            "finishedAt": "2026-11-26T10:41:00Z",
        }
        for n in range(count)
    ]
    return json.dumps(
        json.dumps(nodes, separators=(",", ":"), ensure_ascii=False), ensure_ascii=False
    )


def split_at_the_bound() -> str:
    """Failures whose byte FAILURES_BOUND cuts a two-byte character in half."""
    for length in range(100, 200):
        value = failures_value(200, "é" * length)
        try:
            value.encode()[:FAILURES_BOUND].decode()
        except UnicodeDecodeError:
            return value
    raise AssertionError("no message length splits a character at the bound")


@functools.cache
def failures() -> dict[str, str]:
    """{{workflow.failures}} values to resolve our step with, by id."""
    return {
        "none": json.dumps("null"),  # json.Marshal of no failed nodes, quoted
        "one": failures_value(1, "Error (exit code 1)"),
        "many": failures_value(10_000, "Error (exit code 1)"),
        # Argo writes U+FFFD for the half character kept.
        "split-character": split_at_the_bound(),
    }


def request(store: list[dict[str, Any]]) -> dict[str, Any]:
    documents = [{"id": key, "manifest": value} for key, value in shipped().items()]
    documents += [{"id": key, "manifest": value} for key, (value, _) in broken().items()]
    documents.append(
        {"id": "unexported-output-parameter", "manifest": unexported_output_parameter()}
    )
    misspelled = workflow_template()
    misspelled["spec"]["templates"][0]["retryStratgy"] = misspelled["spec"]["templates"][0].pop(
        "retryStrategy"
    )
    documents.append({"id": "misspelled-retrystrategy", "manifest": misspelled})
    documents += [{"id": key, "manifest": value} for key, (value, *_) in broken_metrics().items()]
    strategy = workflow_template()["spec"]["templates"][0]["retryStrategy"]
    attempts = [
        {"phase": phase, "exitCode": code, "message": message}
        for phase, code, message, _ in ATTEMPTS
    ]
    probes = [
        {
            "id": f"probe-{key}",
            "retryStrategy": {"limit": "3", "retryPolicy": "Always", "expression": expression},
            "attempts": [attempts[1]],
        }
        for key, expression in SCOPE_PROBES.items()
    ]
    step = our_step(injected("tfx_penguin.yaml", OPTIONS["all-from-variables"]))
    substitutions = [
        {"id": key, "object": step, "values": {**VALUES, "workflow.failures": value}}
        for key, value in failures().items()
    ]
    # Object mode needs neither the failures nor any global output in scope.
    substitutions.append(
        {
            "id": "object-mode",
            "object": our_step(injected("tfx_penguin.yaml", OPTIONS["all"])),
            "values": {k: v for k, v in VALUES.items() if not k.startswith("workflow.outputs.")},
        }
    )
    unresolvable = copy.deepcopy(step)
    unresolvable["arguments"]["parameters"].append(
        {"name": "typo", "value": "{{workflow.statuss}}"}
    )
    substitutions.append(
        {
            "id": "unresolvable",
            "object": unresolvable,
            "values": {**VALUES, "workflow.failures": failures()["one"]},
        }
    )
    return {
        "store": store,
        "documents": documents,
        "retries": [{"id": "ours", "retryStrategy": strategy, "attempts": attempts}, *probes],
        "substitutions": [*substitutions, *metric_substitutions()],
    }


@functools.cache
def judged(line: str, store: str = "both") -> dict[str, Any]:
    """The line's answer for every case, in one run, with templateRef finding `store`."""
    templates = {
        "both": [workflow_template(), cluster_workflow_template()],
        "namespaced": [workflow_template()],
        "cluster": [cluster_workflow_template()],
    }[store]
    answer: dict[str, Any] = run_harness(f"argo-workflows-{line}", request(templates))
    return answer


def by_id(answer: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in answer[section]}


def failed_checks(document: dict[str, Any]) -> dict[str, str]:
    return {
        mode: check.get("error", "")
        for mode, check in document["checks"].items()
        if not check["ok"]
    }


each_line = pytest.mark.parametrize("line", list(LINES))


def test_one_harness_per_line_each_pinned_to_its_release() -> None:
    folders = sorted(p.name for p in CONFORMANCE.glob("argo-workflows-*") if p.is_dir())
    assert folders == sorted(f"argo-workflows-{v}" for v in LINES)
    main = (CONFORMANCE / f"argo-workflows-{next(iter(LINES))}" / "main.go").read_text()
    for version in LINES:
        folder = CONFORMANCE / f"argo-workflows-{version}"
        # main.go is the same everywhere: only line.go may differ between lines.
        assert (folder / "main.go").read_text() == main, f"{folder.name}/main.go differs"
        assert sorted(p.name for p in folder.iterdir()) == [
            "go.mod",
            "go.sum",
            "line.go",
            "main.go",
        ]
        go_mod = (folder / "go.mod").read_text()
        assert f"\tgithub.com/argoproj/argo-workflows/v3 {version}\n" in go_mod
        assert "replace" not in go_mod
        go_sum = (folder / "go.sum").read_text()
        assert f"github.com/argoproj/argo-workflows/v3 {version} h1:" in go_sum


@each_line
def test_the_harness_runs_the_release_it_names(line: str) -> None:
    assert judged(line)["argo"] == line


@each_line
def test_what_we_ship_passes_every_check(line: str) -> None:
    documents = by_id(judged(line), "documents")
    problems = {}
    for key, manifest in shipped().items():
        document = documents[key]
        expected = TEMPLATE_CHECKS if manifest["kind"] != "Workflow" else WORKFLOW_CHECKS
        assert not document.get("decodeError"), (key, document["decodeError"])
        assert set(document["checks"]) == expected, key
        if failed_checks(document):
            problems[key] = failed_checks(document)
    assert not problems, f"Argo {line} ({LINES[line]}) refuses:\n" + json.dumps(problems, indent=1)


@each_line
def test_every_field_we_use_is_known_or_its_loss_is_documented(line: str) -> None:
    documents = by_id(judged(line), "documents")
    dropped = {key: documents[key]["dropped"] for key in shipped() if documents[key]["dropped"]}
    assert dropped == DROPPED.get(line, {})


@each_line
def test_strict_decoding_names_a_misspelled_field(line: str) -> None:
    document = by_id(judged(line), "documents")["misspelled-retrystrategy"]
    assert document["dropped"] == ["spec.templates[0].retryStratgy"]


@each_line
def test_a_broken_injection_fails_every_check(line: str) -> None:
    documents = by_id(judged(line), "documents")
    for key, (_, named) in broken().items():
        failed = failed_checks(documents[key])
        assert set(failed) == WORKFLOW_CHECKS, f"{key} passed {WORKFLOW_CHECKS - set(failed)}"
        for mode, error in failed.items():
            assert named in error, (key, mode, error)


@each_line
def test_templateref_finds_only_the_scope_it_names(line: str) -> None:
    """With only one kind installed, injections calling the other kind fail every check."""
    for store, calls_missing in (("namespaced", "cluster-scope"), ("cluster", "plain")):
        documents = by_id(judged(line, store), "documents")
        for key, document in documents.items():
            if key.endswith(f":{calls_missing}"):
                assert set(failed_checks(document)) == WORKFLOW_CHECKS, (store, key)
                assert all("not found" in e for e in failed_checks(document).values())
            elif key.endswith((":plain", ":cluster-scope")):
                assert not failed_checks(document), (store, key)


@each_line
def test_an_output_parameter_no_step_exports_is_refused(line: str) -> None:
    """`--output-parameter NAME` needs an output with `globalName: NAME`: without one, Argo
    refuses the whole Workflow at submission, so inject refuses it first."""
    document = by_id(judged(line), "documents")["unexported-output-parameter"]
    failed = failed_checks(document)
    assert set(failed) == WORKFLOW_CHECKS
    assert all("{{workflow.outputs.parameters.accuracy}}" in e for e in failed.values())


@each_line
def test_the_retry_strategy_retries_what_spec_says(line: str) -> None:
    (ours,) = [r for r in judged(line)["retries"] if r["id"] == "ours"]
    decisions = [d["retry"] for d in ours["decisions"]]
    assert not any(d.get("error") for d in ours["decisions"]), ours
    if line == "v3.1.6":  # no expression before v3.2: retryPolicy Always retries every failure
        assert ours["dropped"] == ["expression"]
        assert decisions == [True] * len(ATTEMPTS)
    else:
        assert ours["dropped"] == []
        assert decisions == [wanted for *_, wanted in ATTEMPTS]
        assert {d["reason"] for d in ours["decisions"]} <= {
            "retryStrategy.expression evaluated to true",
            "retryStrategy.expression evaluated to false",
        }


@each_line
def test_the_retry_scope_has_the_keys_argo_documents(line: str) -> None:
    retries = by_id(judged(line), "retries")
    found = {key for key in SCOPE_PROBES if retries[f"probe-{key}"]["decisions"][0]["retry"]}
    if line == "v3.1.6":
        assert all(retries[f"probe-{k}"]["dropped"] == ["expression"] for k in SCOPE_PROBES)
    elif line in ("v3.3.10", "v3.4.17"):  # lastRetry.message came in v3.5
        assert found == {"exitCode", "status", "duration"}
    else:
        assert found == set(SCOPE_PROBES)


@each_line
def test_argo_resolves_our_step_as_our_model_of_it_does(line: str) -> None:
    """util/template.Replace of the line, against `substitute` (the model the other tests use)."""
    answers = by_id(judged(line), "substitutions")
    step = our_step(injected("tfx_penguin.yaml", OPTIONS["all-from-variables"]))
    for key, value in failures().items():
        answer = answers[key]
        assert not answer.get("error"), (key, answer["error"])
        values = {**VALUES, "workflow.failures": value}
        resolved = {p["name"]: p["value"] for p in answer["object"]["arguments"]["parameters"]}
        modelled = {
            p["name"]: substitute(p["value"], values) for p in step["arguments"]["parameters"]
        }
        assert resolved == modelled, key
        assert len(resolved["failures"].encode()) <= FAILURES_BOUND + 2  # U+FFFD for one byte
    assert answers["many"]["object"]["arguments"]["parameters"]
    assert "\ufffd" in by_name(answers["split-character"])["failures"][-1:]
    assert re.search(
        r"failed to resolve \{\{workflow\.statuss\}\}", answers["unresolvable"]["error"]
    )
    # Object mode: the Workflow's name to read, the fallback variables, no failures, no outputs.
    object_mode = answers["object-mode"]
    assert not object_mode.get("error"), object_mode["error"]
    resolved = by_name(object_mode)
    assert resolved["workflow"] == resolved["workflow-name"] == VALUES["workflow.name"]
    assert resolved["status"] == VALUES["workflow.status"]
    assert not {"failures", "output-parameters"} & set(resolved)


def by_name(answer: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in answer["object"]["arguments"]["parameters"]}


@each_line
def test_argo_refuses_a_broken_metric_as_our_checks_do(line: str) -> None:
    """The metrics we ship pass every check (test_what_we_ship_passes_every_check); these show
    that the checks judge them: a name or label key Prometheus refuses, or a missing help."""
    documents = by_id(judged(line), "documents")
    for key, (template, named, refusing) in broken_metrics().items():
        failed = failed_checks(documents[key])
        if line in refusing:
            assert set(failed) == TEMPLATE_CHECKS, (key, failed)
            assert all(named in error for error in failed.values()), (key, failed)
        else:
            assert not failed, (key, failed)
        # Our own check refuses them all, on every line.
        with pytest.raises(AssertionError):
            assert_metrics(template["spec"]["templates"][0])


@each_line
def test_argo_resolves_our_metrics_as_our_model_does(line: str) -> None:
    """Every tag of every metric resolves from the scope the controller gives an ended step,
    to what `substitute` resolves it to in `emitted` (the model test_argo_side checks the
    metrics with); a misspelled tag, which lint lets through, fails."""
    answers = by_id(judged(line), "substitutions")
    metrics = workflow_template()["spec"]["templates"][0]["metrics"]["prometheus"]
    for n, metric in enumerate(metrics):
        for phase in ENDED:
            answer = answers[f"metric-{n}-{phase}"]
            assert not answer.get("error"), (n, phase, answer["error"])
            scope = metric_scope(phase)
            resolved = answer["object"]
            assert resolved["when"] == substitute(metric.get("when", ""), scope)
            (kind,) = {"counter", "gauge", "histogram"} & set(metric)
            assert by_name(answer) == {
                **{label["key"]: substitute(label["value"], scope) for label in metric["labels"]},
                "metric-value": substitute(metric[kind]["value"], scope),
            }
    assert re.search(r"failed to resolve \{\{statuss\}\}", answers["metric-misspelled"]["error"])


def without_the_workflow_input(template: dict[str, Any]) -> dict[str, Any]:
    """The publish template as released before object mode: no `workflow` input or option."""
    (publish,) = template["spec"]["templates"]
    publish["inputs"]["parameters"] = [
        p for p in publish["inputs"]["parameters"] if p["name"] != "workflow"
    ]
    args = publish["container"]["args"]
    args[:] = [arg for arg in args if not arg.startswith("--workflow=")]
    return template


@each_line
def test_an_older_template_accepts_object_mode_and_ignores_it(line: str) -> None:
    """Why the README says to install the template before injecting with this release: Argo
    passes over an argument the installed template does not declare, so an object-mode step
    against an older template validates and runs in variables mode, without the failures."""
    older = without_the_workflow_input(workflow_template())
    step_object = injected("tfx_penguin.yaml", OPTIONS["plain"])
    answer = run_harness(
        f"argo-workflows-{line}",
        {
            "store": [older],
            "documents": [{"id": "object-mode", "manifest": step_object}],
            "retries": [],
            "substitutions": [],
        },
    )
    (document,) = answer["documents"]
    assert not failed_checks(document), failed_checks(document)
    assert "workflow" in {p["name"] for p in our_step(step_object)["arguments"]["parameters"]}
