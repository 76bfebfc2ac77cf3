"""The fault proxies really fail as their docstrings say, seen by the real client libraries.

Each test puts a proxy from ``faults`` in front of the real fake-gcs-server or nats-server
and checks, with google-cloud-storage or nats-py, both that the fault shows up as the
exception the product code has to handle and that everything else still passes through.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import requests
import urllib3
from faults import Framing, GcsFaultProxy, NatsProxy, override_info
from google.api_core import exceptions as api
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats_auth import make_tls_files

from exit_handler.testing import FakeGcsServer, NatsServer

# google-cloud-storage 3.17 GETs the bucket from a background thread on the first listing
# of a new Client; tests that count requests turn that off (see GcsFaultProxy).
BUCKET_METADATA_ENV = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"
OBJECTS = ("a/1", "a/2", "b/x", "top")

# -- GCS -----------------------------------------------------------------------------------


@pytest.fixture
def gcs_bucket(gcs_server: FakeGcsServer) -> str:
    """A fresh bucket holding two "directories" and one top-level object."""
    name = f"faults-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(name)
    for object_name in OBJECTS:
        gcs_server.upload(name, object_name, b"data")
    return name


@pytest.fixture
def gcs_proxy(
    gcs_server: FakeGcsServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GcsFaultProxy]:
    """A proxy in front of the shared emulator, with google-cloud-storage pointed at it."""
    with GcsFaultProxy(gcs_server.endpoint) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        monkeypatch.setenv(BUCKET_METADATA_ENV, "1")
        yield proxy


def storage_client() -> Any:
    """A client as the exit handler builds it (reads STORAGE_EMULATOR_HOST now)."""
    from google.cloud import storage

    return storage.Client(project="<none>")


def listing(client: Any, bucket: str, timeout: float = 2) -> tuple[list[str], list[str]]:
    """(object names, prefixes) of the bucket's top level, as the exit handler lists it."""
    blobs = client.list_blobs(bucket, prefix="", delimiter="/", retry=None, timeout=timeout)
    names = [blob.name for blob in blobs]
    return names, sorted(blobs.prefixes)


def causes(err: BaseException) -> list[type[BaseException]]:
    """The classes of the exceptions chained under ``err`` (requests wraps urllib3 wraps
    the socket error)."""
    found: list[type[BaseException]] = []
    current = err.__context__ or err.__cause__
    while current is not None and len(found) < 10:
        found.append(type(current))
        current = current.__context__ or current.__cause__
    return found


TOP_LEVEL = (["top"], ["a/", "b/"])


def test_gcs_proxy_forwards_listing_and_upload_on_one_keep_alive_connection(
    gcs_proxy: GcsFaultProxy, gcs_bucket: str
) -> None:
    client = storage_client()
    for _ in range(3):
        assert listing(client, gcs_bucket) == TOP_LEVEL
    data = b"0123456789" * 1000  # a multipart POST with a Content-Length body
    client.bucket(gcs_bucket).blob("c/new").upload_from_string(data, retry=None, timeout=2)
    assert client.bucket(gcs_bucket).blob("c/new").download_as_bytes(retry=None) == data
    assert listing(client, gcs_bucket) == (["top"], ["a/", "b/", "c/"])

    methods = [method for method, _ in gcs_proxy.requests]
    assert methods == ["GET"] * 3 + ["POST"] + ["GET"] * 2
    list_path = gcs_proxy.requests[0][1]
    assert list_path.startswith(f"/storage/v1/b/{gcs_bucket}/o?")
    assert "delimiter=%2F" in list_path
    assert gcs_proxy.requests[3][1].startswith(f"/upload/storage/v1/b/{gcs_bucket}/o?")
    assert gcs_proxy.forwarded == 6
    assert gcs_proxy.connections == 1


