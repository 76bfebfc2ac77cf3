"""The event model and its wire forms, without a server."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cloudevents.core.formats.json import JSONFormat
from conftest import run_handler

from exit_handler.errors import BadInput
from exit_handler.event import Artifact, build_event, event_data, event_id
from exit_handler.run import Failure, Run
from exit_handler.wire import Message, encode, fit, json_bytes, percent_encode

OBSERVED = datetime(2026, 11, 26, 10, 42, 13, tzinfo=UTC)
RUN = Run(
    status="failed",
    pipeline_name="penguin-pipeline",
    workflow_name="penguin-pipeline-x7k2p",
    workflow_uid="uid-1",
    namespace="kubeflow",
    created_at=datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
    failures=(Failure("Trainer", "trainer", "Failed", "OOMKilled", "2026-11-26T10:41:00Z"),),
)


def data(run: Run = RUN, **kwargs: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "provider": "kfp",
        "observed_at": OBSERVED,
        "serving_model_artifacts": [],
        "artifacts": [],
    }
    arguments.update(kwargs)
    return event_data(run, **arguments)  # type: ignore[arg-type]


def test_id_is_stable_for_the_same_outcome_and_new_for_another() -> None:
    reordered = replace(RUN, failures=(*RUN.failures, Failure("Evaluator", "eval", "Error")))
    swapped = replace(reordered, failures=tuple(reversed(reordered.failures)))
    assert event_id(RUN) == event_id(replace(RUN, run_name="other", namespace=None))
    assert event_id(reordered) == event_id(swapped)  # sorted: Argo's order does not matter
    assert event_id(RUN) != event_id(reordered)
    assert event_id(RUN) != event_id(replace(RUN, workflow_uid="uid-2"))
    assert event_id(RUN) != event_id(replace(RUN, status="succeeded"))
    # finishedAt is not part of the outcome: a retried pod sees the same failures.
    retried = replace(RUN, failures=(replace(RUN.failures[0], finished_at="later"),))
    assert event_id(RUN) == event_id(retried)


def test_data_keeps_the_seed_keys_first_and_omits_unknown_extras() -> None:
    payload = data(serving_model_artifacts=[Artifact("a", "gs://b/p")])
    assert list(payload)[:5] == [
        "provider",
        "status",
        "pipelineName",
        "servingModelArtifacts",
        "artifacts",
    ]
    assert payload["servingModelArtifacts"] == [{"name": "a", "location": "gs://b/p"}]
    assert "runId" not in payload
    assert "outputParameters" not in payload
    assert None not in payload.values()
    assert payload["runStartTime"] == "2026-11-26T10:00:00Z"
    assert payload["runEndTime"] == "2026-11-26T10:42:13Z"


def test_data_carries_every_known_extra_under_its_documented_key() -> None:
    run = replace(
        RUN,
        run_id="run-1",
        run_name="penguin-nightly",
        run_configuration_name="penguin-daily",
        output_parameters={"accuracy": "0.93"},
    )
    payload = data(run, overlapping=["Trainer", "Pusher"])
    assert payload == {
        "provider": "kfp",
        "status": "failed",
        "pipelineName": "penguin-pipeline",
        "servingModelArtifacts": [],
        "artifacts": [],
        "runId": "run-1",
        "runName": "penguin-nightly",
        "runConfigurationName": "penguin-daily",
        "workflowName": "penguin-pipeline-x7k2p",
        "namespace": "kubeflow",
        "runStartTime": "2026-11-26T10:00:00Z",
        "runEndTime": "2026-11-26T10:42:13Z",
        "failures": [RUN.failures[0].to_data()],
        "outputParameters": {"accuracy": "0.93"},
        "overlappingComponents": ["Pusher", "Trainer"],
    }


def test_failures_only_for_failed_runs_first_twenty_messages_cut() -> None:
    many = tuple(Failure(f"step-{i}", "t", "Failed", "x" * 5000) for i in range(30))
    payload = data(replace(RUN, failures=many))
    failures = payload["failures"]
    assert isinstance(failures, list)
    assert len(failures) == 20
    assert failures[0] == {
        "displayName": "step-0",
        "templateName": "t",
        "phase": "Failed",
        "message": "x" * 1000,
    }
    assert "failures" not in data(replace(RUN, status="succeeded"))
    # Trimmed to none for max_payload: no key rather than an empty list that reads as "none".
    assert "failures" not in data(failure_limit=0)
    assert data(replace(RUN, failures=many), failure_limit=1)["failures"] == failures[:1]


def test_binary_mode_headers_and_payload() -> None:
    event = build_event(RUN, data(), source="kfp", observed_at=OBSERVED)
    message = encode(event, "events", "binary")
    assert message.headers == {
        "ce-specversion": "1.0",
        "ce-id": event_id(RUN),
        "ce-source": "kfp",
        "ce-type": "org.kubeflow.pipelines.run-completion",
        "ce-datacontenttype": "application/json",
        "ce-subject": "penguin-pipeline",
        "ce-time": "2026-11-26T10:42:13Z",
        "Content-Type": "application/json",
        "Nats-Msg-Id": event_id(RUN),
    }
    assert json.loads(message.payload) == data()


def test_structured_mode_reads_back_with_the_sdk() -> None:
    event = build_event(RUN, data(), source="kfp", observed_at=OBSERVED)
    message = encode(event, "events", "structured")
    assert message.headers == {
        "Content-Type": "application/cloudevents+json",
        "Nats-Msg-Id": event_id(RUN),
    }
    read = JSONFormat().read(None, message.payload)
    assert read.get_id() == event_id(RUN)
    assert read.get_time() == OBSERVED
    assert read.get_subject() == "penguin-pipeline"
    assert read.get_data() == data()


def test_header_values_are_percent_encoded_as_the_binding_requires() -> None:
    assert percent_encode('a b"%ü') == "a%20b%22%25%C3%BC"
    assert percent_encode("plain-text:/?") == "plain-text:/?"
    assert unquote(percent_encode("pipeline ünïcode \n")) == "pipeline ünïcode \n"
    # The printable ASCII range is kept whole, its ends included; only '"' and '%' escape.
    printable = "".join(map(chr, range(0x21, 0x7F)))
    assert percent_encode(printable) == printable.replace("%", "%25").replace('"', "%22")
    assert percent_encode("\x20\x7f") == "%20%7F"


def test_fit_drops_failures_until_the_message_fits() -> None:
    many = tuple(Failure(f"step-{i}", "t", "Failed", "m" * 900) for i in range(20))
    run = replace(RUN, failures=many)

    def render(limit: int):  # type: ignore[no-untyped-def]
        payload = data(run, failure_limit=limit)
        return encode(build_event(run, payload, source="kfp", observed_at=OBSERVED), "e", "binary")

    full = render(20).size()
    fitted = fit(render, full - 1, 20)
    assert fitted.size() <= full - 1
    assert len(json.loads(fitted.payload)["failures"]) == 19
    assert fitted.headers["Nats-Msg-Id"] == event_id(run)  # the id counts every failure
    assert fit(render, full, 20).size() == full
    # Room for none: the event goes without the key; one byte less is bad input.
    bare = render(0).size()
    assert "failures" not in json.loads(fit(render, bare, 20).payload)
    with pytest.raises(BadInput, match="even without failures"):
        fit(render, bare - 1, 20)


# --- the id's test vectors: part of the contract (docs/event-id-vectors.json) -------------

VECTORS = json.loads((Path(__file__).parent.parent / "docs" / "event-id-vectors.json").read_text())
OWN = ("run-completion-exit-handler", "publish-run-completion")


def documented_id(vector: dict[str, Any]) -> str:
    """The id as docs/events.md defines it, computed without the project's code."""
    status = "succeeded" if vector["status"] == "Succeeded" else "failed"
    failures = sorted(
        [f["displayName"], f["templateName"], f["phase"], f["message"]]
        for f in vector["failures"] or []
        if f["templateName"] not in OWN and re.sub(r"\(\d+\)$", "", f["displayName"]) not in OWN
    )
    canonical = json.dumps(failures, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    namespace = uuid.UUID("6f1c3e2a-8d4b-5c7e-9a10-4b2f6d8e0c31")
    run = vector.get("runId") or vector["workflowUid"]
    return str(uuid.uuid5(namespace, f"{run}/{status}/{digest}"))


@pytest.mark.parametrize("vector", VECTORS, ids=[v["description"] for v in VECTORS])
def test_the_published_id_is_the_vectors(vector: dict[str, Any]) -> None:
    failures = vector["failures"]
    result = run_handler(
        "publish",
        "--dry-run",
        f"--status={vector['status']}",
        "--workflow-name=penguin-pipeline-x7k2p",
        f"--workflow-uid={vector['workflowUid']}",
        f"--run-id={vector.get('runId', '')}",
        "--pipeline-name=penguin-pipeline",
        "--failures=" + (json.dumps(json.dumps(failures)) if failures is not None else "null"),
    )
    assert result.status == 0, result.stderr
    assert json.loads(result.stdout)["headers"]["ce-id"] == vector["id"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["description"] for v in VECTORS])
