"""The loopback server helpers really start servers that behave as the other tests assume."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import MUTATION_JUDGES

from exit_handler.testing import FakeGcsServer, NatsServer, write_gcs_seed


def _get(gcs: FakeGcsServer, path: str) -> bytes:
    """GET from the JSON API with plain urllib, independent of the helpers under test."""
    assert gcs.endpoint == f"http://127.0.0.1:{gcs.port}"
    with urllib.request.urlopen(f"http://127.0.0.1:{gcs.port}{path}", timeout=10) as response:
        data: bytes = response.read()
        return data


def _get_json(gcs: FakeGcsServer, path: str) -> Any:
    return json.loads(_get(gcs, path))


def test_nats_pub_sub_and_jetstream() -> None:
    async def scenario(url: str) -> None:
        nc = await nats.connect(url)
        try:
            sub = await nc.subscribe("greet")
            await nc.publish("greet", b"hello")
            message = await sub.next_msg(timeout=2)
            assert message.data == b"hello"
            info = await nc.jetstream().account_info()
            assert info.streams == 0
        finally:
            await nc.close()

    with NatsServer() as server:
        assert server.url.startswith("nats://127.0.0.1:")
        asyncio.run(scenario(server.url))


def test_nats_token_auth_refuses_wrong_token() -> None:
    async def connect(url: str, token: str) -> None:
        nc = await nats.connect(url, token=token, allow_reconnect=False, connect_timeout=2)
        await nc.close()

    with NatsServer(token="s3cret", jetstream=False) as server:
        asyncio.run(connect(server.url, "s3cret"))
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            asyncio.run(connect(server.url, "wrong"))


def test_nats_restart_keeps_port_and_jetstream_store() -> None:
    async def scenario(server: NatsServer) -> None:
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        nc = await nats.connect(server.url, reconnect_time_wait=0.1, reconnected_cb=on_reconnect)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EVENTS", subjects=["events.>"])
            port, pid = server.port, server.pid
            server.restart()
            assert server.port == port
            assert server.url.endswith(f":{port}")
            assert server.pid != pid
            # The client only knows this URL, so reconnecting proves the port was kept.
            await asyncio.wait_for(reconnected.wait(), timeout=5)
            ack = await js.publish("events.one", b"1", timeout=5)
            assert ack.stream == "EVENTS"
        finally:
            await nc.close()

    server = NatsServer()
    server.start()
    try:
        asyncio.run(scenario(server))
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.pid


def test_fake_gcs_upload_keeps_metadata() -> None:
    with FakeGcsServer() as gcs:
        gcs.create_bucket("exits")
        gcs.upload("exits", "run-1/exit.json", b'{"code": 3}', metadata={"exit-code": "3"})
        listing = _get_json(gcs, "/storage/v1/b/exits/o?fields=items(name,metadata)")
        assert [(o["name"], o.get("metadata")) for o in listing["items"]] == [
            ("run-1/exit.json", {"exit-code": "3"})
        ]
        media = _get(gcs, "/storage/v1/b/exits/o/run-1%2Fexit.json?alt=media")
        assert media == b'{"code": 3}'


def test_fake_gcs_serves_seeded_data_dir(tmp_path: Path) -> None:
    write_gcs_seed(tmp_path, "seeded", {"a/1.txt": b"one", "a/2.txt": b"two", "b/3.txt": b""})
    with FakeGcsServer(data_dir=tmp_path) as gcs:
        listing = _get_json(gcs, "/storage/v1/b/seeded/o")
        assert [o["name"] for o in listing["items"]] == ["a/1.txt", "a/2.txt", "b/3.txt"]
        folders = _get_json(gcs, "/storage/v1/b/seeded/o?delimiter=/")
        assert folders["prefixes"] == ["a/", "b/"]
        assert _get(gcs, "/storage/v1/b/seeded/o/a%2F2.txt?alt=media") == b"two"


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "dir/", "../escape", "a/./b"])
def test_write_gcs_seed_rejects_names_that_are_not_clean_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="cannot be stored"):
        write_gcs_seed(tmp_path, "bucket", {name: b"x"})


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_servers_die_with_the_process_that_started_them() -> None:
    """A test process killed outright (a CI timeout, a mutant `make mutate` stops) leaves
    no server behind to hold ports and memory."""
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from exit_handler.testing import FakeGcsServer, NatsServer\n"
            "nats, gcs = NatsServer(), FakeGcsServer()\n"
            "nats.start(); gcs.start()\n"
            "print(nats.pid, gcs.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None
    pids = [int(pid) for pid in starter.stdout.readline().split()]
    assert len(pids) == 2
    assert all(_running(pid) for pid in pids)
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    """Alive and not a zombie (the servers run in their own sessions; init reaps them)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_mutmut_runs_exactly_the_judges_of_every_mutated_module() -> None:
    """pyproject's test list is what mutmut collects; conftest narrows it per module."""
    config = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    mutmut = config["tool"]["mutmut"]
    collected = {
        Path(arg).name
        for arg in mutmut["pytest_add_cli_args_test_selection"]
        if arg.endswith(".py")
    }
    mutated = {Path(path).stem for path in mutmut["only_mutate"]}
    assert set(MUTATION_JUDGES) == mutated
    assert set().union(*MUTATION_JUDGES.values()) == collected
