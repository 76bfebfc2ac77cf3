"""Delivery against real servers: every auth method, TLS, refusals, deadlines, limits."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import base_args, run_handler, write
from faults import NatsProxy, override_info
from nats_auth import (
    jwt_auth,
    make_tls_files,
    new_nkey,
    nkey_server_config,
)

from exit_handler.delivery import NatsAuth, NatsSettings
from exit_handler.testing import (
    NatsServer,
    Subscriber,
    add_stream,
    eventbus_client_auth,
    free_port,
    jetstream_client_auth,
)

SUBJECT = "events"
# The one line an operator reads when the server rejects what the handler was given.
REFUSED_CREDENTIALS = (
    "exit-handler: ERROR: NATS refused the credentials: nats: 'Authorization Violation'; "
    "check the token, user/password, creds or NKey the handler was given"
)


def publish_through(
    server: NatsServer,
    *extra: str,
    env: dict[str, str] | None = None,
    subscribe_with: Mapping[str, Any] | None = None,
) -> tuple[int, str, int]:
    """Run the handler against `server`; (exit status, stderr, messages received)."""
    with Subscriber(server.url, SUBJECT, **(subscribe_with or {})) as subscriber:
        result = run_handler(*base_args(SUBJECT, server.url), *extra, env=env)
        received = subscriber.wait_for(1, timeout=0.5 if result.status else 5)
    return result.status, result.stderr, len(received)


@pytest.fixture(scope="module")
def token_server() -> Iterator[NatsServer]:
    with NatsServer(token="s3cr3t-t0ken") as server:
        yield server


@pytest.fixture(scope="module")
def password_server() -> Iterator[NatsServer]:
    with NatsServer(user="alice", password="pa55-w0rd") as server:
        yield server


def test_the_server_knows_the_connection_by_the_handlers_name() -> None:
    """An operator finds the exit handler by name in the server's connection list (connz)."""
    port = free_port()
    with NatsServer(jetstream=False, config_extra=f'http: "127.0.0.1:{port}"') as server:
        result = run_handler(*base_args(SUBJECT, server.url))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz?state=closed") as response:
            closed = json.load(response)["connections"]
    assert result.status == 0, result.stderr
    # Before it: the readiness probe of NatsServer, which has no name.
    assert [connection.get("name") for connection in closed][-1:] == ["exit-handler"]


def test_token_from_a_file(token_server: NatsServer, tmp_path: Path) -> None:
    token = write(tmp_path / "token", "s3cr3t-t0ken\n")  # a Secret mount may end in newline
    status, log, received = publish_through(
        token_server, f"--nats-token-file={token}", subscribe_with={"token": "s3cr3t-t0ken"}
    )
    assert (status, received) == (0, 1), log
    assert "s3cr3t-t0ken" not in log


def test_token_from_the_environment(token_server: NatsServer) -> None:
    status, log, received = publish_through(
        token_server,
        env={"EXIT_HANDLER_NATS_TOKEN": "s3cr3t-t0ken"},
        subscribe_with={"token": "s3cr3t-t0ken"},
    )
    assert (status, received) == (0, 1), log


