"""Finding this run's pushed model versions in a real GCS API (fake-gcs-server)."""

from __future__ import annotations

import http.server
import json
import logging
import random
import re
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import Result, base_args, run_handler, run_starts_now, upload_model
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from faults import Framing, GcsFaultProxy
from nats_auth import make_tls_files

from exit_handler.deadline import Deadline
from exit_handler.errors import BadInput, Refused, Unavailable
from exit_handler.pipeline_root import (
    Execution,
    PipelineRoot,
    RootLister,
    Window,
    _reason,
    _unverified_tls,
    check_segment,
    version_order,
)
from exit_handler.testing import FakeGcsServer, NatsServer, Subscriber, write_gcs_seed

PUSHED = "penguin-pipeline/Pusher/pushed_model"
BUCKET_METADATA_ENV = "DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA"


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
    assert (
        "exit-handler: WARNING: Pusher/pushed_model has 2 executions inside this run's window "
        "(9, 10): overlapping runs of the same pipeline? keeping them all"
    ) in log.splitlines()
    assert (
        "exit-handler: INFO: Pusher/pushed_model: 2 of 2 executions are this run's (9, 10); "
        "3 GCS requests so far"
    ) in log.splitlines()


@pytest.mark.parametrize("layout", ["empty bucket", "no Pusher directory"])
def test_a_root_without_pushes_gives_empty_arrays(
    nats_server: NatsServer, gcs: FakeGcsServer, bucket: str, layout: str
) -> None:
    if layout == "no Pusher directory":
        gcs.upload(bucket, "penguin-pipeline/Trainer/model/5/saved_model.pb", b"m")
    data, log = publish_dry_run(nats_server, bucket, run_starts_now())
    assert data["servingModelArtifacts"] == []
    assert data["artifacts"] == []
    assert (
        "exit-handler: INFO: Pusher/pushed_model: 0 of 0 executions are this run's (none); "
        "1 GCS requests so far"
    ) in log.splitlines()


def created_times(gcs: FakeGcsServer, bucket: str) -> dict[str, datetime]:
    """When GCS stamped each execution directory: its oldest object's timeCreated (asked of
    the emulator itself, past any proxy)."""
    query = urllib.parse.urlencode({"prefix": f"{PUSHED}/"})
    url = f"{gcs.endpoint}/storage/v1/b/{bucket}/o?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  # loopback emulator
        items = json.load(response)["items"]
    times: dict[str, datetime] = {}
    for item in items:
        version = item["name"][len(PUSHED) + 1 :].split("/")[0]
        created = datetime.fromisoformat(item["timeCreated"])
        times[version] = min(created, times.get(version, created))
    return times


def root_lister(
    bucket: str,
    start: datetime,
    end: datetime,
    *,
    windows: dict[str, Window] | None = None,
    deadline: Deadline | None = None,
) -> RootLister:
    return RootLister(
        PipelineRoot.parse(f"gs://{bucket}/penguin-pipeline"),
        window_start=start,
        window_end=end,
        deadline=deadline or Deadline(30),
        component_windows=windows or {},
    )


@pytest.fixture
def three_pushes(gcs: FakeGcsServer, bucket: str) -> dict[str, datetime]:
    """Executions 1, 2 and 3 of the Pusher, pushed in that order; when each was created."""
    for version in ("1", "2", "3"):
        upload_model(gcs, bucket, PUSHED, version)
    created = created_times(gcs, bucket)
    assert created["1"] < created["2"] < created["3"]
    return created


