"""The event's JSON Schema: printed by `exit-handler schema`, met by every event we produce.

conftest.py checks every message `publish` builds in-process and `Subscriber` every message
it receives (`exit_handler.testing.check_message`); here the check itself must fail on
events that break the contract, and the shipped (open) schema must accept keys added later.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import base_args, run_handler
from jsonschema import Draft202012Validator

from exit_handler.cli import main
from exit_handler.testing import check_message

FAILURES = [{"displayName": "Trainer", "templateName": "trainer", "phase": "Failed"}]


def printed(*args: str) -> dict[str, Any]:
    stdout, stderr = io.StringIO(), io.StringIO()
    assert main(["schema", *args], environ={}, stdout=stdout, stderr=stderr) == 0, stderr
    document: dict[str, Any] = json.loads(stdout.getvalue())
    return document


@pytest.mark.parametrize("mode", [[], ["--mode", "binary"], ["--mode", "structured"]])
def test_the_printed_schema_is_draft_2020_12(mode: list[str]) -> None:
    document = printed(*mode)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(document)


def test_an_unknown_mode_is_bad_input() -> None:
    stderr = io.StringIO()
    assert main(["schema", "--mode", "avro"], environ={}, stderr=stderr) == 2
    assert "--mode" in stderr.getvalue()


def dry_run(mode: str, status: str = "Succeeded") -> tuple[dict[str, str], dict[str, Any]]:
    args = [*base_args("events", "nats://127.0.0.1:1", status=status), "--dry-run"]
    args += ["--content-mode", mode, "--run-id", "run-1", "--created-at", "2026-11-26T10:00:00Z"]
    if status == "Failed":
        args.append("--failures=" + json.dumps(json.dumps(FAILURES)))
    result = run_handler(*args)
    assert result.status == 0, result.stderr
    message = json.loads(result.stdout)
    return message["headers"], json.loads(message["payload"])


def data_of(mode: str, payload: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = payload["data"] if mode == "structured" else payload
    return data


Mutation = Callable[[dict[str, str], dict[str, Any]], None]
MUTATIONS: dict[str, Mutation] = {
    "status not in the enum": lambda h, d: d.update(status="done"),
    "a required key missing": lambda h, d: d.pop("provider"),
    "artifacts null": lambda h, d: d.update(servingModelArtifacts=None),
    "an empty optional key": lambda h, d: d.update(runName=""),
    "a location outside GCS": lambda h, d: d.update(
        artifacts=[{"name": "model", "location": "s3://bucket/model"}]
    ),
    "failures on a succeeded run": lambda h, d: d.update(failures=FAILURES),
    "a time with an offset": lambda h, d: d.update(runStartTime="2026-11-26T10:00:00+01:00"),
    "a wrong type": lambda h, d: d.update(outputParameters={"accuracy": 0.93}),
    "a key the schema does not list": lambda h, d: d.update(pipelineVersion="3"),
    "Nats-Msg-Id not the id": lambda h, d: h.update({"Nats-Msg-Id": "x"}),
}


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_events_we_produce_pass(mode: str) -> None:
    for status in ("Succeeded", "Failed"):
        headers, payload = dry_run(mode, status)
        check_message(headers, json.dumps(payload).encode())


@pytest.mark.parametrize("name", list(MUTATIONS))
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_mutated_event_fails(mode: str, name: str) -> None:
    headers, payload = dry_run(mode)
    MUTATIONS[name](headers, data_of(mode, payload))
    with pytest.raises(AssertionError, match="breaks its schema"):
        check_message(headers, json.dumps(payload).encode())


def test_failures_are_bounded() -> None:
    headers, payload = dry_run("binary", "Failed")
    too_many = copy.deepcopy(payload)
    too_many["failures"] = FAILURES * 21
    with pytest.raises(AssertionError, match="failures"):
        check_message(headers, json.dumps(too_many).encode())
    too_long = copy.deepcopy(payload)
    too_long["failures"] = [{**FAILURES[0], "message": "x" * 1001}]
    with pytest.raises(AssertionError, match="failures/0/message"):
        check_message(headers, json.dumps(too_long).encode())


def test_the_shipped_schema_accepts_a_key_added_later() -> None:
    """Additive changes must not break a consumer validating with today's schema."""
    _, payload = dry_run("structured")
    payload["data"]["pipelineVersion"] = "3"
    payload["dataschema"] = "urn:example"
    assert list(Draft202012Validator(printed("--mode", "structured")).iter_errors(payload)) == []
    assert list(Draft202012Validator(printed()).iter_errors(payload["data"])) == []


def test_a_reader_that_goes_away_is_not_reported_as_a_bug() -> None:
    """`exit-handler schema | head -1`: the pipe closes before the schema is written."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", "from exit_handler.cli import run; run()", "schema"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert b"internal error" not in stderr
    assert b"Traceback" not in stderr
