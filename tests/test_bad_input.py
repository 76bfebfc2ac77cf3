"""Bad input: exit 2, one clear line naming the field, nothing published."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from conftest import Result, base_args, run_handler, selectable

from exit_handler.options import MAX_FILE, read_delivery, read_options, read_timeout
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
    (
        "failure message a lone surrogate",
        {"--failures": '[{"message": "\\ud800"}]'},
        "--failures: entry 1: message is not valid Unicode",
    ),
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


LONG = "x" * 300  # shown cut to its first 40 characters

# (the arguments that replace or add to base_args, the whole problem the line states)
EXACT: list[tuple[dict[str, str], str]] = [
    ({"--content-mode": LONG}, f"--content-mode: {LONG[:40]!r} is not one of binary, structured"),
    ({"--delivery": "pigeon"}, "--delivery: 'pigeon' is not one of auto, core, jetstream"),
    (
        {"--jetstream-domain": "a.b"},
        "--jetstream-domain: 'a.b' is not a JetStream domain (no spaces, dots or wildcards)",
    ),
    (
        {"--jetstream-domain": "d" * 256},
        f"--jetstream-domain: {'d' * 40!r} is not a JetStream domain "
        "(no spaces, dots or wildcards)",
    ),
    (
        {"--jetstream-domain": "a\x01b"},
        "--jetstream-domain: 'a\\x01b' is not a JetStream domain (no spaces, dots or wildcards)",
    ),
    (
        {"--subject": "s" * 256},
        f"--subject: {'s' * 40!r} is not a NATS subject to publish to (no wildcards)",
    ),
    (
        {"--subject": "a\x01b"},
        "--subject: 'a\\x01b' is not a NATS subject to publish to (no wildcards)",
    ),
    ({"--subject": "a.>"}, "--subject: 'a.>' is not a NATS subject to publish to (no wildcards)"),
    (
        {"--provider": "p" * 254},
        f"--provider: {'p' * 40!r} must be printable, without spaces, at most 253 characters",
    ),
    (
        {"--provider": "a b"},
        "--provider: 'a b' must be printable, without spaces, at most 253 characters",
    ),
    (
        {"--provider": "a\x01"},
        "--provider: 'a\\x01' must be printable, without spaces, at most 253 characters",
    ),
    ({"--timeout": LONG}, f"--timeout: {LONG[:40]!r} is not a number of seconds"),
    ({"--timeout": "3600.5"}, "--timeout: '3600.5' is outside 0.001..3600 seconds"),
    ({"--timeout": "9" * 50}, f"--timeout: {'9' * 40!r} is outside 0.001..3600 seconds"),
    (
        {"--clock-skew": "-" + LONG},
        f"--clock-skew: {('-' + LONG)[:40]!r} is not a number of seconds",
    ),
    ({"--clock-skew": "-0.5"}, "--clock-skew: '-0.5' is outside 0..3600 seconds"),
    ({"--nats-url": "nats://a\x01"}, "--nats-url: contains control characters or invalid UTF-8"),
    (
        {"--nats-url": "nats://alice@h:1/a://b"},
        "--nats-url: a server URL carries credentials; use --nats-token-file, --nats-user with "
        "--nats-password-file, or EXIT_HANDLER_NATS_TOKEN instead",
    ),
    (
        {"--nats-url": "http://" + LONG},
        f"--nats-url: {('http://' + LONG)[:60]!r} is not a nats://host:port or tls://host:port URL",
    ),
    ({"--nats-url": ","}, "--nats-url: no server given"),
    (
        {
            "--nats-tls-ca": "/nonexistent/ca.pem",
            "--nats-tls-cert": "/nonexistent/c.pem",
            "--nats-tls-key": "/nonexistent/k.pem",
        },
        "--nats-tls-ca: /nonexistent/ca.pem is not a readable file; "
        "--nats-tls-cert: /nonexistent/c.pem is not a readable file; "
        "--nats-tls-key: /nonexistent/k.pem is not a readable file",
    ),
    (
        {"--nats-tls-cert": "/etc/hostname"},
        "--nats-tls-cert and --nats-tls-key: give both or neither",
    ),
    (
        {"--nats-tls-key": "/etc/hostname"},
        "--nats-tls-cert and --nats-tls-key: give both or neither",
    ),
    (
        {"--pipeline-root": "gs://bucket/root"},
        "--created-at: required when --pipeline-root is listed",
    ),
    (
        {"--artifacts": "[1]"},
        "--artifacts: artifact definition 1: expected a mapping with 'name' and 'path' "
        "but found an integer",
    ),
    (
        {"--failures": "null", "--failures-file": "/etc/hostname"},
        "--failures: give --failures or --failures-file, not both",
    ),
    (
        {"--artifacts": "[]", "--artifacts-file": "/etc/hostname"},
        "--artifacts: give --artifacts or --artifacts-file, not both",
    ),
]


@pytest.mark.parametrize(
    ("changes", "problem"), EXACT, ids=selectable([case[1][:40] for case in EXACT])
)
def test_the_line_states_the_problem_and_the_first_characters_of_the_value(
    changes: dict[str, str], problem: str
) -> None:
    argv = [
        arg for arg in base_args("events", "nats://127.0.0.1:1") if arg.split("=")[0] not in changes
    ]
    result = run_handler(
        *argv, *(f"{option}={value}" for option, value in changes.items()), "--dry-run"
    )
    assert bad_input_line(result) == problem


@pytest.mark.parametrize(
    "changes",
    [
        {"--jetstream-domain": "d" * 255},
        {"--subject": "s" * 255},
        {"--provider": "p" * 253},
        {"--timeout": "3600", "--clock-skew": "3600"},
        {"--timeout": "0.001", "--clock-skew": "0"},
        {"--nats-url": "tls://h:4222/a@b, nats://h:4222"},
    ],
    ids=["domain", "subject", "provider", "max-seconds", "min-seconds", "tls-url"],
)
def test_values_at_the_limits_are_accepted(changes: dict[str, str]) -> None:
    argv = [
        arg for arg in base_args("events", "nats://127.0.0.1:1") if arg.split("=")[0] not in changes
    ]
    result = run_handler(
        *argv, *(f"{option}={value}" for option, value in changes.items()), "--dry-run"
    )
    assert result.status == 0, result.stderr


@pytest.mark.parametrize(
    "changes",
    [
        {"--nats-tls-ca": "/etc/hostname"},
        {"--nats-tls-cert": "/etc/hostname", "--nats-tls-key": "/etc/hostname"},
    ],
    ids=["ca", "cert-and-key"],
)
def test_tls_files_that_do_not_load_are_bad_input(changes: dict[str, str]) -> None:
    """Checked before any connection: what does not load is named, with OpenSSL's reason."""
    argv = [*base_args("events", "nats://127.0.0.1:1"), "--dry-run"]
    result = run_handler(*argv, *(f"{option}={value}" for option, value in changes.items()))
    line = bad_input_line(result)
    assert line.startswith("--nats-tls-ca/--nats-tls-cert/--nats-tls-key: ["), line