@pytest.mark.parametrize("window", ["run", "component"])
def test_an_execution_created_at_either_edge_of_the_window_is_this_runs(
    bucket: str,
    three_pushes: dict[str, datetime],
    caplog: pytest.LogCaptureFixture,
    window: str,
) -> None:
    """The window includes both its ends; executions after it are skipped, not a stop."""
    caplog.set_level(logging.INFO, logger="exit_handler.pipeline_root")
    edge = three_pushes["2"]
    hour = timedelta(hours=1)
    if window == "run":
        lister = root_lister(bucket, edge, edge)
    else:
        own = {"Pusher": Window(edge, edge, 1)}
        lister = root_lister(bucket, edge - hour, edge + hour, windows=own)
    executions = lister.executions("Pusher", "pushed_model")
    assert [execution.version for execution in executions] == ["2"]
    assert lister.overlapping == set()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_more_executions_than_the_nodes_pods_name_the_component_overlapping(
    bucket: str, three_pushes: dict[str, datetime], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exit_handler.pipeline_root")
    start = three_pushes["1"]
    crowded = {"Pusher": Window(start, start + timedelta(seconds=4), 2)}
    lister = root_lister(bucket, start, start, windows=crowded)
    executions = lister.executions("Pusher", "pushed_model")
    assert [execution.version for execution in executions] == ["1", "2", "3"]
    assert lister.overlapping == {"Pusher"}
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "INFO",
            "Pusher/pushed_model: 3 of 3 executions are this run's (1, 2, 3); "
            "4 GCS requests so far",
        ),
        (
            "WARNING",
            "Pusher/pushed_model has 3 executions inside the 4 s in which its node ran "
            "(1, 2, 3), more than its 2 pods wrote: another run of the pipeline ran Pusher in "
            "the same seconds; the event names Pusher in overlappingComponents",
        ),
    ]


def test_a_node_that_ran_no_pod_is_not_listed(
    bucket: str, three_pushes: dict[str, datetime]
) -> None:
    first, last = three_pushes["1"], three_pushes["3"]
    lister = root_lister(bucket, first, last, windows={"Pusher": Window(first, last, 0)})
    assert lister.executions("Pusher", "pushed_model") == []
    assert lister.requests == 0


def test_an_execution_carries_its_location_creation_and_first_metadata(
    gcs: FakeGcsServer, bucket: str
) -> None:
    """Each key of the metadata comes from the first object (by name) that sets it."""
    gcs.upload(bucket, f"{PUSHED}/12/saved_model.pb", b"m", {"blessed": "true", "run": "a"})
    gcs.upload(bucket, f"{PUSHED}/12/variables/variables.index", b"i", {"run": "b", "step": "7"})
    created = created_times(gcs, bucket)["12"]
    lister = root_lister(bucket, created, created)
    assert lister.executions("Pusher", "pushed_model") == [
        Execution(
            component="Pusher",
            output="pushed_model",
            version="12",
            uri=f"gs://{bucket}/{PUSHED}/12",
            pushed=True,
            created=created,
            metadata={"blessed": "true", "run": "a", "step": "7"},
        )
    ]


def test_only_a_zero_byte_directory_marker_is_not_a_push(gcs: FakeGcsServer, bucket: str) -> None:
    gcs.upload(bucket, f"{PUSHED}/1/", b"")  # the marker of a Pusher that did not push
    gcs.upload(bucket, f"{PUSHED}/2/fingerprint.pb", b"")  # an empty file is content
    gcs.upload(bucket, f"{PUSHED}/3/", b"model")  # a 'directory' object with bytes in it
    created = created_times(gcs, bucket)
    lister = root_lister(bucket, created["1"], created["3"])
    executions = lister.executions("Pusher", "pushed_model")
    pushed = [(execution.version, execution.pushed) for execution in executions]
    assert pushed == [("1", False), ("2", True), ("3", True)]


def test_execution_names_that_are_not_numbers_come_after_the_numbered_ones(
    gcs: FakeGcsServer, bucket: str
) -> None:
    for version in ("10", "9", "rerun-X"):
        upload_model(gcs, bucket, PUSHED, version)
    created = created_times(gcs, bucket)
    lister = root_lister(bucket, min(created.values()), max(created.values()))
    executions = lister.executions("Pusher", "pushed_model")
    assert [execution.version for execution in executions] == ["9", "10", "rerun-X"]


