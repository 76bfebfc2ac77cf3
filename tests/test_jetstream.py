"""JetStream that is there but not answering is retried, never published core (README, Delivery).

Against real servers: a three-server JetStream cluster with one server up (no meta
leader), accounts with and without JetStream, streams at their limits, and a hub and a
leafnode with JetStream domains. A proxy only where the real server cannot fail on
demand: a stream lookup whose answer never arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import base_args, run_handler
from faults import NatsProxy
from nats.js.api import DiscardPolicy, StreamConfig
from nats.js.errors import APIError
from test_reliability import in_background, wait_until

from exit_handler.deadline import Deadline
from exit_handler.testing import NatsServer, Subscriber, free_port, stream_messages

NAMES = "$JS.API.STREAM.NAMES"
NOT_AVAILABLE = {
    "code": 503,
    "err_code": 10008,
    "description": "JetStream system temporarily unavailable",
}


def js_api(url: str, subject: str = NAMES, **connect: Any) -> dict[str, Any] | str:
    """The server's answer to a JetStream API request: its JSON, or what went wrong."""

    async def ask() -> dict[str, Any] | str:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1, **connect)
        try:
            message = await nc.request(subject, b"{}", timeout=1)
        except nats.errors.NoRespondersError:
            return "no responders"
        except nats.errors.TimeoutError:
            return "timeout"
        finally:
            await nc.close()
        answer: dict[str, Any] = json.loads(message.data)
        return answer

    return asyncio.run(ask())


def wait_for_answer(
    url: str, wanted: Callable[[dict[str, Any] | str], bool], subject: str = NAMES
) -> dict[str, Any] | str:
    """Ask until the answer is the wanted one (a cluster settles in seconds, not at once)."""
    deadline = time.monotonic() + 30
    answer = js_api(url, subject)
    while not wanted(answer) and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = js_api(url, subject)
    assert wanted(answer), f"{subject} still answers {answer}"
    return answer


def has_meta_leader(answer: dict[str, Any] | str) -> bool:
    return isinstance(answer, dict) and "error" not in answer


def cluster(directory: Path, size: int = 3) -> list[NatsServer]:
    """A JetStream cluster of `size` servers routed to one another, none started yet."""
    ports = [free_port() for _ in range(size)]
    routes = ", ".join(f'"nats://127.0.0.1:{port}"' for port in ports)
    return [
        NatsServer(
            store_dir=directory / f"node-{i}",
            config_extra=f"server_name: node-{i}\n"
            f'cluster {{ name: events, listen: "127.0.0.1:{port}", routes: [{routes}] }}',
        )
        for i, port in enumerate(ports)
    ]


def create_stream(url: str, config: StreamConfig) -> None:
    """Create a stream, retrying while a young cluster still places it."""

    async def create() -> None:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    await nc.jetstream(timeout=2).add_stream(config)
                except (APIError, nats.errors.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
                else:
                    return
        finally:
            await nc.close()

    asyncio.run(create())


def publish_to_stream(url: str, subject: str) -> None:
    async def publish() -> None:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            await nc.jetstream(timeout=2).publish(subject, b"earlier")
        finally:
            await nc.close()

    asyncio.run(publish())


@contextlib.contextmanager
def answering(url: str, subject: str, answer: dict[str, Any]) -> Iterator[None]:
    """A responder on `subject` that gives every request `answer`, in a thread of its own."""
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        try:

            async def respond(message: Any) -> None:
                await message.respond(json.dumps(answer).encode())

            await nc.subscribe(subject, cb=respond)
            await nc.flush()
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)
        finally:
            await nc.close()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    try:
        assert ready.wait(5), "the responder never subscribed"
        yield
    finally:
        stop.set()
        thread.join(5)


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if "unpublished event" not in line][-1]