def test_gcs_resumable_upload_session_stays_on_the_proxy(
    gcs_proxy: GcsFaultProxy, gcs_bucket: str
) -> None:
    """fake-gcs-server's session URL names itself; the proxy points it back at itself."""
    client = storage_client()
    session = client.bucket(gcs_bucket).blob("c/resumable").create_resumable_upload_session()
    assert session.startswith(f"{gcs_proxy.endpoint}/upload/")
    with requests.Session() as http:
        http.trust_env = False  # loopback: never through an HTTP(S)_PROXY from the env
        answer = http.put(session, data=b"payload", timeout=2)
    assert answer.status_code == 200, answer.text
    assert [method for method, _ in gcs_proxy.requests] == ["POST", "PUT"]
    assert listing(client, gcs_bucket) == (["top"], ["a/", "b/", "c/"])


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (503, api.ServiceUnavailable, "backendError"),
        (429, api.TooManyRequests, "rateLimitExceeded"),
        (403, api.Forbidden, "forbidden"),
    ],
)
def test_gcs_status_fault_raises_the_api_core_class_once(
    gcs_proxy: GcsFaultProxy,
    gcs_bucket: str,
    status: int,
    error: type[api.GoogleAPICallError],
    reason: str,
) -> None:
    client = storage_client()
    gcs_proxy.fail_next(status)
    with pytest.raises(error) as raised:
        listing(client, gcs_bucket)
    assert type(raised.value) is error
    assert raised.value.code == status
    assert raised.value.errors[0]["reason"] == reason
    assert f"injected {status}" in raised.value.message
    assert listing(client, gcs_bucket) == TOP_LEVEL  # the fault is spent
    assert len(gcs_proxy.requests) == 2
    assert gcs_proxy.forwarded == 1


def test_gcs_faults_are_spent_in_order_then_requests_pass(
    gcs_proxy: GcsFaultProxy, gcs_bucket: str
) -> None:
    client = storage_client()
    gcs_proxy.fail_next(503, count=2)
    gcs_proxy.fail_next(429, body='{"error": {"code": 429, "message": "slow down"}}')
    assert gcs_proxy.pending_faults == 3
    for expected in (api.ServiceUnavailable, api.ServiceUnavailable, api.TooManyRequests):
        with pytest.raises(expected) as raised:
            listing(client, gcs_bucket)
    assert raised.value.message.endswith("slow down")
    assert gcs_proxy.pending_faults == 0
    assert listing(client, gcs_bucket) == TOP_LEVEL
    assert (len(gcs_proxy.requests), gcs_proxy.forwarded) == (4, 1)


def test_gcs_hang_ends_in_a_read_timeout(gcs_proxy: GcsFaultProxy, gcs_bucket: str) -> None:
    client = storage_client()
    gcs_proxy.hang_next()
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        listing(client, gcs_bucket, timeout=0.5)
    assert 0.45 < time.monotonic() - started < 2
    assert listing(client, gcs_bucket) == TOP_LEVEL  # on a new connection
    assert (len(gcs_proxy.requests), gcs_proxy.forwarded) == (2, 1)


def test_gcs_stop_releases_a_hanging_request(gcs_proxy: GcsFaultProxy, gcs_bucket: str) -> None:
    """A hung request must not hold up teardown; its client sees the connection close."""
    client = storage_client()
    gcs_proxy.hang_next()
    failures: list[BaseException] = []

    def list_in_background() -> None:
        try:
            listing(client, gcs_bucket, timeout=30)
        except Exception as err:
            failures.append(err)

    thread = threading.Thread(target=list_in_background)
    thread.start()
    deadline = time.monotonic() + 5
    while not gcs_proxy.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    gcs_proxy.stop()
    thread.join(5)
    assert time.monotonic() - started < 2
    assert not thread.is_alive()
    assert [type(err) for err in failures] == [requests.exceptions.ConnectionError]


def test_gcs_reset_raises_connection_error_from_a_reset(
    gcs_proxy: GcsFaultProxy, gcs_bucket: str
) -> None:
    client = storage_client()
    assert listing(client, gcs_bucket) == TOP_LEVEL  # the reset hits a pooled connection
    gcs_proxy.reset_next()
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectionError) as raised:
        listing(client, gcs_bucket)
    assert time.monotonic() - started < 1
    assert type(raised.value) is requests.exceptions.ConnectionError
    assert ConnectionResetError in causes(raised.value)
    assert listing(client, gcs_bucket) == TOP_LEVEL
    assert gcs_proxy.connections == 2


