"""A real subscriber receives the event in each content and delivery mode."""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import unquote

import pytest
from cloudevents.core.formats.json import JSONFormat
from conftest import base_args, run_handler

from exit_handler.event import EVENT_TYPE
from exit_handler.testing import NatsServer, Subscriber, add_stream, stream_messages

SEED_DATA_KEYS = ["provider", "status", "pipelineName", "servingModelArtifacts", "artifacts"]


@pytest.mark.parametrize("delivery", ["auto", "core"])
def test_binary_mode_core_delivery_field_by_field(
    nats_server: NatsServer, subject: str, delivery: str
) -> None:
    uid = "0f5d8d7e-uid"
    args = [
        *base_args(subject, nats_server.url, uid=uid),
        f"--delivery={delivery}",
        "--created-at=2026-11-26T10:00:00Z",
        "--run-id=run-42",
        "--run-name=nightly",
        "--run-configuration-name=penguin-nightly",
        "--output-parameter=accuracy=0.93",
        "--output-parameter=note=a=b",
    ]
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(*args)
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    assert len(received) == 1
    headers, body = received[0].headers, json.loads(received[0].data)
    event_id = headers["ce-id"]
    assert headers["Nats-Msg-Id"] == event_id
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-source"] == "kfp"
    assert headers["ce-type"] == EVENT_TYPE
    assert headers["ce-subject"] == "penguin-pipeline"
    assert headers["ce-datacontenttype"] == "application/json"
    assert headers["Content-Type"] == "application/json"
    observed = datetime.fromisoformat(unquote(headers["ce-time"]))
    assert observed.utcoffset() is not None
    assert list(body)[:5] == SEED_DATA_KEYS
    assert body == {
        "provider": "kfp",
        "status": "succeeded",
        "pipelineName": "penguin-pipeline",
        "servingModelArtifacts": [],
        "artifacts": [],
        "runId": "run-42",
        "runName": "nightly",
        "runConfigurationName": "penguin-nightly",
        "workflowName": "penguin-pipeline-x7k2p",
        "namespace": "kubeflow",
        "runStartTime": "2026-11-26T10:00:00Z",
        "runEndTime": unquote(headers["ce-time"]),
        "outputParameters": {"accuracy": "0.93", "note": "a=b"},
    }
    assert "core delivery" in result.stderr  # auto: no stream covers the subject
    assert event_id in result.stderr


def test_structured_mode_reads_back_with_the_sdk(nats_server: NatsServer, subject: str) -> None:
    args = [*base_args(subject, nats_server.url), "--content-mode=structured", "--provider=tfx"]
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(*args)
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    assert len(received) == 1
    message = received[0]
    assert message.headers["Content-Type"] == "application/cloudevents+json"
    event = JSONFormat().read(None, message.data)
    assert message.headers["Nats-Msg-Id"] == event.get_id()
    assert event.get_type() == EVENT_TYPE
    assert event.get_source() == "tfx"
    assert event.get_subject() == "penguin-pipeline"
    assert event.get_datacontenttype() == "application/json"
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["provider"] == "tfx"
    assert data["status"] == "succeeded"
    # What a Sensor filtering on body.data.status reads:
    assert json.loads(message.data)["data"]["status"] == "succeeded"


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_jetstream_rerun_stores_the_event_once(
    nats_server: NatsServer, subject: str, mode: str
) -> None:
    stream = "S" + subject.replace(".", "_").upper()
    add_stream(nats_server.url, stream, subject)
    args = [*base_args(subject, nats_server.url, uid="uid-rerun"), f"--content-mode={mode}"]
    with Subscriber(nats_server.url, subject) as subscriber:
        first = run_handler(*args)
        second = run_handler(*args, "--delivery=jetstream")
        live = subscriber.wait_for(2, timeout=1)
    assert first.status == 0, first.stderr
    assert second.status == 0, second.stderr
    assert f"jetstream delivery, stream {stream} seq 1" in first.stderr
    assert "duplicate: already stored" in second.stderr
    stored = stream_messages(nats_server.url, stream)
    assert len(stored) == 1
    headers = stored[0].headers
    assert headers["Nats-Msg-Id"] == live[0].headers["Nats-Msg-Id"]
    # Core subscribers see each publish: they de-duplicate on the id, as docs/events.md says.
    assert {message.headers["Nats-Msg-Id"] for message in live} == {headers["Nats-Msg-Id"]}


def test_jetstream_delivery_without_a_stream_is_bad_configuration(
    nats_server: NatsServer, subject: str
) -> None:
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(*base_args(subject, nats_server.url), "--delivery=jetstream")
        received = subscriber.wait_for(1, timeout=0.5)
    assert result.status == 2
    assert f"no JetStream stream covers subject '{subject}'" in result.stderr
    assert received == []