def test_wrong_token_is_refused_in_seconds(token_server: NatsServer, tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_handler(
        *base_args(SUBJECT, token_server.url),
        "--timeout=30",
        f"--nats-token-file={write(tmp_path / 't', 'wrong-token')}",
    )
    elapsed = time.monotonic() - started
    assert result.status == 4, result.stderr
    assert elapsed < 2, "a refusal is answered at once, not after a retry loop"
    assert REFUSED_CREDENTIALS in result.stderr.splitlines()
    assert "wrong-token" not in result.stderr
    # The event is logged for replay, and never the secret.
    replay = [line for line in result.stderr.splitlines() if "unpublished event" in line]
    assert len(replay) == 1


def test_user_and_password(password_server: NatsServer, tmp_path: Path) -> None:
    password = write(tmp_path / "password", "pa55-w0rd")
    status, log, received = publish_through(
        password_server,
        "--nats-user=alice",
        f"--nats-password-file={password}",
        subscribe_with={"user": "alice", "password": "pa55-w0rd"},
    )
    assert (status, received) == (0, 1), log


def test_wrong_password_from_the_environment_is_refused(password_server: NatsServer) -> None:
    result = run_handler(
        *base_args(SUBJECT, password_server.url),
        "--nats-user=alice",
        "--timeout=30",
        env={"EXIT_HANDLER_NATS_PASSWORD": "not-it"},
    )
    assert result.status == 4
    assert REFUSED_CREDENTIALS in result.stderr.splitlines()
    assert "not-it" not in result.stderr


def test_settings_never_show_a_secret_through_repr() -> None:
    """Settings can reach a log or a traceback through repr(): the credentials stay hidden."""
    auth = NatsAuth(token="s3cr3t-t0ken", user="alice", password="pa55-w0rd")
    settings = NatsSettings(servers=("nats://127.0.0.1:4222",), subject=SUBJECT, auth=auth)
    assert repr(auth) == "NatsAuth(<redacted>)"
    assert "auth=NatsAuth(<redacted>)" in repr(settings)
    assert "s3cr3t-t0ken" not in repr(settings)
    assert "pa55-w0rd" not in repr(settings)


@pytest.mark.parametrize(
    ("secret", "server_kind"),
    [
        (eventbus_client_auth("s3cr3t-t0ken"), "token"),
        (jetstream_client_auth("alice", "pa55-w0rd"), "password"),
    ],
)
def test_argo_events_eventbus_secret(
    token_server: NatsServer,
    password_server: NatsServer,
    tmp_path: Path,
    secret: str,
    server_kind: str,
) -> None:
    options: dict[str, object]
    server, options = (
        (token_server, {"token": "s3cr3t-t0ken"})
        if server_kind == "token"
        else (password_server, {"user": "alice", "password": "pa55-w0rd"})
    )
    path = write(tmp_path / "auth.yaml", secret)
    status, log, received = publish_through(
        server, f"--nats-auth-secret-file={path}", subscribe_with=options
    )
    assert (status, received) == (0, 1), log


def test_nkey_seed(tmp_path: Path) -> None:
    user = new_nkey("user")
    seed = write(tmp_path / "user.nk", user.seed)
    with NatsServer(jetstream=False, config_extra=nkey_server_config(user.public_key)) as server:
        status, log, received = publish_through(
            server, f"--nats-nkey-seed-file={seed}", subscribe_with={"nkeys_seed": seed}
        )
    assert (status, received) == (0, 1), log
    assert user.seed not in log


def test_jwt_creds_file_with_jetstream(tmp_path: Path) -> None:
    auth = jwt_auth()
    creds = write(tmp_path / "user.creds", auth.creds)
    with NatsServer(config_extra=auth.server_config) as server:
        status, log, received = publish_through(
            server, f"--nats-creds-file={creds}", subscribe_with={"user_credentials": creds}
        )
    assert (status, received) == (0, 1), log


def test_publish_permission_denied_is_refused(tmp_path: Path) -> None:
    auth = jwt_auth(allow_publish=["other.>", "$JS.API.>", "_INBOX.>"])
    creds = write(tmp_path / "user.creds", auth.creds)
    with NatsServer(config_extra=auth.server_config) as server:
        # Several times: nats-py's flush can overtake the publish, a race that let half
        # of the refusals pass for successes before delivery waited for its buffer.
        outcomes = [
            publish_through(
                server, f"--nats-creds-file={creds}", subscribe_with={"user_credentials": creds}
            )
            for _ in range(5)
        ]
    assert [(status, received) for status, _, received in outcomes] == [(4, 0)] * 5
    assert all(f"NATS refused to publish to '{SUBJECT}'" in log for _, log, _ in outcomes)


@pytest.fixture(scope="module")
def denying_server() -> Iterator[NatsServer]:
    """alice may not publish under `events.`; a stream covers `events.js`."""
    users = (
        'authorization { users: [{ user: alice, password: "pa55-w0rd", '
        'permissions: { publish: { deny: ["events.>"] } } }, { user: admin, password: admin }] }'
    )
    with NatsServer(config_extra=users) as server:
        add_stream(server.url.replace("nats://", "nats://admin:admin@"), "EVENTS", "events.js")
        yield server


@pytest.mark.parametrize(
    ("subject", "refusal"),
    [
        ("events.core", "NATS refused to publish to {subject!r}: {violation}; {core}"),
        ("events.js", "NATS refused a JetStream request: {violation}; {jetstream}"),
        ("events." + "x" * 190, "NATS refused to publish to {subject!r}: {violation}; {core}"),
    ],
    ids=["core", "jetstream", "long-subject"],
)
def test_a_denied_publish_names_the_subject_and_the_missing_permission(
    denying_server: NatsServer, subject: str, refusal: str
) -> None:
    """The server's words come first, cut to 200 characters, then what to grant."""
    result = run_handler(
        *base_args(subject, denying_server.url),
        "--nats-user=alice",
        "--timeout=30",
        env={"EXIT_HANDLER_NATS_PASSWORD": "pa55-w0rd"},
    )
    violation = f'nats: permissions violation for publish to "{subject}"'[:200]
    expected = refusal.format(
        subject=subject,
        violation=violation,
        core="grant the user publish permission on the subject",
        jetstream=f"grant the user publish permission on {subject!r} and subscribe on _INBOX.>",
    )
    assert result.status == 4, result.stderr
    assert f"exit-handler: ERROR: {expected}" in result.stderr.splitlines()


def test_a_denial_followed_by_a_lost_connection_is_still_a_refusal(
    denying_server: NatsServer,
) -> None:
    """The connection drops right after the server's -ERR: retrying cannot help (exit 4)."""
    subject = "events.core"
    with NatsProxy(denying_server.url, cut_after_error=True) as proxy:
        result = run_handler(
            *base_args(subject, proxy.url),
            "--nats-user=alice",
            "--timeout=30",
            env={"EXIT_HANDLER_NATS_PASSWORD": "pa55-w0rd"},
        )
    assert result.status == 4, result.stderr
    assert proxy.connections == 1
    assert (
        "exit-handler: ERROR: NATS refused an operation: "
        f'nats: permissions violation for publish to "{subject}"'
    ) in result.stderr.splitlines()


@pytest.mark.parametrize("verify_clients", [False, True])
def test_tls_with_a_private_ca(tmp_path: Path, verify_clients: bool) -> None:
    files = make_tls_files(tmp_path)
    client = [f"--nats-tls-cert={files.client_cert}", f"--nats-tls-key={files.client_key}"]
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(files.client_cert, files.client_key)
    with NatsServer(
        jetstream=False,
        tls_cert=files.server_cert,
        tls_key=files.server_key,
        tls_ca=files.ca,
        tls_verify=verify_clients,
    ) as server:
        assert server.url.startswith("tls://")
        with Subscriber(server.url, SUBJECT, tls=context) as subscriber:
            ok = run_handler(
                *base_args(SUBJECT, server.url),
                f"--nats-tls-ca={files.ca}",
                *(client if verify_clients else []),
            )
            # A nats:// URL to a server that requires TLS: the TLS options still apply.
            by_nats_url = run_handler(
                *base_args(SUBJECT, server.url.replace("tls://", "nats://")),
                f"--nats-tls-ca={files.ca}",
                *(client if verify_clients else []),
            )
            received = subscriber.wait_for(2)
        # Two names for the same server, neither of them verifiable without its CA.
        servers = f"{server.url},{server.url.replace('127.0.0.1', 'localhost')}"
        refused = run_handler(*base_args(SUBJECT, servers), "--timeout=30")
    assert ok.status == 0, ok.stderr
    assert by_nats_url.status == 0, by_nats_url.stderr
    assert len(received) == 2
    assert refused.status == 4
    assert (
        f"exit-handler: ERROR: NATS {servers.replace(',', ', ')}: TLS verification failed "
        "(unable to get local issuer certificate); pass the server's CA with --nats-tls-ca"
    ) in refused.stderr.splitlines()


@pytest.mark.parametrize(("version", "headers"), [("2.1.9", False), ("2.2.0", True)])
def test_a_server_before_nats_2_2_gets_the_payload_without_headers(
    version: str, headers: bool
) -> None:
    with (
        NatsServer(jetstream=False) as server,
        NatsProxy(server.url, rewrite_info=override_info(headers=headers, version=version)) as old,
        Subscriber(server.url, SUBJECT) as subscriber,
    ):
        result = run_handler(*base_args(SUBJECT, old.url))
        received = subscriber.wait_for(1)
    warning = (
        f"exit-handler: WARNING: NATS server {version} predates headers (2.2): "
        "publishing the payload without CloudEvent attributes"
    )
    warnings = [line for line in result.stderr.splitlines() if line == warning]
    assert result.status == 0, result.stderr
    assert len(warnings) == (0 if headers else 1), result.stderr
    assert len(received) == 1
    assert json.loads(received[0].data)["status"] == "succeeded"
    if headers:
        assert received[0].headers["ce-type"] == "org.kubeflow.pipelines.run-completion"
    else:
        assert received[0].headers == {}


def test_nats_never_up_exits_3_at_the_deadline() -> None:
    started = time.monotonic()
    result = run_handler(*base_args(SUBJECT, f"nats://127.0.0.1:{free_port()}"), "--timeout=3")
    elapsed = time.monotonic() - started
    assert result.status == 3, result.stderr
    assert 3 <= elapsed < 6
    assert "did not confirm the event before the deadline (3 s" in result.stderr
    assert "last error: cannot connect: nats: no servers available for connection)" in (
        result.stderr
    )
    assert "unpublished event" in result.stderr


def deadline_line(servers: str, seconds: str, last_error: str) -> str:
    return (
        f"exit-handler: ERROR: NATS {servers} did not confirm the event before the deadline "
        f"({seconds} s; last error: {last_error})"
    )


def test_a_port_that_hangs_up_at_once_is_an_outage_not_a_refusal() -> None:
    """A balancer whose NATS is down accepts and closes: retried with backoff, exit 3."""
    hung_up = "nats: empty response from server when expecting INFO message"
    nowhere = f"nats://127.0.0.1:{free_port()}"
    with NatsProxy(nowhere) as first, NatsProxy(nowhere) as second:
        servers = [first.url, second.url]
        result = run_handler(*base_args(SUBJECT, ",".join(servers)), "--timeout=1")
    lines = result.stderr.splitlines()
    retries = [line for line in lines if "NATS attempt failed" in line]
    assert result.status == 3, result.stderr
    assert deadline_line(", ".join(servers), "1", hung_up) in lines
    assert retries
    for line in retries:
        assert re.fullmatch(
            rf"exit-handler: INFO: NATS attempt failed \({hung_up}\); retrying in \d\.\d s", line
        ), line


def test_a_server_that_never_greets_is_retried_after_each_attempts_timeout() -> None:
    """A frozen server accepts the TCP connection but never sends INFO: exit 3, not a hang."""
    with NatsServer(jetstream=False) as server:
        os.kill(server.pid, signal.SIGSTOP)
        try:
            result = run_handler(*base_args(SUBJECT, server.url), "--timeout=6")
        finally:
            os.kill(server.pid, signal.SIGCONT)
    lines = result.stderr.splitlines()
    assert result.status == 3, result.stderr
    # One attempt waits 5 s for the greeting; the next one runs into the 6 s deadline.
    assert result.stderr.count("NATS attempt failed") == 1, result.stderr
    assert (
        "exit-handler: INFO: NATS attempt failed (cannot connect: TimeoutError); retrying in"
        in result.stderr
    )
    assert deadline_line(server.url, "6", "cannot connect: TimeoutError") in lines


def test_a_deadline_spent_before_delivery_says_it_timed_out(nats_server: NatsServer) -> None:
    # Reading 5,000 failures takes ~20 ms: the 1 ms deadline ends before delivery starts
    # (alone, a loopback publish can finish inside 1 ms).
    failures = [
        {"displayName": f"step-{i}", "phase": "Failed", "message": "m" * 200} for i in range(5000)
    ]
    result = run_handler(
        *base_args(SUBJECT, nats_server.url, status="Failed"),
        "--failures=" + json.dumps(json.dumps(failures)),
        "--timeout=0.001",
    )
    assert result.status == 3, result.stderr
    assert deadline_line(nats_server.url, "0.001", "timed out") in result.stderr.splitlines()
    assert "unpublished event" in result.stderr


def test_nats_up_three_seconds_late_still_gets_the_event(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "js")
    starter = threading.Timer(3, server.start)
    starter.start()
    try:
        result = run_handler(*base_args(SUBJECT, server.url), "--timeout=20")
    finally:
        starter.join()
        server.stop()
    assert result.status == 0, result.stderr
    assert "published succeeded event" in result.stderr


def test_failures_are_trimmed_to_fit_max_payload(subject: str) -> None:
    failures = [
        {"displayName": f"step-{i}", "templateName": "t", "phase": "Failed", "message": "m" * 400}
        for i in range(20)
    ]
    argument = "--failures=" + json.dumps(json.dumps(failures))
    with NatsServer(jetstream=False, max_payload=4096) as server:
        with Subscriber(server.url, subject) as subscriber:
            result = run_handler(*base_args(subject, server.url, status="Failed"), argument)
            received = subscriber.wait_for(1)
        too_big = run_handler(
            *base_args(subject, server.url), "--output-parameter=blob=" + "x" * 5000
        )
    assert result.status == 0, result.stderr
    body = json.loads(received[0].data)
    assert 0 < len(body["failures"]) < 20
    assert too_big.status == 2
    assert "more than the server's max_payload of 4096" in too_big.stderr
