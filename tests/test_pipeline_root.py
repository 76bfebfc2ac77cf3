"""Finding this run's pushed model versions in a real GCS API (fake-gcs-server)."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Result, base_args, run_handler, run_starts_now, upload_model
from faults import Framing, GcsFaultProxy
from nats_auth import make_tls_files

from exit_handler.pipeline_root import PipelineRoot, version_order
from exit_handler.testing import FakeGcsServer, NatsServer, Subscriber, write_gcs_seed

PUSHED = "penguin-pipeline/Pusher/pushed_model"


def publish_dry_run(
    nats_server: NatsServer, bucket: str, created_at: str, *extra: str
) -> tuple[dict[str, object], str]:
    result = run_handler(
        *base_args("events", nats_server.url),
        f"--pipeline-root=gs://{bucket}/penguin-pipeline",
        f"--created-at={created_at}",
        "--clock-skew=0",
        "--dry-run",
        *extra,
    )
    assert result.status == 0, result.stderr
    payload = result.dry_run["payload"]
    assert isinstance(payload, str)
    return json.loads(payload), result.stderr


def serving(data: dict[str, object]) -> list[tuple[str, str]]:
    entries = data["servingModelArtifacts"]
    assert isinstance(entries, list)
    return [(entry["name"], entry["location"]) for entry in entries]


def test_this_runs_push_among_earlier_runs_and_an_unblessed_marker(
    nats_server: NatsServer, gcs: FakeGcsServer, bucket: str
) -> None:
    upload_model(gcs, bucket, PUSHED, "101")
    upload_model(gcs, bucket, PUSHED, "102")
    created_at = run_starts_now()
    gcs.upload(bucket, f"{PUSHED}/103/", b"")  # this run's Evaluator did not bless: marker only
    pushed = upload_model(gcs, bucket, PUSHED, "104")
    data, log = publish_dry_run(nats_server, bucket, created_at)
    assert serving(data) == [
        ("penguin-pipeline:penguin-pipeline-x7k2p:Pusher:pushed_model:0", pushed)
    ]
    assert data["artifacts"] == []
    assert "overlapping runs" in log  # 103 and 104 are both inside the window
    assert "103, 104" in log


def test_a_marker_only_version_is_not_pushed(
    nats_server: NatsServer, gcs: FakeGcsServer, bucket: str
) -> None:
    upload_model(gcs, bucket, PUSHED, "7")
    created_at = run_starts_now()
    gcs.upload(bucket, f"{PUSHED}/8/", b"")
    data, _ = publish_dry_run(nats_server, bucket, created_at)
    assert serving(data) == []


def test_several_pusher_components_in_the_given_order(
    nats_server: NatsServer, gcs: FakeGcsServer, bucket: str
) -> None:
    created_at = run_starts_now()
    canary = upload_model(gcs, bucket, "penguin-pipeline/CanaryPusher/pushed_model", "31")
    main = upload_model(gcs, bucket, PUSHED, "30")
    data, _ = publish_dry_run(
        nats_server, bucket, created_at, "--pusher-components=Pusher,CanaryPusher"
    )
    assert serving(data) == [
        ("penguin-pipeline:penguin-pipeline-x7k2p:Pusher:pushed_model:0", main),
        ("penguin-pipeline:penguin-pipeline-x7k2p:CanaryPusher:pushed_model:0", canary),
    ]


def test_overlapping_pushes_are_kept_oldest_first_numerically(
    nats_server: NatsServer, gcs: FakeGcsServer, bucket: str
) -> None:
    created_at = run_starts_now()
    nine = upload_model(gcs, bucket, PUSHED, "9")
    ten = upload_model(gcs, bucket, PUSHED, "10")  # sorts before 9 as text, after as a number
    data, log = publish_dry_run(nats_server, bucket, created_at)
    assert [location for _, location in serving(data)] == [nine, ten]
    assert [name[-1] for name, _ in serving(data)] == ["0", "1"]
    assert "Pusher/pushed_model has 2 executions inside this run's window (9, 10)" in log


@pytest.mark.parametrize("layout", ["empty bucket", "no Pusher directory"])
def test_a_root_without_pushes_gives_empty_arrays(
    nats_server: NatsServer, gcs: FakeGcsServer, bucket: str, layout: str
) -> None:
    if layout == "no Pusher directory":
        gcs.upload(bucket, "penguin-pipeline/Trainer/model/5/saved_model.pb", b"m")
    data, _ = publish_dry_run(nats_server, bucket, run_starts_now())
    assert data["servingModelArtifacts"] == []
    assert data["artifacts"] == []


def test_missing_bucket_is_bad_input(nats_server: NatsServer, gcs: FakeGcsServer) -> None:
    result = run_handler(
        *base_args("events", nats_server.url),
        "--pipeline-root=gs://no-such-bucket-here/penguin",
        "--created-at=2026-11-26T10:00:00Z",
        "--dry-run",
    )
    assert result.status == 2
    assert "--pipeline-root: bucket 'no-such-bucket-here' does not exist" in result.stderr
    assert result.stdout == ""


def publish_through(
    nats_server: NatsServer, bucket: str, created_at: str, timeout: int
) -> tuple[Result, list[dict[str, object]]]:
    """Run the handler for real (no --dry-run); return it and the events it published."""
    subject = f"events.{uuid.uuid4().hex[:12]}"
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(
            *base_args(subject, nats_server.url),
            f"--pipeline-root=gs://{bucket}/penguin-pipeline",
            f"--created-at={created_at}",
            "--clock-skew=0",
            f"--timeout={timeout}",
        )
        received = subscriber.wait_for(1, timeout=5 if result.status == 0 else 0.3)
    return result, [json.loads(message.data) for message in received]


def locations(event: dict[str, object]) -> list[str]:
    entries = event["servingModelArtifacts"]
    assert isinstance(entries, list)
    return [entry["location"] for entry in entries]


@pytest.fixture
def gcs_proxy(gcs: FakeGcsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsFaultProxy]:
    """A fault-injecting proxy in front of the emulator, with the client pointed at it."""
    with GcsFaultProxy(gcs.endpoint) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        yield proxy


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_listing_responses_cut_mid_body_are_retried_then_published(
    nats_server: NatsServer,
    gcs: FakeGcsServer,
    bucket: str,
    gcs_proxy: GcsFaultProxy,
    framing: Framing,
) -> None:
    """Both listings (the prefixes, then the version's objects) lose their body twice."""
    created_at = run_starts_now()
    pushed = upload_model(gcs, bucket, PUSHED, "12")
    gcs_proxy.cut_next(2, framing=framing)
    gcs_proxy.cut_next(2, framing=framing, match="pushed_model%2F12%2F")
    result, events = publish_through(nats_server, bucket, created_at, timeout=30)
    assert result.status == 0, result.stderr
    assert [locations(event) for event in events] == [[pushed]]
    assert result.stderr.count("GCS listing of") == 4  # each cut logged, then retried
    # Four cut, then the two listings whole: nothing else asked.
    assert (len(gcs_proxy.requests), gcs_proxy.forwarded) == (6, 2)


def test_listing_responses_cut_until_the_deadline_exit_3(
    nats_server: NatsServer, bucket: str, gcs_proxy: GcsFaultProxy
) -> None:
    gcs_proxy.cut_next(1000)
    started = time.monotonic()
    result, events = publish_through(nats_server, bucket, "2026-11-26T10:00:00Z", timeout=4)
    elapsed = time.monotonic() - started
    assert result.status == 3, result.stderr
    assert 4 <= elapsed < 8
    assert events == []
    line = result.stderr.strip().splitlines()[-1]
    assert "did not answer the listing" in line
    assert "before the deadline (4 s; last error:" in line
    assert "IncompleteRead" in result.stderr  # each cut logged as it was retried
    assert gcs_proxy.forwarded == 0


@pytest.fixture
def tls_proxy(
    gcs: FakeGcsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[GcsFaultProxy, Path]]:
    """The proxy serving HTTPS with a certificate of a private CA, and that CA's file;
    the client is pointed at it but does not trust the CA yet."""
    files = make_tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    with GcsFaultProxy(gcs.endpoint, tls=context) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        yield proxy, files.ca


def test_listing_over_tls_with_the_ca_trusted(
    nats_server: NatsServer,
    gcs: FakeGcsServer,
    bucket: str,
    tls_proxy: tuple[GcsFaultProxy, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_proxy[1]))
    created_at = run_starts_now()
    pushed = upload_model(gcs, bucket, PUSHED, "5")
    result, events = publish_through(nats_server, bucket, created_at, timeout=30)
    assert result.status == 0, result.stderr
    assert [locations(event) for event in events] == [[pushed]]


def test_an_untrusted_tls_certificate_exits_4_without_retrying(
    nats_server: NatsServer, bucket: str, tls_proxy: tuple[GcsFaultProxy, Path]
) -> None:
    """A TLS error is a transport error, but waiting does not make a certificate trusted."""
    result, events = publish_through(nats_server, bucket, "2026-11-26T10:00:00Z", timeout=30)
    assert result.status == 4, result.stderr
    assert events == []
    assert "retrying" not in result.stderr
    assert tls_proxy[0].requests == []  # the handshake failed: not one request was sent
    line = result.stderr.strip().splitlines()[-1]
    assert f"GCS gs://{bucket}/penguin-pipeline: TLS verification failed" in line
    assert "REQUESTS_CA_BUNDLE" in line


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeGcsServer, str]]:
    """A pipeline root holding 1,000 earlier runs' pushes, loaded through `-data`."""
    data_dir = tmp_path_factory.mktemp("gcs-seed")
    objects = {
        f"{PUSHED}/{version}/{name}": b"model"
        for version in range(1, 1001)
        for name in ("saved_model.pb", "variables/variables.index")
    }
    write_gcs_seed(Path(data_dir), "history", objects)
    with FakeGcsServer(data_dir=data_dir, start_timeout=60) as server:
        yield server, "history"