def test_missing_bucket_is_bad_input(nats_server: NatsServer, gcs: FakeGcsServer) -> None:
    result = run_handler(
        *base_args("events", nats_server.url),
        "--pipeline-root=gs://no-such-bucket-here/penguin",
        "--created-at=2026-11-26T10:00:00Z",
        "--dry-run",
    )
    assert result.status == 2
    assert re.fullmatch(
        r"exit-handler: ERROR: bad input: --pipeline-root: bucket 'no-such-bucket-here' does not "
        r"exist \(404 GET http://\S+/storage/v1/b/no-such-bucket-here/o\?\S+\); "
        r"check the pipeline root",
        result.stderr.strip().splitlines()[-1],
    )
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
        # Left to the handler, which must turn off the client's own bucket GET.
        monkeypatch.delenv(BUCKET_METADATA_ENV, raising=False)
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


def asked(proxy: GcsFaultProxy, bucket: str) -> list[dict[str, str]]:
    """What each request asked GCS: all must be object listings of the bucket."""
    queries = []
    for method, target in proxy.requests:
        path, _, query = target.partition("?")
        assert (method, path) == ("GET", f"/storage/v1/b/{bucket}/o")
        fields = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        keys = ("prefix", "delimiter", "fields", "maxResults", "pageToken")
        queries.append({key: fields[key] for key in keys if key in fields})
    return queries


def api_error(proxy: GcsFaultProxy, status: int, phrase: str, request: int = 0) -> str:
    """The first line of what google-cloud-storage raises for an injected `status`, cut to
    the 200 characters that the handler's lines quote of an error."""
    url = f"{proxy.endpoint}{proxy.requests[request][1]}"
    return f"{status} GET {url}: injected {status} {phrase}"[:200]


def test_every_page_of_prefixes_is_listed_and_only_what_is_read_is_asked(
    gcs: FakeGcsServer, bucket: str, gcs_proxy: GcsFaultProxy
) -> None:
    """GCS pages at 1,000 prefixes (the emulator never does: its first page is injected)."""
    upload_model(gcs, bucket, PUSHED, "11")
    upload_model(gcs, bucket, PUSHED, "12")
    created = created_times(gcs, bucket)
    prefix = f"{PUSHED}/"
    first_page = {"prefixes": [f"{prefix}11/"], "nextPageToken": f"{prefix}12/"}
    gcs_proxy.fail_next(200, body=json.dumps(first_page), match="delimiter")
    lister = root_lister(bucket, created["12"], created["12"])
    executions = lister.executions("Pusher", "pushed_model")
    assert [execution.version for execution in executions] == ["12"]
    prefixes = {"prefix": prefix, "delimiter": "/", "fields": "prefixes,nextPageToken"}
    objects = {"fields": "items(name,size,timeCreated,metadata),nextPageToken"}
    assert asked(gcs_proxy, bucket) == [
        {**prefixes, "maxResults": "1000"},
        {**prefixes, "maxResults": "1000", "pageToken": f"{prefix}12/"},
        {"prefix": f"{prefix}12/", **objects, "maxResults": "1000"},
        {"prefix": f"{prefix}11/", **objects, "maxResults": "1000"},  # older: the last look
    ]
    assert lister.requests == 4


def test_an_execution_deleted_between_the_two_listings_is_skipped(
    gcs: FakeGcsServer, bucket: str, gcs_proxy: GcsFaultProxy
) -> None:
    upload_model(gcs, bucket, PUSHED, "11")
    upload_model(gcs, bucket, PUSHED, "12")
    created = created_times(gcs, bucket)
    gcs_proxy.fail_next(200, body='{"kind": "storage#objects"}', match="pushed_model%2F12%2F")
    lister = root_lister(bucket, created["11"], created["12"])
    executions = lister.executions("Pusher", "pushed_model")
    assert [execution.version for execution in executions] == ["11"]


