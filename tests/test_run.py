"""Reading Argo's variables: status mapping, failures as Argo really quotes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from exit_handler.errors import InvalidFields
from exit_handler.run import Failure, RunText, decode_failures, parse_timestamp, read_run

ARGO_FAILURES = [
    {
        "displayName": "Trainer",
        "message": "OOMKilled (exit code 137)",
        "templateName": "trainer",
        "phase": "Failed",
        "podName": "penguin-x7k2p-1234",
        "finishedAt": "2026-11-26T10:41:00Z",
    }
]


def run_text(**overrides: str | None) -> RunText:
    fields: dict[str, str | None] = {
        "status": "Succeeded",
        "pipeline_name": "penguin-pipeline",
        "workflow_name": "penguin-pipeline-x7k2p",
        "workflow_uid": "0f5d-uid",
    }
    fields.update(overrides)
    return RunText(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argo", "event"), [("Succeeded", "succeeded"), ("Failed", "failed"), ("Error", "failed")]
)
def test_final_statuses_map_to_the_two_event_statuses(argo: str, event: str) -> None:
    assert read_run(run_text(status=argo)).status == event


def test_failures_quoted_twice_as_argo_passes_them() -> None:
    twice = json.dumps(json.dumps(ARGO_FAILURES))
    assert decode_failures(twice) == [
        Failure("Trainer", "trainer", "Failed", "OOMKilled (exit code 137)", "2026-11-26T10:41:00Z")
    ]


def test_failures_quoted_once_are_accepted_too() -> None:
    assert decode_failures(json.dumps(ARGO_FAILURES))[0].display_name == "Trainer"


@pytest.mark.parametrize("none", ["null", '"null"', "", None, "[]", '"[]"'])
def test_no_failures(none: str | None) -> None:
    assert decode_failures(none) == []


def test_exit_handler_own_nodes_are_not_failures_of_the_run() -> None:
    own = {"displayName": "exit-handler", "templateName": "publish", "phase": "Error"}
    failures = json.dumps(json.dumps([*ARGO_FAILURES, own]))
    run = read_run(run_text(status="Failed", failures=failures))
    assert [failure.template_name for failure in run.failures] == ["trainer"]


def test_all_bad_fields_are_named_in_one_error() -> None:
    with pytest.raises(InvalidFields) as caught:
        read_run(run_text(status="Running", workflow_uid="", created_at="yesterday"))
    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "--status",
        "--workflow-uid",
        "--created-at",
    ]


def test_timestamps_are_rfc3339_with_an_offset() -> None:
    assert parse_timestamp("2026-11-26T10:00:00Z") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_timestamp("2026-11-26T12:00:00.123456789+02:00") == datetime(
        2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC
    )
    for bad in ("2026-11-26", "2026-11-26T10:00:00", "2026-13-01T00:00:00Z", "{{x}}"):
        with pytest.raises(ValueError, match=r"RFC 3339|valid|unresolved"):
            parse_timestamp(bad)


def test_a_retried_exit_step_is_recognised_by_its_display_name() -> None:
    """Argo leaves templateName empty on templateRef nodes; the step name remains."""
    attempt = {"displayName": "publish-run-completion(0)", "templateName": "", "phase": "Error"}
    failures = json.dumps(json.dumps([*ARGO_FAILURES, attempt]))
    text = run_text(status="Failed", failures=failures)
    assert len(read_run(text).failures) == 2
    wired = RunText(**{**text.__dict__, "exit_templates": ("publish", "publish-run-completion")})
    assert [failure.display_name for failure in read_run(wired).failures] == ["Trainer"]


def test_a_user_step_displayed_like_an_exit_template_stays_a_failure() -> None:
    step = {"displayName": "publish", "templateName": "publish-model", "phase": "Failed"}
    run = read_run(run_text(status="Failed", failures=json.dumps(json.dumps([step]))))
    assert [failure.template_name for failure in run.failures] == ["publish-model"]
