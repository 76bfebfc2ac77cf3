"""Load: 200 exit handlers at once against one server, none lost, none stored twice."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exit_handler.testing import NatsServer, Subscriber, add_stream, stream_messages

HANDLERS = 200
CONCURRENCY = 32


def exit_handler(url: str, subject: str, number: int) -> int:
    """One exit handler process, as Argo starts one per finished run."""
    argv = [
        sys.executable,
        "-m",
        "exit_handler",
        "publish",
        "--status=Succeeded",
        f"--workflow-name=penguin-pipeline-{number}",
        f"--workflow-uid=uid-{number}",
        "--pipeline-name=penguin-pipeline",
        f"--nats-url={url}",
        f"--subject={subject}",
        "--timeout=60",
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXIT_HANDLER")}
    return subprocess.run(argv, capture_output=True, check=False, timeout=120, env=env).returncode


def run_all(url: str, subject: str, numbers: list[int]) -> list[int]:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(lambda n: exit_handler(url, subject, n), numbers))


@pytest.mark.slow
def test_two_hundred_handlers_core_none_lost(tmp_path: Path) -> None:
    with (
        NatsServer(store_dir=tmp_path / "js") as server,
        Subscriber(server.url, "events") as subscriber,
    ):
        statuses = run_all(server.url, "events", list(range(HANDLERS)))
        received = subscriber.wait_for(HANDLERS, timeout=30)
    assert statuses == [0] * HANDLERS
    ids = {message.headers["ce-id"] for message in received}
    assert len(received) == HANDLERS
    assert len(ids) == HANDLERS


@pytest.mark.slow
def test_two_hundred_handlers_each_rerun_jetstream_stores_each_once(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path / "js") as server:
        add_stream(server.url, "EVENTS", "events")
        # Each handler twice, the re-runs interleaved with the first runs.
        numbers = [n for n in range(HANDLERS) for _ in range(2)]
        statuses = run_all(server.url, "events", numbers)
        stored = stream_messages(server.url, "EVENTS")
    assert statuses == [0] * len(numbers)
    assert len(stored) == HANDLERS
    assert len({message.headers["Nats-Msg-Id"] for message in stored}) == HANDLERS
