"""Fixtures: real nats-server and fake-gcs-server, and the CLI called in-process."""

from __future__ import annotations

import io
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cloudevents.core.v1.event import CloudEvent
from e2e_cluster import SUMMARY

from exit_handler.cli import main
from exit_handler.testing import FakeGcsServer, NatsServer, check_message

if Path(__file__).parent.parent.name == "mutants":
    # make mutate runs this copy of the suite, where mutmut's trampoline doubles every call
    # of a mutated function: inputs sized to the recursion limit need the room back. A fixed
    # value: mutmut runs pytest (and this file) again in one process, and a limit that grew
    # each time let json's C scanner overflow the real stack (a segfault, not a verdict).
    sys.setrecursionlimit(3000)

# `make mutate`: the test files that judge each module's mutants. Of the tests that reach a
# mutated function, mutmut runs those in its module's files; the rest only repeat them slower.
MUTATION_JUDGES = {
    "event": {"test_event.py", "test_schema.py", "test_run.py", "test_workflow.py"},
    "run": {"test_run.py", "test_event.py", "test_bad_input.py", "test_workflow.py"},
    "wire": {"test_event.py", "test_schema.py", "test_delivery.py", "test_publish.py"},
    "pipeline_root": {"test_pipeline_root.py", "test_workflow.py"},
    "artifacts": {"test_artifacts.py", "test_artifact_definitions.py"},
    "artifact_filter": {"test_artifact_filter.py", "test_artifact_definitions.py"},
    "delivery": {"test_delivery.py", "test_jetstream.py", "test_publish.py", "test_nats_auth.py"},
    "options": {
        "test_bad_input.py",
        "test_publish.py",
        "test_run.py",
        "test_workflow.py",
        "test_nats_auth.py",
        "test_replay.py",
        "test_delivery.py",
    },
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `make mutate`, run only the judges of the mutated module (MUTATION_JUDGES)."""
    module = os.environ.get("MUTANT_UNDER_TEST", "").split(".")
    if len(module) < 3 or module[0] != "exit_handler":
        return  # not a mutant: mutmut's clean and stats runs, or no mutmut at all
    judges = MUTATION_JUDGES[module[1]]
    config.hook.pytest_deselected(items=[i for i in items if i.path.name not in judges])
    items[:] = [i for i in items if i.path.name in judges]


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str

    @property
    def dry_run(self) -> dict[str, object]:
        parsed: dict[str, object] = json.loads(self.stdout)
        return parsed


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(store_dir=tmp_path_factory.mktemp("jetstream")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcsServer]:
    with FakeGcsServer() as server:
        yield server


@pytest.fixture
def gcs(gcs_server: FakeGcsServer, monkeypatch: pytest.MonkeyPatch) -> FakeGcsServer:
    """The emulator, with google-cloud-storage pointed at it for this test."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    return gcs_server


@pytest.fixture
def bucket(gcs: FakeGcsServer) -> str:
    """A fresh bucket, so that tests sharing the emulator never see each other's runs."""
    name = f"root-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(name)
    return name


@pytest.fixture
def subject() -> str:
    """A subject of this test's own on the shared server."""
    return f"events.{uuid.uuid4().hex[:12]}"


def run_handler(*args: str, env: dict[str, str] | None = None) -> Result:
    """`exit-handler ARGS` in-process, with its own environment and streams."""
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(list(args), environ=env or {}, stdout=stdout, stderr=stderr)
    return Result(int(status), stdout.getvalue(), stderr.getvalue())


def run_starts_now() -> str:
    """Begin 'this run' on a whole second after every object written so far.

    Argo's creationTimestamp has whole seconds and GCS stamps objects itself; with
    `--clock-skew 0` everything uploaded before this call is older than the run.
    """
    now = time.time()
    time.sleep(int(now) + 1 - now + 0.01)
    return datetime.fromtimestamp(int(now) + 1, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def upload_model(gcs: FakeGcsServer, bucket: str, prefix: str, version: str) -> str:
    """A pushed model's copy under `prefix/version/`, as the Pusher writes it."""
    for name, data in (("saved_model.pb", b"\x08\x01" * 32), ("variables/variables.index", b"i")):
        gcs.upload(bucket, f"{prefix}/{version}/{name}", data)
    return f"gs://{bucket}/{prefix}/{version}"


def base_args(
    subject: str, nats_url: str, *, status: str = "Succeeded", uid: str | None = None
) -> list[str]:
    """What the WorkflowTemplate passes, minus the pipeline root."""
    return [
        "publish",
        f"--status={status}",
        "--workflow-name=penguin-pipeline-x7k2p",
        f"--workflow-uid={uid or uuid.uuid4()}",
        "--namespace=kubeflow",
        "--pipeline-name=penguin-pipeline",
        f"--nats-url={nats_url}",
        f"--subject={subject}",
        "--timeout=10",
    ]


def selectable(texts: list[str]) -> list[str]:
    """Test ids that pytest (and mutmut) can select again: no "::", and only printable ASCII
    without '\\'. pytest escapes an explicit id in place, so an id holding a backslash or
    non-ASCII text changes at each collection in one process, as mutmut collects."""
    return [
        "".join(c if " " <= c <= "~" and c != "\\" else f"%{ord(c):02X}" for c in text).replace(
            "::", ": :"
        )
        for text in texts
    ]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(autouse=True)
def every_event_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message `publish` builds in this process, sent or printed by --dry-run, must
    satisfy the event's schema: a new test cannot skip the check. (Subscriber checks what
    arrives from other processes.)"""
    from exit_handler import publish, wire

    def checked(event: CloudEvent, subject: str, mode: str) -> wire.Message:
        message = wire.encode(event, subject, mode)
        check_message(message.headers, message.payload)
        return message

    monkeypatch.setattr(publish, "encode", checked)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the e2e run measured and could not exercise, after the results, even when captured."""
    if SUMMARY:
        terminalreporter.section("e2e")
        for line in SUMMARY:
            terminalreporter.write_line(line)