@pytest.fixture(scope="module")
def leaderless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One server of a three-server cluster: JetStream is configured, but has no leader.

    For its first 10 s (raft's lostQuorumInterval) the server leaves JetStream API
    requests unanswered; then it answers 503, err_code 10008.
    """
    node, *_ = cluster(tmp_path_factory.mktemp("leaderless"))
    with node:
        answer = wait_for_answer(node.url, lambda a: isinstance(a, dict) and "error" in a)
        assert isinstance(answer, dict)
        assert answer["error"] == NOT_AVAILABLE
        yield node


@pytest.mark.parametrize("delivery", ["auto", "jetstream"])
def test_a_cluster_without_a_meta_leader_is_retried_never_published_core(
    leaderless: NatsServer, subject: str, delivery: str
) -> None:
    with Subscriber(leaderless.url, subject) as subscriber:
        started = time.monotonic()
        result = run_handler(
            *base_args(subject, leaderless.url), f"--delivery={delivery}", "--timeout=4"
        )
        elapsed = time.monotonic() - started
        received = subscriber.wait_for(1, timeout=0.5)
    assert result.status == 3, result.stderr
    assert 4 <= elapsed < 8
    assert received == [], "a core publish reaches no stream and nobody acks it"
    line = last_line(result.stderr)
    assert "before the deadline (4 s" in line
    assert f"JetStream stream lookup for subject '{subject}'" in line
    assert "JetStream system temporarily unavailable (JetStream error 10008)" in line
    assert "no meta leader" in line
    assert "unpublished event" in result.stderr


def test_a_cluster_that_regains_its_meta_leader_stores_the_event_once(
    tmp_path: Path, subject: str
) -> None:
    nodes = cluster(tmp_path)
    try:
        for node in nodes:
            node.start()
        wait_for_answer(nodes[0].url, has_meta_leader)
        create_stream(nodes[0].url, StreamConfig(name="EVENTS", subjects=[subject], num_replicas=3))
        for node in nodes:
            node.stop()
        nodes[0].start()  # alone: no meta leader, and the stream has no quorum
        with NatsProxy(nodes[0].url) as proxy:
            thread, results = in_background(*base_args(subject, proxy.url), "--timeout=60")
            wait_until(lambda: proxy.connections >= 2, timeout=30)  # an attempt failed
            nodes[1].start()
            nodes[2].start()
            thread.join(70)
        stored = stream_messages(nodes[0].url, "EVENTS")
    finally:
        for node in nodes:
            node.stop()
    (result,) = results
    assert result.status == 0, result.stderr
    assert "retrying" in result.stderr
    assert "jetstream delivery, stream EVENTS seq 1" in result.stderr
    assert len(stored) == 1


def test_an_unanswered_stream_lookup_is_retried_never_published_core(
    nats_server: NatsServer, subject: str
) -> None:
    with NatsProxy(nats_server.url) as proxy, Subscriber(nats_server.url, subject) as subscriber:
        proxy.swallow(b'"streams"', 1000)  # every answer to the lookup is lost
        started = time.monotonic()
        result = run_handler(*base_args(subject, proxy.url), "--timeout=8")
        elapsed = time.monotonic() - started
        received = subscriber.wait_for(1, timeout=0.5)
        attempts = proxy.connections
    assert result.status == 3, result.stderr
    assert 8 <= elapsed < 16
    assert attempts >= 2
    assert received == []
    line = last_line(result.stderr)
    assert "before the deadline (8 s" in line
    assert f"JetStream stream lookup for subject '{subject}'" in line
    assert "JetStream did not answer within" in line


def test_an_attempt_begun_as_the_deadline_ends_keeps_the_earlier_error(
    nats_server: NatsServer, subject: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst jitter sleeps until 50 ms before the deadline; the attempt begun then is
    cut short, which must not hide why the first attempt failed."""

    def sleep_almost_to_the_end(deadline: Deadline) -> Iterator[float]:
        while deadline.remaining() > 0.05:
            yield deadline.remaining() - 0.05

    monkeypatch.setattr("exit_handler.delivery.backoff", sleep_almost_to_the_end)
    with NatsProxy(nats_server.url) as proxy:
        proxy.swallow(b'"streams"', 1000)
        result = run_handler(*base_args(subject, proxy.url), "--timeout=6")
        attempts = proxy.connections
    assert result.status == 3, result.stderr
    assert attempts == 2
    assert last_line(result.stderr).endswith(
        f"JetStream stream lookup for subject '{subject}': JetStream did not answer within 5.0 s)"
    ), result.stderr


@pytest.mark.parametrize(("domain", "api"), [(None, "$JS.API"), ("hub", "$JS.hub.API")])
def test_a_user_denied_the_jetstream_api_is_refused_not_published_core(
    subject: str, domain: str | None, api: str
) -> None:
    users = (
        'authorization { users: [{ user: alice, password: "pa55-w0rd", '
        'permissions: { publish: { deny: ["$JS.API.>", "$JS.*.API.>"] } } }] }'
    )
    env = {"EXIT_HANDLER_NATS_PASSWORD": "pa55-w0rd"}
    if domain is not None:
        env["EXIT_HANDLER_JETSTREAM_DOMAIN"] = domain
    with (
        NatsServer(config_extra=users) as server,
        Subscriber(server.url, subject, user="alice", password="pa55-w0rd") as subscriber,
    ):
        args = [*base_args(subject, server.url), "--nats-user=alice", "--timeout=30"]
        denied = run_handler(*args, env=env)
        nothing = subscriber.wait_for(1, timeout=0.5)
        core = run_handler(*args, "--delivery=core", env=env)
        received = subscriber.wait_for(1)
    assert denied.status == 4, denied.stderr
    assert nothing == []
    assert last_line(denied.stderr) == (
        "exit-handler: ERROR: NATS refused a JetStream request: nats: permissions violation "
        f'for publish to "{api.lower()}.stream.names"; '
        f"grant the user publish permission on {api}.> and subscribe on _INBOX.>, "
        "or use --delivery core if no stream is meant to keep the event"
    )
    assert "unpublished event" in denied.stderr
    assert core.status == 0, core.stderr
    assert len(received) == 1


def test_an_account_without_jetstream_publishes_core_unless_jetstream_is_asked(
    subject: str,
) -> None:
    accounts = (
        "accounts { PLAIN: { users: [{ user: plain, password: plain }] } }\nno_auth_user: plain"
    )
    with NatsServer(config_extra=accounts) as server:
        answer = js_api(server.url)
        with Subscriber(server.url, subject) as subscriber:
            auto = run_handler(*base_args(subject, server.url))
            received = subscriber.wait_for(1)
        forced = run_handler(*base_args(subject, server.url), "--delivery=jetstream")
    assert isinstance(answer, dict)
    assert answer["error"] == {
        "code": 503,
        "err_code": 10039,
        "description": "JetStream not enabled for account",
    }
    assert auto.status == 0, auto.stderr
    assert "core delivery" in auto.stderr
    assert len(received) == 1
    assert forced.status == 2, forced.stderr
    assert (
        "--delivery jetstream: JetStream is not enabled for this account; "
        "enable JetStream for it, or use --delivery auto"
    ) in forced.stderr


def test_jetstream_delivery_says_why_no_stream_can_keep_the_event(
    nats_server: NatsServer, subject: str
) -> None:
    with NatsServer(jetstream=False) as plain:
        no_jetstream = run_handler(*base_args(subject, plain.url), "--delivery=jetstream")
    no_stream = run_handler(*base_args(subject, nats_server.url), "--delivery=jetstream")
    assert (no_jetstream.status, no_stream.status) == (2, 2)
    assert (
        "--delivery jetstream: the server has no JetStream; enable JetStream for it, "
        "or use --delivery auto"
    ) in no_jetstream.stderr
    assert (
        f"--delivery jetstream: no JetStream stream covers subject '{subject}'; create one, "
        "or use --delivery auto"
    ) in no_stream.stderr


def test_a_lost_ack_is_retried_once_the_attempt_times_out(
    nats_server: NatsServer, subject: str
) -> None:
    """Each attempt waits 5 s for its ack, then publishes again with the same id."""
    stream = "ACK" + subject.replace(".", "_").upper()
    create_stream(nats_server.url, StreamConfig(name=stream, subjects=[subject]))
    with NatsProxy(nats_server.url) as proxy:
        proxy.swallow(b'"seq"', 1)  # the first ack never arrives
        result = run_handler(*base_args(subject, proxy.url), "--timeout=8")
    assert result.status == 0, result.stderr
    assert "exit-handler: INFO: NATS attempt failed (nats: timeout); retrying in " in result.stderr
    assert f"stream {stream} seq 1) (duplicate: already stored)" in result.stderr


def test_a_full_stream_that_discards_new_events_is_retried_then_exit_3(
    nats_server: NatsServer, subject: str
) -> None:
    stream = "FULL" + subject.replace(".", "_").upper()
    create_stream(
        nats_server.url,
        StreamConfig(name=stream, subjects=[subject], max_msgs=1, discard=DiscardPolicy.NEW),
    )
    publish_to_stream(nats_server.url, subject)
    started = time.monotonic()
    result = run_handler(*base_args(subject, nats_server.url), "--timeout=3")
    elapsed = time.monotonic() - started
    assert result.status == 3, result.stderr
    assert 3 <= elapsed < 6
    line = last_line(result.stderr)
    assert f"JetStream stream '{stream}': maximum messages exceeded (JetStream error 10077)" in line
    assert "raise its limits" in line
    assert len(stream_messages(nats_server.url, stream)) == 1


def test_an_event_above_the_streams_max_msg_size_is_bad_input(
    nats_server: NatsServer, subject: str
) -> None:
    stream = "SMALL" + subject.replace(".", "_").upper()
    create_stream(nats_server.url, StreamConfig(name=stream, subjects=[subject], max_msg_size=64))
    result = run_handler(*base_args(subject, nats_server.url), "--timeout=30")
    assert result.status == 2, result.stderr
    line = last_line(result.stderr)
    assert f"JetStream stream '{stream}'" in line
    assert "message size exceeds maximum allowed (JetStream error 10054)" in line
    assert "raise the stream's max_msg_size" in line
    assert "retrying" not in result.stderr


def test_a_jetstream_error_this_version_does_not_know_is_retried_then_exit_3(
    nats_server: NatsServer, subject: str
) -> None:
    """A counter stream refuses a plain message with a code newer than the table: retried."""
    stream = "COUNTER" + subject.replace(".", "_").upper()
    create_stream(
        nats_server.url, StreamConfig(name=stream, subjects=[subject], allow_msg_counter=True)
    )
    result = run_handler(*base_args(subject, nats_server.url), "--timeout=1")
    assert result.status == 3, result.stderr
    assert (
        f"exit-handler: INFO: NATS attempt failed (JetStream stream '{stream}': message counter "
        "increment is missing (JetStream error 10169); an error this version does not know; "
        "retrying); retrying in "
    ) in result.stderr
    assert "before the deadline (1 s" in last_line(result.stderr)
    assert "unpublished event" in result.stderr


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ({"code": 500, "err_code": 10999}, "ServerError (JetStream error 10999)"),
        # Servers before 2.3 answer without err_code: still retried, not taken for no JetStream.
        ({"code": 503, "description": "unavailable"}, "unavailable (JetStream error None)"),
    ],
    ids=["no-description", "no-err-code"],
)
def test_a_jetstream_error_this_version_cannot_place_is_retried(
    subject: str, error: dict[str, Any], said: str
) -> None:
    """An API answer with no description still tells the operator what kind of error it was."""
    with NatsServer(jetstream=False) as server, answering(server.url, NAMES, {"error": error}):
        result = run_handler(*base_args(subject, server.url), "--timeout=1")
    assert result.status == 3, result.stderr
    assert (
        f"exit-handler: INFO: NATS attempt failed (JetStream stream lookup for subject "
        f"'{subject}': {said}; an error this version does not know; retrying); retrying in "
    ) in result.stderr