def test_an_empty_option_counts_as_not_given() -> None:
    """An empty value on the command line leaves the environment's value in force."""
    argv = [
        arg for arg in base_args("events", "nats://127.0.0.1:1") if not arg.startswith("--subject")
    ]
    result = run_handler(*argv, "--subject=", "--dry-run", env={"EXIT_HANDLER_SUBJECT": "from-env"})
    assert result.status == 0, result.stderr
    assert result.dry_run["subject"] == "from-env"


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


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--nats-token=hun=ter2", "--nats-pass", "word"], "--nats-token --nats-pass"),
        (["hunter2"], "(values without options)"),
    ],
)
def test_unrecognized_arguments_are_named_by_option_alone(extra: list[str], named: str) -> None:
    """Only the option names are echoed, never a value, even one holding '='."""
    result = run_handler(*base_args("events", "nats://127.0.0.1:1"), *extra)
    assert result.status == 2
    assert result.stderr == (
        f"exit-handler: ERROR: bad input: unrecognized options: {named} (see exit-handler --help)\n"
    )


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


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("password: pw\n", "{path} holds neither token: nor username: and password:"),
        ("username: [alice\n", "{path} is not YAML (expected token: or username:/password:)"),
    ],
)
def test_an_eventbus_secret_without_credentials_is_named(
    tmp_path: Path, secret: str, problem: str
) -> None:
    path = tmp_path / "client-auth"
    path.write_text(secret)
    result = run_handler(
        *base_args("events", "nats://127.0.0.1:1"), f"--nats-auth-secret-file={path}", "--dry-run"
    )
    assert bad_input_line(result) == "NATS authentication: " + problem.format(path=path)


