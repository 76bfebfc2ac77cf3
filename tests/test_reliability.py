"""Faults between the exit handler and real servers, injected by proxies: nothing lost."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Result, base_args, run_handler, run_starts_now, upload_model
from faults import GcsFaultProxy, NatsProxy, override_info

from exit_handler.testing import (
    FakeGcsServer,
    NatsServer,
    Received,
    Subscriber,
    add_stream,
    stream_messages,
    write_gcs_seed,
)

PUSHED = "penguin-pipeline/Pusher/pushed_model"


def stored_ids(url: str) -> list[str]:
    return [message.headers["Nats-Msg-Id"] for message in stream_messages(url, "EVENTS")]


def in_background(*args: str) -> tuple[threading.Thread, list[Result]]:
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(run_handler(*args)))
    thread.start()
    return thread, results


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition(), "the fault was not reached"


def test_nats_restarted_between_connect_and_publish(tmp_path: Path, subject: str) -> None:
    with NatsServer(store_dir=tmp_path / "js") as server, NatsProxy(server.url) as proxy:
        add_stream(server.url, "EVENTS", subject)
        # Hold the answer to the handler's stream lookup: it has connected, not yet published.
        proxy.swallow(b'"streams"', 1)
        thread, results = in_background(*base_args(subject, proxy.url), "--timeout=30")
        wait_until(lambda: proxy.swallowed == 1)
        assert proxy.sever() >= 1  # the handler's connection drops...
        server.restart()  # ...and the server comes back on the same port and store
        thread.join(40)
        ids = stored_ids(server.url)
    (result,) = results
    assert result.status == 0, result.stderr
    assert "retrying" in result.stderr
    assert "jetstream delivery" in result.stderr
    assert len(ids) == 1


def test_a_lost_jetstream_ack_is_retried_with_the_same_id(tmp_path: Path, subject: str) -> None:
    with NatsServer(store_dir=tmp_path / "js") as server, NatsProxy(server.url) as proxy:
        add_stream(server.url, "EVENTS", subject)
        proxy.swallow(b'"seq"', 1)  # the first PubAck never arrives
        result = run_handler(*base_args(subject, proxy.url), "--timeout=30")
        ids = stored_ids(server.url)
        assert proxy.swallowed == 1
    assert result.status == 0, result.stderr
    assert "retrying" in result.stderr
    assert "(duplicate: already stored)" in result.stderr
    assert len(ids) == 1
    assert ids[0] in result.stderr


def test_a_server_before_nats_2_2_gets_the_payload_without_headers(subject: str) -> None:
    with (
        NatsServer(jetstream=False) as server,
        NatsProxy(server.url, rewrite_info=override_info(headers=False, version="2.1.9")) as old,
        Subscriber(server.url, subject) as subscriber,
    ):
        result = run_handler(*base_args(subject, old.url))
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    assert "predates headers (2.2)" in result.stderr
    assert len(received) == 1
    assert received[0].headers == {}
    assert json.loads(received[0].data)["status"] == "succeeded"


@pytest.fixture
def gcs_proxy(gcs: FakeGcsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsFaultProxy]:
    """A fault-injecting proxy in front of the emulator, with the client pointed at it."""
    with GcsFaultProxy(gcs.endpoint) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        yield proxy


def publish_through_gcs(
    nats_server: NatsServer,
    bucket: str,
    created_at: str,
    subject: str,
    *extra: str,
) -> tuple[Result, list[Received]]:
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(
            *base_args(subject, nats_server.url),
            f"--pipeline-root=gs://{bucket}/penguin-pipeline",
            f"--created-at={created_at}",
            "--clock-skew=0",
            *extra,
            env={},
        )
        received = subscriber.wait_for(1, timeout=5 if result.status == 0 else 0.3)
    return result, received


def test_gcs_throttling_and_outages_are_retried_then_published(
    nats_server: NatsServer,
    gcs: FakeGcsServer,
    bucket: str,
    subject: str,
    gcs_proxy: GcsFaultProxy,
) -> None:
    created_at = run_starts_now()
    pushed = upload_model(gcs, bucket, PUSHED, "12")
    gcs_proxy.fail_next(429, 2)
    gcs_proxy.fail_next(503, 2)
    gcs_proxy.reset_next(1)
    result, received = publish_through_gcs(nats_server, bucket, created_at, subject, "--timeout=30")
    requests = gcs_proxy.requests
    assert result.status == 0, result.stderr
    assert len(received) == 1
    assert result.stderr.count("GCS listing of") == 5  # each fault logged, then retried
    body = json.loads(received[0].data)
    assert [a["location"] for a in body["servingModelArtifacts"]] == [pushed]
    # Five faults, then the listing (prefixes, the version, nothing older): no other request.
    assert len(requests) == 5 + 2
    assert all("/o?" in path for _, path in requests)


def test_gcs_permission_denied_exits_4_and_publishes_nothing(
    nats_server: NatsServer,
    gcs_proxy: GcsFaultProxy,
    bucket: str,
    subject: str,
) -> None:
    gcs_proxy.fail_next(403, 1)
    result, received = publish_through_gcs(
        nats_server, bucket, "2026-11-26T10:00:00Z", subject, "--timeout=30"
    )
    assert result.status == 4, result.stderr
    assert received == []
    line = result.stderr.strip().splitlines()[-1]
    assert f"GCS refused to list gs://{bucket}/penguin-pipeline" in line
    assert "storage.objects.list" in line


def test_gcs_that_never_answers_exits_3_at_the_deadline(
    nats_server: NatsServer,
    gcs_proxy: GcsFaultProxy,
    bucket: str,
    subject: str,
) -> None:
    gcs_proxy.hang_next(1000)
    started = time.monotonic()
    result, received = publish_through_gcs(
        nats_server, bucket, "2026-11-26T10:00:00Z", subject, "--timeout=4"
    )
    elapsed = time.monotonic() - started
    assert result.status == 3, result.stderr
    assert 4 <= elapsed < 8
    assert received == []
    assert "GCS did not answer the listing" in result.stderr
    assert "before the deadline (4 s" in result.stderr


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    """A pushed model of 4,200 files (bucket `pages`): listing it takes five pages."""
    data_dir = tmp_path_factory.mktemp("gcs-pages")
    objects = {f"penguin-pipeline/Pusher/pushed_model/7/part-{n:05}": b"w" for n in range(4200)}
    write_gcs_seed(data_dir, "pages", objects)
    with FakeGcsServer(data_dir=data_dir, start_timeout=120) as server:
        yield server


def test_a_listing_of_many_pages_ends_at_the_deadline(
    nats_server: NatsServer,
    many_files: FakeGcsServer,
    subject: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with GcsFaultProxy(many_files.endpoint) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        answered, _ = publish_through_gcs(nats_server, "pages", "2026-11-26T10:00:00Z", subject)
        assert answered.status == 0, answered.stderr
        pages = [path for _, path in proxy.requests if "pushed_model%2F7%2F" in path]
        assert len(pages) >= 5  # the listing really pages
        # Every answer arrives, each in 1.8 s: within the per-request timeout, but five pages
        # outlast --timeout=4. The handler stops at the deadline, not after the last page.
        proxy.slow_next(1000, 1.8)
        started = time.monotonic()
        result, received = publish_through_gcs(
            nats_server, "pages", "2026-11-26T10:00:00Z", subject, "--timeout=4"
        )
        elapsed = time.monotonic() - started
        proxy.clear()
    assert result.status == 3, result.stderr
    assert 4 <= elapsed < 7
    assert received == []
    assert "GCS did not answer the listing" in result.stderr
