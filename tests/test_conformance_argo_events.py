"""Argo Events, the consumer: its own code decides what a Sensor receives and when it fires.

For each release line (the newest v1.9.x and v1.8.x the Go proxy serves), the harness in
``conformance/argo-events-<version>/`` runs argo-events' NATS EventSource listener
(``EventListener.StartListening``) with the spec of ``workflow-templates/events/eventsource.yaml``
pointed at a test nats-server, and hands each event it dispatches through the same steps as the
EventSource adaptor and the Sensor (a CloudEvent on the bus, back into the Sensor's event). Every
event here is published by ``exit-handler publish``. The harness then evaluates the Sensors of
``workflow-templates/events/`` and the seed's Sensor with ``dependencies.Filter``, and their
trigger parameters with ``sensors/triggers`` (``ConstructPayload`` for http,
``ApplyResourceParameters`` for argoWorkflow), as the Sensor does before it acts. For the
backstop's resource EventSource it also says whether its informer would deliver a Workflow at
all: ``ValidateEventSource``, the label selector ``LabelSelector`` builds (as text, parsed as the
API server parses it) and its event types.

The demo's Python view of what a Sensor receives (``as_event_source`` in demo/run_demo.py) must
equal the real listener's event field by field in every scenario.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

import pytest
import yaml
from conftest import base_args, run_handler, run_starts_now, upload_model
from go_harness import harness, run_harness

from exit_handler.inject import INJECTED_LABEL
from exit_handler.testing import FakeGcsServer, NatsServer, Received, Subscriber
from exit_handler.workflow import PUBLISHED

pytestmark = pytest.mark.conformance

REPO = Path(__file__).parent.parent
EVENTS = REPO / "workflow-templates" / "events"
BACKSTOP = REPO / "workflow-templates" / "backstop"
V19, V18 = "argo-events-v1.9.11", "argo-events-v1.8.1"
# The CloudEvent id the EventSource gives each event: 1.9 prints the UUID's 16 bytes in hex,
# 1.8 the hex of its 36-character text. A new one per message: never de-duplicate on it.
EVENT_ID = {V19: re.compile(r"[0-9a-f]{32}"), V18: re.compile(r"[0-9a-f]{72}")}
CE_TYPE = "org.kubeflow.pipelines.run-completion"
PUSHED = "penguin-pipeline/Pusher/pushed_model"

# The seed's Sensor, verbatim from the original brief: unanchored filters, binary mode.
SEED_SENSOR = """\
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: penguin-pipeline-model-update
spec:
  dependencies:
    - name: run-completion
      eventSourceName: run-completion
      eventName: run-completion
      filters:
        data:
          - path: body.status
            type: string
            value: ["succeeded"]
          - path: body.pipelineName
            type: string
            value: ["penguin-pipeline"]
"""
SENSORS = {
    "seed": SEED_SENSOR,
    "binary": (EVENTS / "sensor.yaml").read_text(),
    "structured": (EVENTS / "sensor-structured.yaml").read_text(),
}


def python_view(message: Received) -> dict[str, Any]:
    """The demo's view of what the NATS EventSource hands a Sensor."""
    if str(REPO / "demo") not in sys.path:
        sys.path.insert(0, str(REPO / "demo"))
    from run_demo import as_event_source

    return as_event_source(message)


def nats_source(text: str) -> tuple[str, str, dict[str, Any]]:
    """(EventSource name, event name, spec) of the one NATS event in an EventSource."""
    source = yaml.safe_load(text)
    ((name, spec),) = source["spec"]["nats"].items()
    return source["metadata"]["name"], name, spec


EVENT_SOURCE = (EVENTS / "eventsource.yaml").read_text()
SUBJECT = nats_source(EVENT_SOURCE)[2]["subject"]