def test_an_eventbus_token_secret_authenticates(nats_server: NatsServer, tmp_path: Path) -> None:
    """Argo Events writes `token: "..."`; a server that wants no token ignores it."""
    path = tmp_path / "client-auth"
    path.write_text('token: "s3cr3t"')
    result = run_handler(
        *base_args("events", "nats://127.0.0.1:1"), f"--nats-auth-secret-file={path}", "--dry-run"
    )
    assert result.status == 0, result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr


def bad_input_line(result: Result) -> str:
    """The one line a bad input leaves on stderr, without the logger's prefix."""
    assert result.status == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("exit-handler: ERROR: bad input: "), line
    return line.removeprefix("exit-handler: ERROR: bad input: ")


SECRET_OPTIONS = [
    ("--nats-token-file", "token"),
    ("--nats-password-file", "password"),
    ("--nats-auth-secret-file", "auth secret"),
    ("--nats-nkey-seed-file", "NKey seed"),
]


BOTH = "give one way to authenticate, not"


@pytest.mark.parametrize(
    ("options", "env", "problem"),
    [
        (
            ["--nats-user=a\x01b"],
            {"PASSWORD": "pw"},
            "--nats-user contains control characters or invalid UTF-8",
        ),
        (
            ["--nats-user=alice"],
            {},
            "--nats-user needs a password (--nats-password-file) and vice versa",
        ),
        (
            [],
            {"PASSWORD": "pw"},
            "--nats-user needs a password (--nats-password-file) and vice versa",
        ),
        ([], {"TOKEN": "t", "PASSWORD": "pw"}, f"{BOTH} token and user/password"),
        (["--nats-creds-file=/a.creds"], {"TOKEN": "t"}, f"{BOTH} token and --nats-creds-file"),
        (
            ["--nats-user=alice", "--nats-creds-file=/a.creds", "--nats-nkey-seed-file=/a.nk"],
            {"TOKEN": "t", "PASSWORD": "pw"},
            f"{BOTH} token and user/password and --nats-creds-file and --nats-nkey-seed-file",
        ),
        *(
            (
                ["--nats-auth-secret-file=/nonexistent/client-auth", *options],
                env,
                "--nats-auth-secret-file replaces the token and user/password options",
            )
            for options, env in [
                ([], {"TOKEN": "t"}),
                (["--nats-user=alice"], {}),
                ([], {"PASSWORD": "pw"}),
            ]
        ),
    ],
)
def test_authentication_options_that_do_not_fit_together(
    options: list[str], env: dict[str, str], problem: str
) -> None:
    result = run_handler(
        *base_args("events", "nats://127.0.0.1:1"),
        *options,
        "--dry-run",
        env={f"EXIT_HANDLER_NATS_{name}": value for name, value in env.items()},
    )
    assert bad_input_line(result) == f"NATS authentication: {problem}"


@pytest.mark.parametrize(("option", "what"), SECRET_OPTIONS)
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read the {what} file {path} (FileNotFoundError)"),
        ("\n", "the {what} file {path} is empty"),
        (b"\xff\xfe", "the {what} file {path} is not a UTF-8 text of at most 64 KiB"),
        ("s" * (64 * 1024 + 1), "the {what} file {path} is not a UTF-8 text of at most 64 KiB"),
    ],
    ids=["missing", "empty", "not-utf8", "too-large"],
)
def test_an_unusable_secret_file_is_named_without_its_content(
    tmp_path: Path, option: str, what: str, content: str | bytes | None, problem: str
) -> None:
    path = tmp_path / "secret"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    extra = ["--nats-user=alice"] if option == "--nats-password-file" else []
    result = run_handler(
        *base_args("events", "nats://127.0.0.1:1"), *extra, f"{option}={path}", "--dry-run"
    )
    if content is None and option == "--nats-nkey-seed-file":
        problem = "{path} is not a readable file"  # checked before it is read
    line = bad_input_line(result)
    assert line == "NATS authentication: " + problem.format(what=what, path=path)