def test_throttling_and_outages_are_retried_with_growing_waits(
    gcs: FakeGcsServer,
    bucket: str,
    gcs_proxy: GcsFaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each wait is drawn up to a bound that doubles from 0.2 s to at most 5 s."""
    caplog.set_level(logging.INFO, logger="exit_handler.pipeline_root")
    pushed = upload_model(gcs, bucket, PUSHED, "12")
    created = created_times(gcs, bucket)["12"]
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    gcs_proxy.fail_next(429, match="delimiter")
    gcs_proxy.fail_next(503, 6, match="delimiter")
    lister = root_lister(bucket, created, created)
    executions = lister.executions("Pusher", "pushed_model")
    assert [execution.uri for execution in executions] == [pushed]
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    root = f"gs://{bucket}/penguin-pipeline"
    assert retried[:2] == [
        f"GCS listing of {root} failed ({api_error(gcs_proxy, 429, 'Too Many Requests')}); "
        "retrying",
        f"GCS listing of {root} failed ({api_error(gcs_proxy, 503, 'Service Unavailable', 1)}); "
        "retrying",
    ]
    assert len(retried) == 7
    assert len(gcs_proxy.requests) == 7 + 2


@pytest.mark.parametrize("status", [401, 403])
def test_gcs_refusing_the_listing_names_the_permission_to_grant(
    bucket: str, gcs_proxy: GcsFaultProxy, status: int
) -> None:
    """A 403 is refused at once; after a 401 the credentials cannot be refreshed (the
    emulator's are anonymous): refused too."""
    gcs_proxy.fail_next(status, match="delimiter")
    lister = root_lister(bucket, datetime.now().astimezone(), datetime.now().astimezone())
    with pytest.raises(Refused) as refused:
        lister.executions("Pusher", "pushed_model")
    reason = {
        401: "Anonymous credentials cannot be refreshed.",
        403: api_error(gcs_proxy, 403, "Forbidden"),
    }[status]
    assert str(refused.value) == (
        f"GCS refused to list gs://{bucket}/penguin-pipeline: {reason}; give the workflow's "
        "service account storage.objects.list on the bucket (on GKE: check its Workload "
        "Identity binding)"
    )
    assert len(gcs_proxy.requests) == 1  # not retried


def test_gcs_rejecting_the_listing_is_bad_input(bucket: str, gcs_proxy: GcsFaultProxy) -> None:
    gcs_proxy.fail_next(400, match="delimiter")
    lister = root_lister(bucket, datetime.now().astimezone(), datetime.now().astimezone())
    with pytest.raises(BadInput) as rejected:
        lister.executions("Pusher", "pushed_model")
    assert str(rejected.value) == (
        f"bad input: --pipeline-root: GCS rejected gs://{bucket}/penguin-pipeline: "
        f"{api_error(gcs_proxy, 400, 'Bad Request')}"
    )
    assert len(gcs_proxy.requests) == 1


class SpentAfter(Deadline):
    """A 30 s deadline that passes after `checks` looks at it, wherever the clock is."""

    def __init__(self, checks: int) -> None:
        super().__init__(30)
        self.checks = checks

    def expired(self) -> bool:
        self.checks -= 1
        return self.checks < 0


def test_the_deadline_passing_between_two_pages_ends_the_listing(
    gcs: FakeGcsServer, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exit_handler.pipeline_root")
    upload_model(gcs, bucket, PUSHED, "12")
    created = created_times(gcs, bucket)["12"]
    lister = root_lister(bucket, created, created, deadline=SpentAfter(1))
    with pytest.raises(Unavailable) as unavailable:
        lister.executions("Pusher", "pushed_model")
    root = f"gs://{bucket}/penguin-pipeline"
    assert str(unavailable.value) == (
        f"GCS did not answer the listing of {root} before the deadline (30 s; last error: "
        "the deadline passed between two pages)"
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"GCS listing of {root} failed (the deadline passed between two pages); retrying"
    ]


UNAVAILABLE: tuple[int, dict[str, object]] = (503, {"error": "temporarily_unavailable"})


class TokenServer:
    """An OAuth token endpoint on loopback that first answers `failures` times with
    `failure` (a status and its JSON body), then hands out a token."""

    def __init__(self, failures: int, failure: tuple[int, dict[str, object]]) -> None:
        self.failures = failures
        self.failure = failure
        self.asked = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                server.asked += 1
                body: dict[str, object] = {"access_token": "token", "expires_in": 3600}
                status = 200
                if server.asked <= server.failures:
                    status, body = server.failure
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/token"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def token_server(
    gcs: FakeGcsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[TokenServer]:
    """A service account's key (not the emulator's anonymous credentials), its token
    fetched from a server that fails three times (all the tries of one refresh, google-auth
    waiting in between) with the failure given as the fixture's param, or UNAVAILABLE."""
    server = TokenServer(3, getattr(request, "param", UNAVAILABLE))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    credentials = {
        "type": "service_account",
        "client_email": "exit-handler@project.iam.gserviceaccount.com",
        "private_key": pem.decode(),
        "token_uri": server.url,
    }
    (tmp_path / "adc.json").write_text(json.dumps(credentials))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("API_ENDPOINT_OVERRIDE", gcs.endpoint)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "adc.json"))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    yield server
    server.http.shutdown()
    server.http.server_close()


REFRESH_FAILED = "('temporarily_unavailable: None', {'error': 'temporarily_unavailable'})"


def test_credentials_that_could_not_be_refreshed_for_now_are_retried(
    gcs: FakeGcsServer,
    bucket: str,
    token_server: TokenServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="exit_handler.pipeline_root")
    pushed = upload_model(gcs, bucket, PUSHED, "12")
    created = created_times(gcs, bucket)["12"]
    lister = root_lister(bucket, created, created)
    executions = lister.executions("Pusher", "pushed_model")
    assert [execution.uri for execution in executions] == [pushed]
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retried == [f"GCS credentials could not be refreshed ({REFRESH_FAILED}); retrying"]
    assert token_server.asked == 4


@pytest.mark.parametrize(
    "token_server",
    [(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})],
    indirect=True,
)
def test_credentials_the_token_server_refuses_exit_4(
    gcs: FakeGcsServer, bucket: str, token_server: TokenServer
) -> None:
    now = datetime.now().astimezone()
    lister = root_lister(bucket, now, now)
    with pytest.raises(Refused) as refused:
        lister.executions("Pusher", "pushed_model")
    reason = (
        "('invalid_grant: Invalid JWT Signature.', {'error': 'invalid_grant', "
        "'error_description': 'Invalid JWT Signature.'})"
    )
    assert str(refused.value) == (
        f"GCS refused to list gs://{bucket}/penguin-pipeline: {reason}; give the workflow's "
        "service account storage.objects.list on the bucket (on GKE: check its Workload "
        "Identity binding)"
    )
    assert token_server.asked == 1  # not retried


