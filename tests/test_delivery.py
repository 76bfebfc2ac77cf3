"""Delivery against real servers: every auth method, TLS, refusals, deadlines, limits."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import base_args, run_handler, write
from nats_auth import (
    jwt_auth,
    make_tls_files,
    new_nkey,
    nkey_server_config,
)

from exit_handler.testing import (
    NatsServer,
    Subscriber,
    eventbus_client_auth,
    free_port,
    jetstream_client_auth,
)

SUBJECT = "events"


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
    assert "NATS refused the credentials" in result.stderr
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
    assert "not-it" not in result.stderr


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
            received = subscriber.wait_for(1)
        refused = run_handler(*base_args(SUBJECT, server.url), "--timeout=30")
    assert ok.status == 0, ok.stderr
    assert len(received) == 1
    assert refused.status == 4
    assert "TLS verification failed" in refused.stderr
    assert "--nats-tls-ca" in refused.stderr


def test_nats_never_up_exits_3_at_the_deadline() -> None:
    started = time.monotonic()
    result = run_handler(*base_args(SUBJECT, f"nats://127.0.0.1:{free_port()}"), "--timeout=3")
    elapsed = time.monotonic() - started
    assert result.status == 3, result.stderr
    assert 3 <= elapsed < 6
    assert "did not confirm the event before the deadline (3 s" in result.stderr
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