def test_a_secret_of_64_kib_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("t" * 64 * 1024)
    result = run_handler(
        *base_args("events", "nats://127.0.0.1:1"), f"--nats-token-file={path}", "--dry-run"
    )
    assert result.status == 0, result.stderr
    assert "tttt" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe", "{path} is not UTF-8 text"),
        (b"[" + b" " * (8 * 1024 * 1024), "{path} is larger than 8388608 bytes"),
    ],
    ids=["not-utf8", "too-large"],
)
@pytest.mark.parametrize("option", ["--failures-file", "--artifacts-file"])
def test_an_unusable_input_file_is_named(
    tmp_path: Path, option: str, content: bytes, problem: str
) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    result = run_handler(*base_args("events", "nats://127.0.0.1:1"), f"{option}={path}")
    assert bad_input_line(result) == f"{option}: " + problem.format(path=path)


def test_an_endless_input_is_read_only_to_its_bound(tmp_path: Path) -> None:
    """A pipe that never ends (think /dev/zero) is refused once past the bound."""
    path = tmp_path / "endless"
    os.mkfifo(path)
    done = threading.Event()
    timed_out: list[bool] = []

    def write_and_hold() -> None:
        with path.open("wb") as pipe:
            pipe.write(b" " * (MAX_FILE + 1))
            timed_out.append(not done.wait(60))  # the reader waited for an end that never came

    writer = threading.Thread(target=write_and_hold)
    writer.start()
    try:
        result = run_handler(*base_args("events", "nats://127.0.0.1:1"), f"--artifacts-file={path}")
    finally:
        done.set()
        writer.join()
    assert bad_input_line(result) == f"--artifacts-file: {path} is larger than {MAX_FILE} bytes"
    assert timed_out == [False]


def test_what_is_not_given_takes_its_documented_default() -> None:
    """The defaults the README and `--help` promise."""
    required = {
        "status": "Succeeded",
        "workflow_name": "w",
        "workflow_uid": "u",
        "pipeline_name": "p",
    }
    options = read_options(required, {})
    assert (options.timeout, options.clock_skew) == (60.0, 5.0)
    assert (options.content_mode, options.provider, options.pusher_components) == (
        "binary",
        "kfp",
        ("Pusher",),
    )
    assert (options.nats.servers, options.nats.subject, options.nats.delivery) == (
        ("nats://eventbus-kfp-operator-events-stan-svc.kfp-operator.svc:4222",),
        "events",
        "auto",
    )
    assert (options.root, options.artifacts, options.dry_run) == (None, (), False)
    # The deadline starts before the rest is read; a bad value is named later, with the rest.
    assert read_timeout({}) == read_timeout({"timeout": "soon"}) == 60.0
    assert read_delivery({}, {})[1] == 60.0


def test_bad_environment_value_names_the_variable() -> None:
    result = run_handler("publish", env={"EXIT_HANDLER_DRY_RUN": "maybe"})
    assert result.status == 2
    assert "EXIT_HANDLER_DRY_RUN: expected true or false" in result.stderr


@pytest.mark.parametrize(
    ("value", "dry_run"),
    [("1", True), ("True", True), ("YES", True), ("0", False), ("False", False), ("NO", False)],
)
def test_boolean_environment_values(
    nats_server: NatsServer, subject: str, value: str, dry_run: bool
) -> None:
    """EXIT_HANDLER_DRY_RUN takes 1/true/yes or 0/false/no, in any case."""
    with Subscriber(nats_server.url, subject) as subscriber:
        result = run_handler(
            *base_args(subject, nats_server.url), env={"EXIT_HANDLER_DRY_RUN": value}
        )
        received = subscriber.wait_for(1, timeout=0.3 if dry_run else 5)
    assert result.status == 0, result.stderr
    assert bool(result.stdout) == dry_run
    assert len(received) == (0 if dry_run else 1)