def test_credentials_not_refreshed_before_the_deadline_exit_3(
    gcs: FakeGcsServer, bucket: str, token_server: TokenServer
) -> None:
    now = datetime.now().astimezone()
    lister = root_lister(bucket, now, now, deadline=SpentAfter(1))
    with pytest.raises(Unavailable) as unavailable:
        lister.executions("Pusher", "pushed_model")
    assert str(unavailable.value) == (
        f"GCS did not answer the listing of gs://{bucket}/penguin-pipeline before the deadline "
        f"(30 s; last error: {REFRESH_FAILED})"
    )


def test_a_listing_that_hangs_is_cut_at_the_deadline(bucket: str, gcs_proxy: GcsFaultProxy) -> None:
    """Each request's timeout is what is left of the deadline, not the client's 60 s."""
    gcs_proxy.hang_next(1000)
    now = datetime.now().astimezone()
    lister = root_lister(bucket, now, now, deadline=Deadline(0.5))
    with pytest.raises(Unavailable) as unavailable:
        lister.executions("Pusher", "pushed_model")
    line = str(unavailable.value)
    assert line.startswith(
        f"GCS did not answer the listing of gs://{bucket}/penguin-pipeline before the "
        "deadline (0.5 s; last error: HTTPConnectionPool(host='127.0.0.1', port="
    )
    # The client's own read timeout is 60 s: this one is what was left of the 0.5 s.
    timeout = re.fullmatch(r".*: Read timed out\. \(read timeout=([0-9.]+)\)\)", line)
    assert timeout is not None, line
    assert 0 < float(timeout.group(1)) <= 0.5


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
    assert result.stderr.strip().splitlines()[-1] == (
        f"exit-handler: ERROR: GCS gs://{bucket}/penguin-pipeline: TLS verification failed "
        "(unable to get local issuer certificate); a proxy that intercepts TLS needs its CA "
        "in REQUESTS_CA_BUNDLE"
    )


