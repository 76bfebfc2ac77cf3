"""Bad input: exit 2, one clear line naming the field, nothing published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import base_args, run_handler

from exit_handler.testing import NatsServer, Subscriber

GOOD = {
    "--status": "Succeeded",
    "--workflow-name": "penguin-pipeline-x7k2p",
    "--workflow-uid": "uid-1",
    "--pipeline-name": "penguin-pipeline",
}

# (what is wrong, the arguments that replace or add to GOOD, what the line must name)
CASES: list[tuple[str, dict[str, str], str]] = [
    ("unknown status", {"--status": "Running"}, '--status: "Running" is not a final'),
    ("unresolved status", {"--status": "{{workflow.status}}"}, "--status:"),
    ("lower-case status", {"--status": "succeeded"}, "--status:"),
    ("empty status", {"--status": ""}, "--status: required"),
    ("empty pipeline name", {"--pipeline-name": ""}, "--pipeline-name: required"),
    ("missing uid", {"--workflow-uid": ""}, "--workflow-uid: required"),
    ("unresolved name", {"--workflow-name": "{{workflow.name}}"}, "unresolved Argo variable"),
    ("malformed failures", {"--failures": '"[{\\"displayName\\": '}, "not the JSON"),
    ("failures not a list", {"--failures": '"{\\"a\\": 1}"'}, "--failures: expected a JSON list"),
    ("failure entry not an object", {"--failures": "[1]"}, "--failures: entry 1 is not"),
    ("failure message not text", {"--failures": '[{"message": 5}]'}, "message is not a string"),
    ("date without time", {"--created-at": "2026-11-26"}, "--created-at: "),
    ("time without offset", {"--created-at": "2026-11-26T10:00:00"}, "--created-at: "),
    ("impossible date", {"--created-at": "2026-02-30T10:00:00Z"}, "--created-at: "),
    ("root not gs://", {"--pipeline-root": "s3://bucket/root"}, "--pipeline-root: "),
    ("root without bucket", {"--pipeline-root": "gs:///root"}, "not a valid GCS bucket"),
    ("root with traversal", {"--pipeline-root": "gs://bucket/a/../b"}, "'..'"),
    (
        "root without created-at",
        {"--pipeline-root": "gs://bucket/root"},
        "--created-at: required when --pipeline-root",
    ),
    ("unknown content mode", {"--content-mode": "xml"}, "--content-mode: 'xml' is not one of"),
    ("unknown delivery", {"--delivery": "carrier-pigeon"}, "--delivery: "),
    ("negative skew", {"--clock-skew": "-1"}, "--clock-skew: "),
    ("timeout not a number", {"--timeout": "soon"}, "--timeout: 'soon' is not a number"),
    ("zero timeout", {"--timeout": "0"}, "--timeout: "),
    ("wildcard subject", {"--subject": "events.>"}, "--subject: "),
    ("subject with space", {"--subject": "two words"}, "--subject: "),
    (
        "url with credentials",
        {"--nats-url": "nats://alice:s3cret@host:4222"},
        "carries credentials",
    ),
    ("url with token", {"--nats-url": "nats://t0ken@host:4222"}, "carries credentials"),
    ("http url", {"--nats-url": "http://host:4222"}, "--nats-url: "),
    ("output parameter without =", {"--output-parameter": "accuracy"}, "is not NAME=VALUE"),
    ("pusher with slash", {"--pusher-components": "../Pusher"}, "--pusher-components: "),
    ("unknown log format", {"--log-format": "xml"}, "--log-format: "),
    ("token file missing", {"--nats-token-file": "/nonexistent/token"}, "cannot read the token"),
    ("user without password", {"--nats-user": "alice"}, "--nats-user needs a password"),
    ("creds file missing", {"--nats-creds-file": "/nonexistent.creds"}, "not a readable file"),
    ("cert without key", {"--nats-tls-cert": "/etc/hostname"}, "--nats-tls-key: give both"),
    ("failures twice", {"--failures-file": "/etc/hostname", "--failures": "null"}, "not both"),
    ("port not a number", {"--nats-url": "nats://127.0.0.1:abc"}, "--nats-url: "),
    ("CA that is no certificate", {"--nats-tls-ca": "/etc/hostname"}, "--nats-tls-ca/"),
    ("NKey seed that is no seed", {"--nats-nkey-seed-file": "/etc/hostname"}, "no valid seed"),
]


@pytest.mark.parametrize(("what", "changes", "named"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_exits_2_naming_the_field(
    nats_server: NatsServer, subject: str, what: str, changes: dict[str, str], named: str
) -> None:
    arguments = {**GOOD, "--nats-url": nats_server.url, "--subject": subject, **changes}
    argv = ["publish", *(f"{option}={value}" for option, value in arguments.items())]
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(*argv)
        received = subscriber.wait_for(1, timeout=0.3)
    assert result.status == 2, (what, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert "Traceback" not in result.stderr
    assert received == []
    assert result.stdout == ""


def test_all_bad_fields_are_named_in_one_line(nats_server: NatsServer, subject: str) -> None:
    result = run_handler(
        "publish", "--status=Running", "--timeout=x", "--content-mode=xml", "--subject=a b"
    )
    assert result.status == 2
    line = result.stderr.strip()
    for option in ("--status", "--pipeline-name", "--timeout", "--content-mode", "--subject"):
        assert f"{option}:" in line


@pytest.mark.parametrize("form", [["--nats-token", "hunter2"], ["--nats-token=hunter2"]])
def test_a_secret_on_the_command_line_is_refused_without_echo(form: list[str]) -> None:
    result = run_handler(*base_args("events", "nats://127.0.0.1:1"), *form)
    assert result.status == 2
    assert "unrecognized options: --nats-token " in result.stderr
    assert "hunter2" not in result.stderr


def test_credentials_in_the_url_are_never_echoed() -> None:
    result = run_handler(*base_args("events", "nats://alice:hunter2@127.0.0.1:1"))
    assert result.status == 2
    assert "hunter2" not in result.stderr
    assert "alice" not in result.stderr


def test_failures_file_is_read_like_the_argument(tmp_path: Path, subject: str) -> None:
    failures = [{"displayName": "Trainer", "templateName": "trainer", "phase": "Failed"}]
    path = tmp_path / "failures.json"
    path.write_text(json.dumps(json.dumps(failures)))
    result = run_handler(
        *base_args(subject, "nats://127.0.0.1:1", status="Failed"),
        f"--failures-file={path}",
        "--dry-run",
    )
    assert result.status == 0, result.stderr
    payload = json.loads(str(result.dry_run["payload"]))
    assert payload["failures"] == [
        {"displayName": "Trainer", "templateName": "trainer", "phase": "Failed"}
    ]


@pytest.mark.parametrize(
    ("secret", "status"),
    [
        ('token: ""\nusername: alice\npassword: pw\n', 0),
        ('token: ""\n', 2),
        ("username: alice\n", 2),
        ("- a list\n", 2),
    ],
)
def test_eventbus_secret_shapes(tmp_path: Path, secret: str, status: int) -> None:
    path = tmp_path / "client-auth"
    path.write_text(secret)
    result = run_handler(
        *base_args("events", "nats://127.0.0.1:1"), f"--nats-auth-secret-file={path}", "--dry-run"
    )
    assert result.status == status, result.stderr
    if status:
        assert "holds neither token: nor username: and password:" in result.stderr


def test_bad_environment_value_names_the_variable() -> None:
    result = run_handler("publish", env={"EXIT_HANDLER_DRY_RUN": "maybe"})
    assert result.status == 2
    assert "EXIT_HANDLER_DRY_RUN: expected true or false" in result.stderr
