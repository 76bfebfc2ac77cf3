"""Load: 200 exit handlers at once against one server, none lost, none stored twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nats
import pytest

from exit_handler.testing import NatsServer, Subscriber

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
    async def add_stream(url: str) -> None:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        await nc.jetstream().add_stream(name="EVENTS", subjects=["events"])
        await nc.close()

    async def stored(url: str) -> tuple[int, set[str]]:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        js = nc.jetstream()
        info = await js.stream_info("EVENTS")
        ids = set()
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg("EVENTS", seq)
            ids.add((message.headers or {})["Nats-Msg-Id"])
        await nc.close()
        return int(info.state.messages), ids

    with NatsServer(store_dir=tmp_path / "js") as server:
        asyncio.run(add_stream(server.url))
        # Each handler twice, the re-runs interleaved with the first runs.
        numbers = [n for n in range(HANDLERS) for _ in range(2)]
        statuses = run_all(server.url, "events", numbers)
        count, ids = asyncio.run(stored(server.url))
    assert statuses == [0] * len(numbers)
    assert count == HANDLERS
    assert len(ids) == HANDLERS