def test_a_cyclic_exception_chain_ends_the_search_for_a_tls_failure() -> None:
    """requests and urllib3 chain their errors; a chain that loops must not hang the handler."""
    first, second = OSError("first"), OSError("second")
    first.__cause__, second.__context__ = second, first
    assert _unverified_tls(first) is None
    verification = ssl.SSLCertVerificationError("certificate verify failed")
    second.__cause__ = verification
    assert _unverified_tls(first) is verification


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (TimeoutError(), "TimeoutError"),  # no message: its type says what happened
        (ConnectionError("reset\nby peer"), "reset"),
        (OSError("x" * 300), "x" * 200),
    ],
    ids=["no-message", "first-line", "cut"],
)
def test_a_failure_is_named_by_its_first_line_or_its_type(error: OSError, reason: str) -> None:
    assert _reason(error) == reason


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
        ("gs://bucket//", "bucket", "", "Pusher/pushed_model/"),
        ("gs://bucket/X", "bucket", "X", "X/Pusher/pushed_model/"),
    ],
)
def test_pipeline_root_parses(text: str, bucket: str, path: str, prefix: str) -> None:
    root = PipelineRoot.parse(text)
    assert (root.bucket, root.path) == (bucket, path)
    assert root.output_prefix("Pusher", "pushed_model") == prefix
    assert str(root) == text.rstrip("/")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "gs://bucket/{{workflow.parameters.pipeline-root}}/penguin-pipeline",
            "'gs://bucket/{{workflow.parameters.pipeline-root}}/penguin-pi' is an unresolved "
            "Argo variable",
        ),
        (
            "s3://bucket/pipelines/penguin-pipeline/which/is/not/on/google/cloud",
            "'s3://bucket/pipelines/penguin-pipeline/which/is/not/on/googl' is not a "
            "gs://bucket/path URI",
        ),
        ("GS://bucket/penguin", "'GS://bucket/penguin' is not a gs://bucket/path URI"),
        ("gs://Bucket_Name/penguin", "'Bucket_Name' is not a valid GCS bucket name"),
        ("gs://my..bucket/penguin", "'my..bucket' is not a valid GCS bucket name"),
        ("gs://" + "b" * 70 + "-/penguin", repr("b" * 63) + " is not a valid GCS bucket name"),
        (
            "gs://bucket/a//b",
            "'gs://bucket/a//b' has an empty, '.', '..' or unprintable path segment",
        ),
        (
            "gs://bucket/a/./b",
            "'gs://bucket/a/./b' has an empty, '.', '..' or unprintable path segment",
        ),
        (
            "gs://bucket/a/../b",
            "'gs://bucket/a/../b' has an empty, '.', '..' or unprintable path segment",
        ),
        (
            "gs://bucket/a/\tb",
            "'gs://bucket/a/\\tb' has an empty, '.', '..' or unprintable path segment",
        ),
        (
            "gs://bucket/pipelines/penguin-pipeline/../../another-teams-pipeline",
            "'gs://bucket/pipelines/penguin-pipeline/../../another-teams-p' has an empty, '.', "
            "'..' or unprintable path segment",
        ),
    ],
)
def test_pipeline_root_rejected_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}$"):
        PipelineRoot.parse(text)


@pytest.mark.parametrize("name", ["Pusher", "pushed_model", "Canary.Pusher-2", "_private"])
def test_component_and_output_names_accepted(name: str) -> None:
    assert check_segment(name) == name


@pytest.mark.parametrize(
    ("name", "shown"),
    [("a/b", "'a/b'"), ("..", "'..'"), (".", "'.'"), ("x" * 61 + "/", repr("x" * 60))],
)
def test_component_and_output_names_that_are_not_one_path_segment(name: str, shown: str) -> None:
    problem = f"{shown} is not a component or output name ([A-Za-z0-9_.-])"
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}$"):
        check_segment(name)