@pytest.mark.parametrize(
    ("framing", "error", "cause"),
    [
        # urllib3 counts the bytes against Content-Length (its IncompleteRead is http.client's)
        ("length", requests.exceptions.ChunkedEncodingError, http.client.IncompleteRead),
        # the chunk size line that should follow the chunk never comes
        ("chunked", requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError),
        # nothing says the body is short: only its JSON, half a document, shows the cut
        ("close", requests.exceptions.JSONDecodeError, json.JSONDecodeError),
    ],
)
def test_gcs_cut_mid_body_raises_what_a_real_cut_raises(
    gcs_proxy: GcsFaultProxy,
    gcs_bucket: str,
    framing: Framing,
    error: type[Exception],
    cause: type[Exception],
) -> None:
    client = storage_client()
    gcs_proxy.cut_next(framing=framing)
    with pytest.raises(error) as raised:
        listing(client, gcs_bucket)
    assert type(raised.value) is error
    assert any(issubclass(found, cause) for found in causes(raised.value))
    assert listing(client, gcs_bucket) == TOP_LEVEL  # on a new connection: the cut closed it
    assert (len(gcs_proxy.requests), gcs_proxy.forwarded, gcs_proxy.connections) == (2, 1, 2)


def test_gcs_proxy_over_tls_is_refused_untrusted_and_forwards_trusted(
    gcs_server: FakeGcsServer, gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = make_tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    with GcsFaultProxy(gcs_server.endpoint, tls=context) as proxy:
        assert proxy.endpoint.startswith("https://")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        monkeypatch.setenv(BUCKET_METADATA_ENV, "1")
        with pytest.raises(requests.exceptions.SSLError) as raised:
            listing(storage_client(), gcs_bucket)
        assert ssl.SSLCertVerificationError in causes(raised.value)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(files.ca))
        assert listing(storage_client(), gcs_bucket) == TOP_LEVEL
        assert (len(proxy.requests), proxy.forwarded) == (1, 1)  # the handshake failed first