def test_this_run_among_a_thousand_earlier_versions(
    nats_server: NatsServer, history: tuple[FakeGcsServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gcs, bucket = history
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    created_at = run_starts_now()
    pushed = upload_model(gcs, bucket, PUSHED, "1001")
    data, log = publish_dry_run(nats_server, bucket, created_at)
    assert serving(data) == [
        ("penguin-pipeline:penguin-pipeline-x7k2p:Pusher:pushed_model:0", pushed)
    ]
    # One page of prefixes, this run's version, then the first older one: the history
    # of 1,000 versions costs one listing page, not 1,000 requests.
    assert "1 of 1001 executions are this run's (1001); 3 GCS requests" in log


def test_versions_sort_numerically_then_by_name() -> None:
    assert sorted(["10", "9", "b", "100", "a"], key=version_order) == ["9", "10", "100", "a", "b"]


@pytest.mark.parametrize(
    ("text", "bucket", "path", "prefix"),
    [
        ("gs://bucket/path/to/root", "bucket", "path/to/root", "path/to/root/Pusher/pushed_model/"),
        ("gs://bucket/path/", "bucket", "path", "path/Pusher/pushed_model/"),
        ("gs://bucket", "bucket", "", "Pusher/pushed_model/"),
    ],
)
def test_pipeline_root_parses(text: str, bucket: str, path: str, prefix: str) -> None:
    root = PipelineRoot.parse(text)
    assert (root.bucket, root.path) == (bucket, path)
    assert root.output_prefix("Pusher", "pushed_model") == prefix
    assert str(root) == text.rstrip("/")