def test_a_jetstream_publish_expects_the_stream_it_found(
    nats_server: NatsServer, subject: str
) -> None:
    """`Nats-Expected-Stream`: no other stream may take the event instead (docs/events.md)."""
    stream = "EXPECTED" + subject.replace(".", "_").upper()
    create_stream(nats_server.url, StreamConfig(name=stream, subjects=[subject]))
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(*base_args(subject, nats_server.url))
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    assert f"jetstream delivery, stream {stream} seq 1" in result.stderr
    assert received[0].headers["Nats-Expected-Stream"] == stream


def test_a_stream_that_does_not_answer_the_publish_is_retried_never_published_core(
    subject: str,
) -> None:
    """The lookup names a stream that nothing serves by the publish: no one would keep it."""
    names = {"type": "io.nats.jetstream.api.v1.stream_names_response", "streams": ["GONE"]}
    with (
        NatsServer(jetstream=False) as server,
        answering(server.url, NAMES, names),
    ):
        result = run_handler(*base_args(subject, server.url), "--timeout=1")
    assert result.status == 3, result.stderr
    assert (
        "exit-handler: INFO: NATS attempt failed (stream 'GONE' did not answer); retrying in "
    ) in result.stderr
    assert "core delivery" not in result.stderr


@pytest.fixture(scope="module")
def hub_and_leaf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, str]]:
    """A hub (JetStream domain `hub`) holding the stream, and a leafnode server with a
    JetStream of its own (domain `leaf`) where the handler connects; yields (leaf, subject)."""
    directory = tmp_path_factory.mktemp("domains")
    port = free_port()
    hub = NatsServer(
        store_dir=directory / "hub",
        jetstream_domain="hub",
        config_extra=f'leafnodes {{ listen: "127.0.0.1:{port}" }}',
    )
    leaf = NatsServer(
        store_dir=directory / "leaf",
        jetstream_domain="leaf",
        config_extra=f'leafnodes {{ remotes: [{{ url: "nats://127.0.0.1:{port}" }}] }}',
    )
    subject = "events.domains"
    with hub, leaf:
        create_stream(hub.url, StreamConfig(name="EVENTS", subjects=[subject]))
        wait_for_answer(leaf.url, has_meta_leader, "$JS.hub.API.STREAM.NAMES")  # link is up
        yield leaf, subject