def test_gcs_match_aims_a_fault_past_the_background_bucket_get(
    gcs_proxy: GcsFaultProxy, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bucket metadata fetch on (the default), creating a new Client's first
    listing sends a GET of the bucket from another thread; unmatched, the fault would go to
    whichever arrives first.  Here the GET is let in first, so only ``match`` saves it."""
    monkeypatch.delenv(BUCKET_METADATA_ENV)
    gcs_proxy.fail_next(503, match="/o?")
    blobs = storage_client().list_blobs(gcs_bucket, delimiter="/", retry=None, timeout=2)
    bucket_get = f"/storage/v1/b/{gcs_bucket}?"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until the GET got its answer
        seen = any(path.startswith(bucket_get) for _, path in gcs_proxy.requests)
        if seen and gcs_proxy.forwarded == 1:
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"no background GET of the bucket was forwarded: {gcs_proxy.requests}")
    assert gcs_proxy.pending_faults == 1
    with pytest.raises(api.ServiceUnavailable):
        list(blobs)  # the listing request is sent only now
    assert gcs_proxy.pending_faults == 0
    assert [method for method, _ in gcs_proxy.requests] == ["GET", "GET"]


# -- NATS ----------------------------------------------------------------------------------


async def connect(url: str) -> NATS:
    """Connect as the exit handler does: no reconnects, so a cut connection stays cut."""

    async def quiet(_: Exception) -> None:
        return None

    return await nats.connect(
        url,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.05,
        connect_timeout=2,
        error_cb=quiet,
    )


def add_stream(url: str, subject: str) -> str:
    """Create a stream directly on the server (not through the proxy); return its name."""
    name = f"FAULTS_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        nc = await connect(url)
        await nc.jetstream().add_stream(name=name, subjects=[subject])
        await nc.close()

    asyncio.run(create())
    return name


def stored_messages(url: str, stream: str) -> int:
    async def count() -> int:
        nc = await connect(url)
        info = await nc.jetstream().stream_info(stream)
        await nc.close()
        messages: int = info.state.messages
        return messages

    return asyncio.run(count())


def test_nats_proxy_relays_msg_and_hmsg_intact(nats_server: NatsServer, subject: str) -> None:
    """Headers, a payload spanning many reads, and a payload with CRLF in it all survive
    the framing."""
    big = bytes(range(256)) * 1200  # 300 KiB
    sent = [
        (b"plain", None),
        (b"line\r\nMSG fake 1 5\r\nhello\r\n", {"ce-id": "1"}),
        (big, {"Nats-Msg-Id": "x", "k": "v"}),
    ]

    async def scenario(proxy: NatsProxy) -> list[Msg]:
        nc = await connect(proxy.url)
        sub = await nc.subscribe(subject)
        for data, headers in sent:
            await nc.publish(subject, data, headers=headers)
        received = [await sub.next_msg(timeout=2) for _ in sent]
        await nc.close()
        return received

    with NatsProxy(nats_server.url) as proxy:
        received = asyncio.run(scenario(proxy))
        assert (proxy.connections, proxy.messages, proxy.swallowed) == (1, 3, 0)
        # The pump counts bytes after relaying them: the client may read them first.
        deadline = time.monotonic() + 2
        while proxy.bytes_down <= len(big) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.bytes_down > len(big)
    assert [(msg.data, msg.headers) for msg in received] == sent


def test_nats_rewritten_info_pretends_to_be_nats_2_1_9(
    nats_server: NatsServer, subject: str
) -> None:
    async def scenario(proxy: NatsProxy) -> tuple[str, bytes]:
        nc = await connect(proxy.url)
        version = nc.connected_server_version
        sub = await nc.subscribe(subject)
        await nc.publish(subject, b"no headers")
        message = await sub.next_msg(timeout=2)
        await nc.close()
        return f"{version.major}.{version.minor}.{version.patch}", message.data

    rewrite = override_info(headers=False, version="2.1.9")
    with NatsProxy(nats_server.url, rewrite_info=rewrite) as proxy:
        assert asyncio.run(scenario(proxy)) == ("2.1.9", b"no headers")
        assert proxy.infos_rewritten == 1


def test_nats_rewritten_info_shrinks_max_payload(nats_server: NatsServer, subject: str) -> None:
    async def scenario(proxy: NatsProxy) -> int:
        nc = await connect(proxy.url)
        try:
            with pytest.raises(nats.errors.MaxPayloadError):
                await nc.publish(subject, b"x" * 1025)
            await nc.publish(subject, b"x" * 1024)
            await nc.flush(timeout=2)
            max_payload: int = nc.max_payload
            return max_payload
        finally:
            await nc.close()

    with NatsProxy(nats_server.url, rewrite_info=override_info(max_payload=1024)) as proxy:
        assert asyncio.run(scenario(proxy)) == 1024


def test_nats_swallowed_ack_times_out_once_and_the_retry_is_deduplicated(
    nats_server: NatsServer, subject: str
) -> None:
    stream = add_stream(nats_server.url, subject)
    headers = {"Nats-Msg-Id": f"event-{uuid.uuid4()}"}

    async def scenario(proxy: NatsProxy) -> tuple[float, Any]:
        nc = await connect(proxy.url)
        js = nc.jetstream()
        started = time.monotonic()
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(subject, b"event", timeout=1, headers=headers)
        waited = time.monotonic() - started
        ack = await js.publish(subject, b"event", timeout=1, headers=headers)
        await nc.close()
        return waited, ack

    with NatsProxy(nats_server.url) as proxy:
        proxy.swallow(b'"stream"', 1)
        waited, ack = asyncio.run(scenario(proxy))
        assert proxy.swallowed == 1
    assert 0.9 < waited < 2
    assert (ack.stream, ack.seq, ack.duplicate) == (stream, 1, True)
    assert stored_messages(nats_server.url, stream) == 1


def test_nats_drop_acks_loses_every_ack_until_turned_off(
    nats_server: NatsServer, subject: str
) -> None:
    stream = add_stream(nats_server.url, subject)

    async def scenario(proxy: NatsProxy) -> Any:
        nc = await connect(proxy.url)
        js = nc.jetstream()
        for data in (b"one", b"two"):
            with pytest.raises(nats.errors.TimeoutError):
                await js.publish(subject, data, timeout=0.3)
        proxy.drop_acks = False
        ack = await js.publish(subject, b"three", timeout=1)
        await nc.close()
        return ack

    with NatsProxy(nats_server.url, drop_acks=True) as proxy:
        ack = asyncio.run(scenario(proxy))
        assert proxy.swallowed == 2
    assert (ack.stream, ack.seq) == (stream, 3)  # the lost acks' messages were stored
    assert stored_messages(nats_server.url, stream) == 3


def test_nats_swallow_drops_only_matching_messages_and_only_count(
    nats_server: NatsServer, subject: str
) -> None:
    async def scenario(proxy: NatsProxy) -> list[bytes]:
        nc = await connect(proxy.url)
        sub = await nc.subscribe(subject)
        for data in (b"a", b"secret 1", b"b", b"secret 2"):
            await nc.publish(subject, data, headers={"secret": "in headers only"})
        received = [(await sub.next_msg(timeout=2)).data for _ in range(3)]
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.1)
        await nc.close()
        return received

    with NatsProxy(nats_server.url) as proxy:
        proxy.swallow(b"secret", 1)
        assert asyncio.run(scenario(proxy)) == [b"a", b"b", b"secret 2"]
        assert (proxy.swallowed, proxy.messages) == (1, 3)


def test_nats_sever_cuts_current_connections_but_new_ones_work(
    nats_server: NatsServer, subject: str
) -> None:
    """A client that has not read the EOF yet publishes into the void and its flush waits
    out its whole timeout; one that has read it is refused at once."""

    async def scenario(proxy: NatsProxy) -> float:
        unaware, aware = await connect(proxy.url), await connect(proxy.url)
        listener = await connect(nats_server.url)
        sub = await listener.subscribe(subject)
        await listener.flush()
        assert proxy.sever() == 2

        await unaware.publish(subject, b"lost")  # buffered: no error yet
        started = time.monotonic()
        with pytest.raises(nats.errors.FlushTimeoutError):
            await unaware.flush(timeout=1)
        waited = time.monotonic() - started
        assert unaware.is_closed
        assert isinstance(unaware.last_error, ConnectionResetError)

        with pytest.raises(nats.errors.ConnectionClosedError):
            await aware.publish(subject, b"refused")

        fresh = await connect(proxy.url)
        await fresh.publish(subject, b"after")
        await fresh.flush(timeout=2)
        assert (await sub.next_msg(timeout=2)).data == b"after"
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.1)  # "lost" never arrived
        await fresh.close()
        await listener.close()
        return waited

    with NatsProxy(nats_server.url) as proxy:
        waited = asyncio.run(scenario(proxy))
        assert (proxy.connections, proxy.severed) == (3, 2)
    assert 0.9 < waited < 2


def test_nats_pause_refuses_connections_and_resume_accepts_on_the_same_port(
    nats_server: NatsServer, subject: str
) -> None:
    async def scenario(proxy: NatsProxy) -> None:
        existing = await connect(proxy.url)
        port = proxy.port
        proxy.pause()
        started = time.monotonic()
        with pytest.raises(nats.errors.NoServersError):
            await connect(proxy.url)
        assert time.monotonic() - started < 1
        await existing.publish(subject, b"still relayed")
        await existing.flush(timeout=2)  # pausing leaves current connections alone
        proxy.resume()
        assert proxy.port == port
        again = await connect(proxy.url)
        await again.flush(timeout=2)
        await again.close()
        await existing.close()

    with NatsProxy(nats_server.url) as proxy:
        asyncio.run(scenario(proxy))
        assert proxy.connections == 2