def test_auto_without_jetstream_on_the_server_publishes_core(subject: str) -> None:
    with NatsServer(jetstream=False) as plain, Subscriber(plain.url, subject) as subscriber:
        result = run_handler(*base_args(subject, plain.url))
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    assert "core delivery" in result.stderr
    assert len(received) == 1


def test_failed_run_carries_failures(nats_server: NatsServer, subject: str) -> None:
    failures = [
        {
            "displayName": "Trainer",
            "message": "OOMKilled (exit code 137)",
            "templateName": "trainer",
            "phase": "Failed",
            "podName": "p-1",
            "finishedAt": "2026-11-26T10:41:00Z",
        },
        # A failed earlier attempt of our own step, as Argo v3.5+ lists it.
        {"displayName": "publish-run-completion(0)", "templateName": "publish", "phase": "Error"},
    ]
    args = [
        *base_args(subject, nats_server.url, status="Error"),
        "--failures=" + json.dumps(json.dumps(failures)),
    ]
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(*args)
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    body = json.loads(received[0].data)
    assert body["status"] == "failed"
    assert body["failures"] == [
        {
            "displayName": "Trainer",
            "templateName": "trainer",
            "phase": "Failed",
            "message": "OOMKilled (exit code 137)",
            "finishedAt": "2026-11-26T10:41:00Z",
        }
    ]


def test_retried_pod_sends_the_same_id(nats_server: NatsServer, subject: str) -> None:
    """Argo lists the failed first attempt of the exit step itself; the id ignores it."""
    attempt = {"displayName": "publish-run-completion(0)", "phase": "Failed", "message": "x"}
    own = json.dumps(json.dumps([attempt]))
    args = base_args(subject, nats_server.url, uid="uid-retry")
    with Subscriber(nats_server.url, subject) as subscriber:
        assert run_handler(*args, "--failures=null").status == 0
        assert run_handler(*args, f"--failures={own}").status == 0
        received = subscriber.wait_for(2)
    assert len(received) == 2
    assert received[0].headers["ce-id"] == received[1].headers["ce-id"]


def test_dry_run_prints_the_wire_form_and_publishes_nothing(
    nats_server: NatsServer, subject: str
) -> None:
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(*base_args(subject, nats_server.url), "--dry-run")
        received = subscriber.wait_for(1, timeout=0.5)
    assert result.status == 0, result.stderr
    assert received == []
    printed = result.dry_run
    assert printed["subject"] == subject
    headers = printed["headers"]
    assert isinstance(headers, dict)
    assert headers["ce-id"] == headers["Nats-Msg-Id"]
    payload = printed["payload"]
    assert isinstance(payload, str)
    assert json.loads(payload)["status"] == "succeeded"


def test_every_option_also_comes_from_the_environment(
    nats_server: NatsServer, subject: str
) -> None:
    env = {
        "EXIT_HANDLER_STATUS": "Failed",
        "EXIT_HANDLER_WORKFLOW_NAME": "wf-env",
        "EXIT_HANDLER_WORKFLOW_UID": "uid-env",
        "EXIT_HANDLER_PIPELINE_NAME": "penguin-pipeline",
        "EXIT_HANDLER_NATS_URL": nats_server.url,
        "EXIT_HANDLER_SUBJECT": subject,
        "EXIT_HANDLER_CONTENT_MODE": "structured",
        "EXIT_HANDLER_OUTPUT_PARAMETER": 'a=1,metrics={"x":1,"y":2},b=2',
        "EXIT_HANDLER_TIMEOUT": "9",
        "EXIT_HANDLER_DELIVERY": "core",
        "EXIT_HANDLER_RUN_ID": "run-from-env",
        "EXIT_HANDLER_ARTIFACTS": "[]",
        "EXIT_HANDLER_DRY_RUN": "true",
        "EXIT_HANDLER_PROVIDER": "from-env",
    }
    # The command line wins; an empty value counts as not given.
    result = run_handler("publish", "--provider=from-argv", "--namespace=", env=env)
    assert result.status == 0, result.stderr
    event = JSONFormat().read(None, str(result.dry_run["payload"]))
    data = event.get_data()
    assert isinstance(data, dict)
    assert event.get_source() == "from-argv"
    assert data["status"] == "failed"
    assert data["workflowName"] == "wf-env"
    assert data["outputParameters"] == {"a": "1", "metrics": '{"x":1,"y":2}', "b": "2"}
    assert data["runId"] == "run-from-env"
    assert "namespace" not in data


def test_json_logs_are_one_object_a_line(nats_server: NatsServer, subject: str) -> None:
    result = run_handler(*base_args(subject, nats_server.url), "--log-format=json")
    assert result.status == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines[-1]["level"] == "info"
    assert "published succeeded event" in lines[-1]["message"]