def test_jetstream_domain_from_the_environment_reaches_the_hub_stream(
    hub_and_leaf: tuple[NatsServer, str],
) -> None:
    leaf, subject = hub_and_leaf
    result = run_handler(
        *base_args(subject, leaf.url), env={"EXIT_HANDLER_JETSTREAM_DOMAIN": "hub"}
    )
    assert result.status == 0, result.stderr
    assert "jetstream delivery, stream EVENTS seq" in result.stderr


def test_a_jetstream_domain_nobody_serves_is_retried_then_exit_3(
    hub_and_leaf: tuple[NatsServer, str],
) -> None:
    leaf, subject = hub_and_leaf
    with Subscriber(leaf.url, subject) as subscriber:
        started = time.monotonic()
        result = run_handler(
            *base_args(subject, leaf.url), "--jetstream-domain=nowhere", "--timeout=3"
        )
        elapsed = time.monotonic() - started
        received = subscriber.wait_for(1, timeout=0.5)
    assert result.status == 3, result.stderr
    assert 3 <= elapsed < 6
    assert received == []
    assert last_line(result.stderr).endswith(
        "last error: no JetStream answered in domain 'nowhere'; check --jetstream-domain "
        "and the leafnode link to that domain)"
    )


@pytest.mark.parametrize("domain", ["hub.eu", "two words", "hub>", "*"])
def test_a_jetstream_domain_is_one_subject_token(domain: str) -> None:
    result = run_handler(
        *base_args("events", "nats://127.0.0.1:4222"), f"--jetstream-domain={domain}"
    )
    assert result.status == 2, result.stderr
    assert "--jetstream-domain: " in result.stderr
    assert "is not a JetStream domain" in result.stderr