class Listener:
    """The harness in listen mode: argo-events' NATS listener, one JSON line per event."""

    def __init__(self, line: str, url: str, log: Path, event_source: str = EVENT_SOURCE) -> None:
        self.line, self.url, self.log, self.event_source = line, url, log, event_source
        self.ready: dict[str, Any] = {}
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    def __enter__(self) -> Listener:
        binary = harness(self.line)
        self._log = self.log.open("w")
        self._proc = subprocess.Popen(
            [str(binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self._proc.stdin is not None
        request = {"mode": "listen", "eventSource": self.event_source, "url": self.url}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.ready = self._next(60)
            assert self.ready.get("ready"), self.ready
        except BaseException:
            self.__exit__()  # pytest.fail is an exception too: never leave the process behind
            raise
        return self

    def __exit__(self, *_: object) -> None:
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.close()  # the harness cancels the listener's context and exits
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._log is not None:
            self._log.close()

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for text in self._proc.stdout:
            self._lines.put(json.loads(text))
        self._lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            item = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.line}: no event within {timeout} s; log:\n{self.log_tail()}")
        if item is None:
            pytest.fail(f"{self.line}: the listener exited; log:\n{self.log_tail()}")
        return item

    def next_event(self, timeout: float = 10) -> dict[str, Any]:
        """The next event dispatched: {"bus": CloudEvent JSON, "sensor": {context, data}}."""
        event: dict[str, Any] = self._next(timeout)["event"]
        return event

    def drain(self) -> list[dict[str, Any]]:
        """Events nobody asked for (a failed test's leftovers), so the next test starts clean."""
        stray = []
        while not self._lines.empty():
            item = self._lines.get_nowait()
            if item is not None:
                stray.append(item)
        return stray

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


@dataclass
class Observed:
    """One publish: what argo-events dispatched and what a plain NATS subscriber received."""

    real: dict[str, Any]  # {"bus": ..., "sensor": {"context": ..., "data": "<listener JSON>"}}
    message: Received

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.real["sensor"]["data"])
        return data

    @property
    def view(self) -> dict[str, Any]:
        return python_view(self.message)


def publish(listener: Listener, *args: str) -> Observed:
    """`exit-handler publish ARGS` with the listener and a plain subscriber on the subject."""
    listener.drain()
    with Subscriber(listener.url, SUBJECT) as subscriber:
        result = run_handler(*args)
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    (message,) = received
    return Observed(listener.next_event(), message)


def publish_raw(url: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
    """One message that the exit handler would never send."""

    async def send() -> None:
        import nats

        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            await nc.publish(SUBJECT, payload, headers=headers)
            await nc.flush()
        finally:
            await nc.close()

    asyncio.run(send())


@dataclass(frozen=True)
class Scenario:
    mode: str
    status: str
    pipeline: str = "penguin-pipeline"
    model: bool = False


ODD_NAME = "pingüino <pipeline> & 1 %"  # percent-encoded in ce-subject, \u003c in Go's JSON
SCENARIOS = {
    f"{mode}-{name}": Scenario(mode, status, pipeline, model)
    for mode in ("binary", "structured")
    for name, status, pipeline, model in (
        ("succeeded-model", "Succeeded", "penguin-pipeline", True),
        ("succeeded-nomodel", "Succeeded", "penguin-pipeline", False),
        ("failed", "Failed", "penguin-pipeline", False),
        ("succeeded-v2", "Succeeded", "penguin-pipeline-v2", False),
        ("succeeded-odd-name", "Succeeded", ODD_NAME, False),
    )
}
FAILURES = [
    {
        "displayName": "Trainer",
        "templateName": "trainer",
        "phase": "Failed",
        "message": "OOMKilled (exit code 137)",
        "finishedAt": "2026-11-26T10:40:00Z",
    }
]


@pytest.fixture(scope="module", params=[V19, V18])
def line(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def nats_url(line: str) -> Iterator[str]:
    with NatsServer(jetstream=False) as server:
        yield server.url


@pytest.fixture(scope="module")
def listener(
    line: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listener]:
    log = tmp_path_factory.mktemp("argo-events") / f"{line}.log"
    with Listener(line, nats_url, log) as running:
        yield running


@pytest.fixture(scope="module")
def model(gcs_server: FakeGcsServer) -> tuple[str, str, str]:
    """(pipeline root, created-at, the location this run pushed) in a fresh bucket."""
    bucket = f"root-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(bucket)
    created_at = run_starts_now()
    return (
        f"gs://{bucket}/penguin-pipeline",
        created_at,
        upload_model(gcs_server, bucket, PUSHED, "7"),
    )


@pytest.fixture(scope="module")
def observed(
    listener: Listener, gcs_server: FakeGcsServer, model: tuple[str, str, str]
) -> dict[str, Observed]:
    root, created_at, _ = model
    seen = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
        for name, scenario in SCENARIOS.items():
            args = [
                *base_args(SUBJECT, listener.url, status=scenario.status),
                f"--pipeline-name={scenario.pipeline}",
                f"--content-mode={scenario.mode}",
            ]
            if scenario.model:
                args += [f"--pipeline-root={root}", f"--created-at={created_at}", "--clock-skew=0"]
            if scenario.status == "Failed":
                args.append("--failures=" + json.dumps(json.dumps(FAILURES)))
            seen[name] = publish(listener, *args)
    return seen


def evaluate(line: str, events: list[dict[str, Any]], sensors: list[str]) -> Any:
    return run_harness(line, {"mode": "evaluate", "events": events, "sensors": sensors})


@pytest.fixture(scope="module")
def verdicts(line: str, observed: dict[str, Observed]) -> dict[str, dict[str, Any]]:
    """Every Sensor on every observed event: {scenario: {sensor: result}}."""
    names = list(observed)
    answer = evaluate(
        line, [{"bus": observed[n].real["bus"]} for n in names], list(SENSORS.values())
    )
    # The bus round trip in evaluate mode gives back the event the listener's Sensor side saw.
    assert answer["events"] == [observed[n].real["sensor"] for n in names]
    return {
        name: dict(zip(SENSORS, answer["results"][i], strict=True)) for i, name in enumerate(names)
    }


def fires(result: dict[str, Any]) -> bool:
    assert result["error"] == "", result["error"]  # the Sensor itself parsed (strictly)
    return all(dependency["fires"] for dependency in result["dependencies"])


def differences(real: Any, view: Any, path: str = "") -> list[str]:
    """Field paths where the Python view differs from the real listener's event."""
    if isinstance(real, dict) and isinstance(view, dict):
        return [
            found
            for key in sorted(set(real) | set(view))
            for found in (
                differences(real[key], view[key], f"{path}.{key}".lstrip("."))
                if key in real and key in view
                else [
                    f"{path}.{key}".lstrip(".") + (": only real" if key in real else ": only view")
                ]
            )
        ]
    if isinstance(real, list) and isinstance(view, list) and len(real) == len(view):
        return [
            d
            for i, (r, v) in enumerate(zip(real, view, strict=True))
            for d in differences(r, v, f"{path}.{i}")
        ]
    return [] if real == view and type(real) is type(view) else [f"{path}: {real!r} != {view!r}"]


def bus_event(data: dict[str, Any], source: str = "run-completion") -> dict[str, Any]:
    """A CloudEvent as the bus carries it, with DATA as the listener's JSON: for mutations."""
    return {
        "bus": {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": source,
            "type": "nats",
            "subject": source,
            "datacontenttype": "application/json",
            "time": "2026-11-26T10:42:14Z",
            "data": data,
        }
    }


# ---------------------------------------------------------------------------- the listener


def test_the_listener_runs_the_shipped_eventsource(listener: Listener) -> None:
    name, event_name, spec = nats_source(EVENT_SOURCE)
    assert spec["jsonBody"] is True
    assert (listener.ready["eventSourceName"], listener.ready["eventName"]) == (name, event_name)
    # The token is read from /argo-events/secrets/NAME/KEY, a pod's volume: the harness drops
    # auth (the test server has none) and says what it dropped, as the YAML gave it.
    assert listener.ready["droppedAuth"] == spec["auth"]


def test_the_python_view_agrees_with_the_real_listener_on_every_field(
    observed: dict[str, Observed],
) -> None:
    found = {name: differences(seen.data, seen.view) for name, seen in observed.items()}
    assert not {name: diff for name, diff in found.items() if diff}
    assert set(observed["binary-succeeded-nomodel"].data) == {"subject", "header", "body"}


def test_what_reaches_the_sensor_binary_and_structured(
    observed: dict[str, Observed], model: tuple[str, str, str]
) -> None:
    binary, structured = observed["binary-succeeded-model"].data, observed["structured-failed"].data
    assert binary["subject"] == SUBJECT
    assert binary["header"]["ce-type"] == [CE_TYPE]
    assert binary["header"]["ce-id"] == binary["header"]["Nats-Msg-Id"]
    assert binary["header"]["Content-Type"] == ["application/json"]
    assert binary["body"]["servingModelArtifacts"][0]["location"] == model[2]
    assert (binary["body"]["status"], binary["body"]["pipelineName"]) == (
        "succeeded",
        "penguin-pipeline",
    )
    assert structured["header"]["Content-Type"] == ["application/cloudevents+json"]
    assert set(structured["header"]) == {"Content-Type", "Nats-Msg-Id"}
    assert structured["body"]["type"] == CE_TYPE
    assert structured["body"]["data"]["status"] == "failed"
    assert structured["body"]["data"]["failures"][0]["templateName"] == "trainer"
    odd = observed["binary-succeeded-odd-name"].data
    assert odd["body"]["pipelineName"] == ODD_NAME
    assert [unquote(value) for value in odd["header"]["ce-subject"]] == [ODD_NAME]
    # The listener re-encodes the body with Go's encoder (compact, <>& as \u003c…): same values.
    assert "\\u003cpipeline\\u003e" in observed["binary-succeeded-odd-name"].real["sensor"]["data"]


def documented_sensor_views() -> list[dict[str, Any]]:
    """The Sensor's view ({subject, header, body}) as the README and docs/events.md show it."""
    views = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for text in re.findall(r"^```json\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL):
            example = json.loads(text)
            if isinstance(example, dict) and {"header", "body"} <= example.keys():
                views.append(example)
    return views


def test_the_documented_sensor_views_have_the_listeners_shape(
    observed: dict[str, Observed],
) -> None:
    """Keys and headers as the real listener hands them over, in each content mode."""
    real = {
        "application/json": observed["binary-succeeded-model"].data,
        "application/cloudevents+json": observed["structured-failed"].data,
    }
    views = documented_sensor_views()
    assert {view["header"]["Content-Type"][0] for view in views} == set(real)
    for view in views:
        seen = real[view["header"]["Content-Type"][0]]
        assert list(view) == list(seen)  # subject, header, body, in that order
        assert list(view["header"]) == list(seen["header"])  # sorted, as Go writes a map
        assert all(isinstance(values, list) for values in view["header"].values())
        document_body = view["body"].get("data", view["body"])
        seen_body = seen["body"].get("data", seen["body"])
        assert list(seen_body)[:5] == list(document_body)[:5]  # the seed's keys, in order


def test_the_sensor_event_context_is_the_eventsources_not_the_cloudevents(
    line: str, observed: dict[str, Observed]
) -> None:
    name, event_name, _ = nats_source(EVENT_SOURCE)
    for seen in observed.values():
        context = seen.real["sensor"]["context"]
        assert (context["type"], context["source"], context["subject"]) == (
            "nats",
            name,
            event_name,
        )
        assert (context["specversion"], context["datacontenttype"]) == ("1.0", "application/json")
        assert EVENT_ID[line].fullmatch(context["id"]), context["id"]
        assert context["id"] != seen.data["header"].get("Nats-Msg-Id", [""])[0]


def test_a_payload_that_is_not_json_is_dropped_by_the_listener(listener: Listener) -> None:
    """With jsonBody the body is embedded as raw JSON: invalid JSON fails the marshal."""
    listener.drain()
    publish_raw(listener.url, b"succeeded penguin-pipeline", {"ce-id": "not-json"})
    publish_raw(listener.url, b'{"sentinel": true}', {"ce-id": "sentinel"})
    event = listener.next_event()
    assert json.loads(event["sensor"]["data"])["header"]["ce-id"] == ["sentinel"]
    assert "failed to marshal the event data, rejecting the event" in listener.log.read_text()
    assert listener.drain() == []


def test_without_json_body_the_sensor_gets_base64_and_the_seed_sensor_never_fires(
    line: str, tmp_path: Path
) -> None:
    """The mutation that proves the listener harness can fail: jsonBody removed."""
    without = EVENT_SOURCE.replace("jsonBody: true", "jsonBody: false")
    assert without != EVENT_SOURCE
    with (
        NatsServer(jetstream=False) as server,
        Listener(line, server.url, tmp_path / "listener.log", without) as bare,
    ):
        seen = publish(bare, *base_args(SUBJECT, server.url))
    assert isinstance(seen.data["body"], str)  # []byte: base64 of the payload
    assert differences(seen.data, seen.view) == [
        f"body: {seen.data['body']!r} != {seen.view['body']!r}"
    ]
    ((result,),) = evaluate(line, [{"bus": seen.real["bus"]}], [SEED_SENSOR])["results"]
    assert not fires(result)
    assert "path 'body.status' does not exist" in result["dependencies"][0]["error"]


# ------------------------------------------------------------------------------- the filters

BINARY_FIRES = {"binary-succeeded-model", "binary-succeeded-nomodel"}


def test_the_seeds_sensor_fires_for_succeeded_penguin_pipeline_only_in_binary_mode(
    verdicts: dict[str, dict[str, Any]],
) -> None:
    fired = {name for name, results in verdicts.items() if fires(results["seed"])}
    # Unanchored: "penguin-pipeline" also matches penguin-pipeline-v2 (see the next test).
    assert fired == BINARY_FIRES | {"binary-succeeded-v2"}


def test_string_filters_are_unanchored_re2_so_the_shipped_sensors_anchor_them(
    verdicts: dict[str, dict[str, Any]],
) -> None:
    assert fires(verdicts["binary-succeeded-v2"]["seed"])
    assert not fires(verdicts["binary-succeeded-v2"]["binary"])
    assert not fires(verdicts["structured-succeeded-v2"]["structured"])
    assert {name for name, results in verdicts.items() if fires(results["binary"])} == BINARY_FIRES


def test_the_structured_sensor_fires_on_body_data(verdicts: dict[str, dict[str, Any]]) -> None:
    fired = {name for name, results in verdicts.items() if fires(results["structured"])}
    assert fired == {"structured-succeeded-model", "structured-succeeded-nomodel"}
    # In the other mode each Sensor's first path is absent: an error, so it does not fire.
    (dependency,) = verdicts["binary-succeeded-model"]["structured"]["dependencies"]
    assert "path 'body.type' does not exist" in dependency["error"]
    (dependency,) = verdicts["structured-succeeded-model"]["binary"]["dependencies"]
    assert "path 'header.ce-type.0' does not exist" in dependency["error"]


def id_sensor(path: str, value: str) -> str:
    sensor = yaml.safe_load(SEED_SENSOR)
    sensor["spec"]["dependencies"][0]["filters"]["data"] = [
        {"path": path, "type": "string", "value": [value]}
    ]
    return yaml.safe_dump(sensor)


def test_filters_on_the_ce_type_header_and_on_the_id_work(
    line: str, observed: dict[str, Observed]
) -> None:
    binary, structured = observed["binary-failed"], observed["structured-failed"]
    ce_id = binary.data["header"]["ce-id"][0]
    structured_id = structured.data["body"]["id"]
    sensors = [
        id_sensor("header.ce-id.0", f"^{re.escape(ce_id)}$"),
        id_sensor("body.id", f"^{re.escape(structured_id)}$"),
        id_sensor("header.ce-type.0", "^org\\.kubeflow\\.pipelines\\.run-completion$"),
        id_sensor("header.ce-type.0", "^org\\.kubeflow\\.pipelines\\.other$"),
    ]
    others = observed["binary-succeeded-nomodel"], observed["structured-succeeded-nomodel"]
    events = [{"bus": seen.real["bus"]} for seen in (binary, structured, *others)]
    results = evaluate(line, events, sensors)["results"]
    table = [[fires(result) for result in row] for row in results]
    assert table == [
        [True, False, True, False],  # binary-failed: its id, and the type
        [False, True, False, False],  # structured-failed: its id (no ce-* headers)
        [False, False, True, False],  # another binary event: another id
        [False, False, False, False],
    ]


def test_a_filter_on_a_path_that_does_not_exist_never_fires(
    line: str, observed: dict[str, Observed]
) -> None:
    """The mutation that proves the filter harness can fail."""
    sensor = yaml.safe_load(SENSORS["binary"])
    sensor["spec"]["dependencies"][0]["filters"]["data"].append(
        {"path": "body.noSuchKey", "type": "string", "value": [".*"]}
    )
    event = {"bus": observed["binary-succeeded-model"].real["bus"]}
    ((result,),) = evaluate(line, [event], [yaml.safe_dump(sensor)])["results"]
    (dependency,) = result["dependencies"]
    assert dependency["fires"] is False
    assert "path 'body.noSuchKey' does not exist" in dependency["error"]


def test_before_nats_headers_reached_the_event_only_body_filters_work(
    line: str, observed: dict[str, Observed]
) -> None:
    """Argo Events before 1.7.5 (1.7.x) and 1.8.0 built NATSEventData from the subject and
    the body alone (plus metadata): no `header`. The seed's Sensor and the structured one still
    fire and resolve; the binary Sensor's header filter and header.ce-id.0 find nothing."""

    def old(name: str) -> dict[str, Any]:
        data = observed[name].data
        return bus_event({key: value for key, value in data.items() if key != "header"})

    events = [old("binary-succeeded-model"), old("structured-succeeded-model")]
    sensors = [SENSORS["seed"], SENSORS["binary"], SENSORS["structured"]]
    (seed, shipped, _), (_, _, structured) = evaluate(line, events, sensors)["results"]
    assert fires(seed)
    assert not fires(shipped)
    assert "path 'header.ce-type.0' does not exist" in shipped["dependencies"][0]["error"]
    assert "unable to resolve" in shipped["triggers"][0]["error"]
    assert fires(structured)
    assert structured["triggers"][0]["error"] == ""


# ------------------------------------------------------------------------------ the triggers


def test_the_http_triggers_payloads_resolve_with_and_without_a_model(
    verdicts: dict[str, dict[str, Any]], observed: dict[str, Observed], model: tuple[str, str, str]
) -> None:
    for mode in ("binary", "structured"):
        for name, location in (
            ("succeeded-model", model[2]),
            ("succeeded-nomodel", ""),
            ("failed", ""),
        ):
            seen = observed[f"{mode}-{name}"]
            event_id = (
                seen.data["header"]["ce-id"][0] if mode == "binary" else seen.data["body"]["id"]
            )
            (trigger,) = verdicts[f"{mode}-{name}"][mode]["triggers"]
            assert trigger["error"] == "", (mode, name, trigger["error"])
            assert json.loads(trigger["payload"]) == {
                "eventId": event_id,
                "modelLocation": location,
            }


def test_without_the_default_a_run_that_pushed_nothing_fails_the_trigger(
    line: str, observed: dict[str, Observed]
) -> None:
    """The mutation that proves the trigger harness can fail: `value: ""` removed."""
    sensor = yaml.safe_load(SENSORS["binary"])
    (trigger,) = sensor["spec"]["triggers"]
    (parameter,) = [p for p in trigger["template"]["http"]["payload"] if "value" in p["src"]]
    del parameter["src"]["value"]
    events = [
        {"bus": observed[name].real["bus"]}
        for name in ("binary-succeeded-model", "binary-succeeded-nomodel")
    ]
    (with_model,), (without,) = evaluate(line, events, [yaml.safe_dump(sensor)])["results"]
    assert with_model["triggers"][0]["error"] == ""
    assert "unable to resolve 'run-completed' parameter value" in without["triggers"][0]["error"]


# ------------------------------------------------------------------------------ the backstop

BACKSTOP_SOURCE = (BACKSTOP / "eventsource.yaml").read_text()
BACKSTOP_SENSOR = (BACKSTOP / "sensor.yaml").read_text()
COMPLETED = "workflows.argoproj.io/completed"
TERMINATED = "Stopped with strategy 'Terminate'"
EVENT_ID_LABEL = "926f9133-226d-57b6-8a3b-ebfa87f94d43"  # publish labels the run with its id
UID = "5b1f7a2c-0d3e-4f51-9a6b-2c8d7e9f0a1b"


def workflow(
    phase: str = "Failed",
    message: str | None = None,
    labels: dict[str, str | None] | None = None,  # None: the label removed
    namespace: str = "kubeflow",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An injected Workflow, completed unless LABELS say otherwise, as the API server has it."""
    metadata: dict[str, Any] = {
        "name": "penguin-pipeline-x7k2p",
        "namespace": namespace,
        "uid": UID,
        "resourceVersion": "48213",
        "creationTimestamp": "2026-11-26T10:00:00Z",
        "labels": {
            COMPLETED: "true",
            INJECTED_LABEL: "true",
            "pipelines.kubeflow.org/kfp_sdk_version": "1.8.22",
            **(labels or {}),
        },
    }
    metadata["labels"] = {k: v for k, v in metadata["labels"].items() if v is not None}
    if annotations is not None:
        metadata["annotations"] = annotations
    status: dict[str, Any] = {"phase": phase, "finishedAt": "2026-11-26T10:05:00Z"}
    if message is not None:
        status["message"] = message
    spec = {"entrypoint": "penguin-pipeline-dag", "templates": [{"name": "penguin-pipeline-dag"}]}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": metadata,
        "spec": spec,
        "status": status,
    }


def resource_event(
    obj: dict[str, Any], event_type: str = "UPDATE", source: str = BACKSTOP_SOURCE
) -> dict[str, Any]:
    return {"resource": {"eventSource": source, "eventType": event_type, "object": obj}}


PUBLISHED_LABEL: dict[str, str | None] = {PUBLISHED: EVENT_ID_LABEL}
# (the object, the informer event, whether the backstop submits a Workflow for it)
BACKSTOP_CASES: dict[str, tuple[dict[str, Any], str, bool]] = {
    "succeeded": (workflow("Succeeded"), "UPDATE", True),
    "failed": (workflow("Failed", "child 'trainer' failed"), "UPDATE", True),
    "error": (workflow("Error", "pod deleted"), "UPDATE", True),
    "terminated": (workflow("Failed", TERMINATED), "UPDATE", True),
    "stopped": (workflow("Failed", "Stopped with strategy 'Stop'"), "UPDATE", True),
    "in another namespace": (workflow("Succeeded", namespace="team-a"), "UPDATE", True),
    # The informer's first list when the EventSource starts: runs that ended while it was down.
    "listed on start": (workflow("Failed", TERMINATED), "ADD", True),
    # Labels that only look like the marker do not count as it.
    "similar labels": (
        workflow("Failed", labels={f"{PUBLISHED}-at": "x", f"not-{PUBLISHED}": "x"}),
        "UPDATE",
        True,
    ),
    "marker as an annotation": (
        workflow("Failed", annotations={PUBLISHED: EVENT_ID_LABEL}),
        "UPDATE",
        True,
    ),
    "published, succeeded": (workflow("Succeeded", labels=PUBLISHED_LABEL), "UPDATE", False),
    "published, terminated": (workflow("Failed", TERMINATED, PUBLISHED_LABEL), "UPDATE", False),
    "published, listed on start": (workflow("Error", labels=PUBLISHED_LABEL), "ADD", False),
    "uninjected": (workflow("Failed", TERMINATED, {INJECTED_LABEL: None}), "UPDATE", False),
    "injected false": (workflow("Failed", labels={INJECTED_LABEL: "false"}), "UPDATE", False),
    "running": (workflow("Running", labels={COMPLETED: "false"}), "UPDATE", False),
    "not yet labelled": (workflow("Running", labels={COMPLETED: None}), "UPDATE", False),
    "deleted": (workflow("Failed", TERMINATED), "DELETE", False),
}


@dataclass(frozen=True)
class Verdict:
    """What Argo Events' code made of one informer event."""

    selection: dict[str, Any]  # would the EventSource's informer deliver it at all
    sensor: dict[str, Any]  # the backstop Sensor's filter and trigger on it

    @property
    def submits(self) -> bool:
        assert self.selection["error"] == "", self.selection["error"]
        return bool(self.selection["selected"]) and fires(self.sensor)


def backstop_verdicts(
    line: str, cases: dict[str, tuple[dict[str, Any], str, bool]], sensor: str = BACKSTOP_SENSOR
) -> dict[str, Verdict]:
    events = [resource_event(obj, event_type) for obj, event_type, _ in cases.values()]
    answer = evaluate(line, events, [sensor])
    for event in answer["events"]:  # what the resource EventSource hands the Sensor
        assert event["context"]["type"] == "resource"
        assert set(json.loads(event["data"])) == {
            "type",
            "body",
            "oldBody",
            "group",
            "version",
            "resource",
        }
    return {
        name: Verdict(selection, row[0])
        for name, selection, row in zip(cases, answer["selections"], answer["results"], strict=True)
    }


@pytest.fixture(scope="module")
def backstop(line: str) -> dict[str, Verdict]:
    return backstop_verdicts(line, BACKSTOP_CASES)


def test_the_backstop_fires_for_every_completed_injected_unpublished_run(
    backstop: dict[str, Verdict],
) -> None:
    """Whatever the phase or the message; never for a published, uninjected or running run."""
    assert {name: verdict.submits for name, verdict in backstop.items()} == {
        name: expected for name, (_, _, expected) in BACKSTOP_CASES.items()
    }


def test_the_eventsource_selects_completed_injected_runs_and_the_sensor_drops_published_ones(
    backstop: dict[str, Verdict],
) -> None:
    """Who decides what: the label selector (sent to the API server) passes completed, injected
    runs; the Sensor's filter drops the published ones among them."""
    selector = {verdict.selection["selector"] for verdict in backstop.values()}
    assert selector == {f"{INJECTED_LABEL}==true,{COMPLETED}==true"}
    for name, verdict in backstop.items():
        labels = BACKSTOP_CASES[name][0]["metadata"]["labels"]
        selected = (
            labels.get(COMPLETED) == labels.get(INJECTED_LABEL) == "true"
            and BACKSTOP_CASES[name][1] != "DELETE"
        )
        assert verdict.selection["selected"] is selected, name
        if selected:
            assert verdict.sensor["dependencies"][0]["error"] == "", name
            assert fires(verdict.sensor) is (PUBLISHED not in labels), name


def test_the_backstop_trigger_submits_a_workflow_that_reads_the_ended_one(
    line: str, backstop: dict[str, Verdict]
) -> None:
    """The Workflow the argoWorkflow trigger would submit (`resource`): one name per run, in
    the run's namespace, calling `publish` with only the run's name and namespace."""
    for name, (obj, _, submits) in BACKSTOP_CASES.items():
        if not submits:
            continue
        (trigger,) = backstop[name].sensor["triggers"]
        assert trigger["error"] == "", (name, trigger["error"])
        submitted = trigger["resource"]
        meta = obj["metadata"]
        assert submitted["kind"] == "Workflow"
        assert submitted["metadata"]["name"] == f"run-completion-backstop-{meta['uid']}"
        assert submitted["metadata"]["namespace"] == meta["namespace"], name
        parameters = {p["name"]: p["value"] for p in submitted["spec"]["arguments"]["parameters"]}
        assert parameters == {"workflow": meta["name"], "namespace": meta["namespace"]}, name
        ((step,),) = submitted["spec"]["templates"][0]["steps"]
        assert step["templateRef"] == {"name": "kfp-exit-handler", "template": "publish"}
        assert {p["name"]: p["value"] for p in step["arguments"]["parameters"]} == {
            "workflow": "{{workflow.parameters.workflow}}",
            "namespace": "{{workflow.parameters.namespace}}",
        }
    # The submitted Workflow, once it completes, is no run for the backstop: not injected.
    (trigger,) = backstop["terminated"].sensor["triggers"]
    own = trigger["resource"]
    own["metadata"]["labels"][COMPLETED] = "true"
    own["metadata"]["uid"] = "0e6b1d2c-uid"
    own["status"] = {"phase": "Failed"}
    (verdict,) = backstop_verdicts(line, {"own": (own, "UPDATE", False)}).values()
    assert verdict.selection["selected"] is False
    assert INJECTED_LABEL not in own["metadata"]["labels"]


def test_a_backstop_parameter_on_a_missing_path_fails_the_trigger(line: str) -> None:
    """The mutation that proves the resource-parameter harness can fail."""
    broken = BACKSTOP_SENSOR.replace(
        "dataKey: body.metadata.name", "dataKey: body.metadata.noSuchKey"
    )
    assert broken != BACKSTOP_SENSOR
    cases = {"terminated": BACKSTOP_CASES["terminated"]}
    (verdict,) = backstop_verdicts(line, cases, broken).values()
    assert "unable to resolve 'ended' parameter value" in verdict.sensor["triggers"][0]["error"]


def test_without_the_not_equal_comparator_the_filter_fires_for_published_runs_only(
    line: str,
) -> None:
    """The mutation that proves the Sensor's filter decides: the same regex, matched."""
    comparator = '            comparator: "!="\n'
    assert comparator in BACKSTOP_SENSOR
    matching = BACKSTOP_SENSOR.replace(comparator, "")
    verdicts = backstop_verdicts(line, BACKSTOP_CASES, matching)
    fired = {name for name, verdict in verdicts.items() if verdict.submits}
    assert fired == {"published, succeeded", "published, terminated", "published, listed on start"}


def test_a_filter_on_the_absent_label_itself_never_fires(line: str) -> None:
    """Why the Sensor reads the labels as text: a path that is absent is an error, not a match,
    whatever the comparator."""
    sensor = yaml.safe_load(BACKSTOP_SENSOR)
    sensor["spec"]["dependencies"][0]["filters"]["data"] = [
        {"path": f"body.metadata.labels.{PUBLISHED}", "type": "string", "value": ["^$"]}
    ]
    cases = {name: BACKSTOP_CASES[name] for name in ("terminated", "published, terminated")}
    verdicts = backstop_verdicts(line, cases, yaml.safe_dump(sensor))
    assert not any(verdict.submits for verdict in verdicts.values())
    dependency = verdicts["terminated"].sensor["dependencies"][0]
    assert f"path 'body.metadata.labels.{PUBLISHED}' does not exist" in dependency["error"]


def test_without_the_injected_requirement_every_completed_run_is_selected(line: str) -> None:
    """The mutation that proves the selector harness can fail."""
    source = yaml.safe_load(BACKSTOP_SOURCE)
    (spec,) = source["spec"]["resource"].values()
    spec["filter"]["labels"] = [s for s in spec["filter"]["labels"] if s["key"] != INJECTED_LABEL]
    obj, event_type, _ = BACKSTOP_CASES["uninjected"]
    answer = evaluate(line, [resource_event(obj, event_type, yaml.safe_dump(source))], [])
    assert answer["selections"] == [
        {"selector": f"{COMPLETED}==true", "selected": True, "error": ""}
    ]


def test_a_does_not_exist_selector_works_from_argo_events_1_9_only(line: str) -> None:
    """What eventsource.yaml says: `operation: "!"` would keep published runs from the bus on
    1.9 (LabelReq gives it no value); 1.8 hands NewRequirement the empty value and fails."""
    source = yaml.safe_load(BACKSTOP_SOURCE)
    (spec,) = source["spec"]["resource"].values()
    spec["filter"]["labels"].append({"key": PUBLISHED, "operation": "!"})
    text = yaml.safe_dump(source)
    events = [
        resource_event(BACKSTOP_CASES[name][0], "UPDATE", text)
        for name in ("terminated", "published, terminated")
    ]
    unpublished, published = evaluate(line, events, [])["selections"]
    if line == V18:
        for selection in (unpublished, published):
            assert "values set must be empty for exists and does not exist" in selection["error"]
            assert selection["selected"] is False
    else:
        assert unpublished["selector"] == f"{INJECTED_LABEL}==true,!{PUBLISHED},{COMPLETED}==true"
        assert (unpublished["selected"], published["selected"]) == (True, False)