def test_the_documented_algorithm_gives_the_vectors(vector: dict[str, Any]) -> None:
    assert documented_id(vector) == vector["id"]


def test_the_vectors_cover_what_consumers_must_reproduce() -> None:
    ids = [v["id"] for v in VECTORS]
    assert len(set(ids)) >= 5  # distinct outcomes, and the cases that share an id
    assert any(not str(v["failures"]).isascii() for v in VECTORS)
    assert any(v.get("runId") for v in VECTORS)


def test_a_list_that_arrived_cut_hashes_the_text_cut() -> None:
    """Each exit pod keeps another subset of a cut list: the id names the cut, as documented."""
    namespace = uuid.UUID("6f1c3e2a-8d4b-5c7e-9a10-4b2f6d8e0c31")
    cut = replace(RUN, failures_cut=True)
    assert event_id(cut) == str(uuid.uuid5(namespace, "uid-1/failed/cut"))
    assert event_id(replace(cut, failures=())) == event_id(cut)


def test_size_counts_the_header_block_as_the_server_does() -> None:
    """`NATS/1.0␍␊`, each `key: value␍␊`, a blank line, then the payload: what HPUB sends."""
    message = Message("events", {"ce-id": "1", "Nats-Msg-Id": "1"}, b"{}")
    assert message.size() == len(b"NATS/1.0\r\nce-id: 1\r\nNats-Msg-Id: 1\r\n\r\n{}")


def test_the_payload_is_never_json_that_json_forbids() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        json_bytes({"accuracy": float("nan")})


def test_the_payload_is_compact_utf8_json() -> None:
    """No spaces, non-ASCII as UTF-8 bytes (not `\\u` escapes): the bytes max_payload counts."""
    run = replace(RUN, failures=(Failure("Trainer", "trainer", "Failed", "échec: 🫠"),))
    event = build_event(run, data(run), source="kfp", observed_at=OBSERVED)
    payload = encode(event, "e", "binary").payload
    assert "échec: 🫠".encode() in payload
    assert b", " not in payload
    assert b'":"' in payload
