"""Hostile input: every case exits 2 with one clear line, publishes nothing, stays small."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from conftest import run_handler

from exit_handler.testing import NatsServer, Subscriber, eventbus_client_auth

GOOD = {
    "--status": "Succeeded",
    "--workflow-name": "penguin-pipeline-x7k2p",
    "--workflow-uid": "uid-1",
    "--pipeline-name": "penguin-pipeline",
}
MEBIBYTE = 1024 * 1024
BOMB = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def definitions(path: str, name: str = "m") -> str:
    return json.dumps([{"name": name, "path": path}])


# (what, options that replace or add to GOOD, what the one error line names)
CASES: list[tuple[str, dict[str, str], str]] = [
    ("huge pipeline name", {"--pipeline-name": "p" * MEBIBYTE}, "--pipeline-name: longer"),
    ("huge status", {"--status": "S" * MEBIBYTE}, "--status: "),
    ("huge workflow uid", {"--workflow-uid": "u" * MEBIBYTE}, "--workflow-uid: longer"),
    ("huge failures", {"--failures": "[" + " " * (9 * MEBIBYTE) + "]"}, "--failures: larger"),
    ("failures nested deeply", {"--failures": "[" * 100_000}, "--failures: not the JSON"),
    ("failures with a lone surrogate", {"--failures": '[{"message": "\\ud800"}]'}, "Unicode"),
    ("failures an object", {"--failures": '{"message": "x"}'}, "expected a JSON list"),
    ("failures a number", {"--failures": "1e999"}, "--failures: "),
    ("failures with an escape Go refuses", {"--failures": '"[\\q]"'}, "invalid Go string"),
    ("failures cut after garbage", {"--failures": '"[{\\"a\\":\\"b\\"},rm -rf'}, "entry 2"),
    ("failures of Go escapes", {"--failures": '"' + "\\x41" * (MEBIBYTE // 4)}, "--failures: "),
    ("NUL in the pipeline name", {"--pipeline-name": "pen\x00guin"}, "control characters"),
    ("forged header in the name", {"--pipeline-name": "p\r\nNats-Msg-Id: x"}, "control"),
    ("terminal escapes in a name", {"--workflow-name": "wf\x1b[31mred"}, "control characters"),
    ("forged header in provider", {"--provider": "kfp\r\nce-type: evil"}, "--provider: "),
    ("provider with a space", {"--provider": "k f p"}, "--provider: "),
    ("NUL in the subject", {"--subject": "events\x00"}, "--subject: "),
    ("protocol in the subject", {"--subject": "events\r\nPUB evil 0"}, "--subject: "),
    ("control in the NATS URL", {"--nats-url": "nats://h:4222\r\nPUB x 0"}, "--nats-url: "),
    (
        "forged user",
        {"--nats-user": "alice\r\n", "--nats-password-file": "/etc/hostname"},
        "control characters",
    ),
    ("traversal in a pusher", {"--pusher-components": "../../etc"}, "--pusher-components: "),
    ("slash in a pusher", {"--pusher-components": "Pusher/../x"}, "--pusher-components: "),
    ("dot pusher", {"--pusher-components": "."}, "--pusher-components: "),
    (
        "traversal in the root",
        {"--pipeline-root": "gs://bucket/a/../../b", "--created-at": "2026-11-26T10:00:00Z"},
        "'..'",
    ),
    (
        "NUL in the root",
        {"--pipeline-root": "gs://bucket/a\x00b", "--created-at": "2026-11-26T10:00:00Z"},
        "--pipeline-root: ",
    ),
    (
        "huge root",
        {"--pipeline-root": "gs://" + "b" * MEBIBYTE, "--created-at": "2026-11-26T10:00:00Z"},
        "not a valid GCS bucket",
    ),
    ("huge output parameter", {"--output-parameter": "blob=" + "x" * MEBIBYTE}, "longer than"),
    ("traversal as a parameter name", {"--output-parameter": "../x=1"}, "is not NAME=VALUE"),
    ("parameter without a name", {"--output-parameter": "=1"}, "is not NAME=VALUE"),
    (
        "unresolved parameter",
        {"--output-parameter": "a={{workflow.outputs.parameters.a}}"},
        "unresolved Argo variable",
    ),
    ("filter nested deeply", {"--artifacts": definitions("P:o[" + "(" * 200 + "]")}, "deep"),
    (
        "filter too long",
        {"--artifacts": definitions("P:o[" + "pushed == 1 and " * 100 + "]")},
        "--artifacts: ",
    ),
    ("huge definitions", {"--artifacts": "[" + " " * (2 * MEBIBYTE) + "]"}, "larger than"),
    ("YAML bomb", {"--artifacts": BOMB}, "anchors and aliases are not supported"),
    ("YAML python tag", {"--artifacts": "- !!python/object/apply:os.system ['id']"}, "tags"),
    ("YAML binary tag", {"--artifacts": "- !!binary aGVsbG8="}, "tags are not supported"),
    ("JSON nested deeply", {"--artifacts": "[" * 100_000}, "--artifacts: "),
    ("traversal in a component", {"--artifacts": definitions("../../etc:passwd")}, "component"),
    ("slash in an output", {"--artifacts": definitions("Pusher:a/b")}, "output name"),
    ("control in a definition name", {"--artifacts": definitions("P:o", "m\r\nx")}, "control"),
    ("bad regex", {"--artifacts": definitions('P:o[uri matches "(?P<"]')}, "--artifacts: "),
    ("timestamp with NUL", {"--created-at": "2026-11-26T10:00:00Z\x00"}, "--created-at: "),
    ("impossible timestamp", {"--created-at": "9999-99-99T99:99:99Z"}, "--created-at: "),
    ("infinite timeout", {"--timeout": "1e309"}, "--timeout: "),
    ("NaN clock skew", {"--clock-skew": "nan"}, "--clock-skew: "),
    ("look-alike status", {"--status": "\u0405ucceeded"}, "--status: "),
    ("unresolved uid", {"--workflow-uid": "{{workflow.uid}}"}, "unresolved Argo variable"),
    ("failures file of zeros", {"--failures-file": "/dev/zero"}, "larger than"),
    ("definitions file of zeros", {"--artifacts-file": "/dev/zero"}, "larger than"),
    ("token file of zeros", {"--nats-token-file": "/dev/zero"}, "at most 64 KiB"),
    ("creds that are a device", {"--nats-creds-file": "/dev/zero"}, "not a readable file"),
]


@pytest.mark.parametrize(("what", "changes", "named"), CASES, ids=[case[0] for case in CASES])
def test_hostile_input_exits_2_with_bounded_memory(
    nats_server: NatsServer, subject: str, what: str, changes: dict[str, str], named: str
) -> None:
    arguments = {**GOOD, "--nats-url": nats_server.url, "--subject": subject, **changes}
    argv = ["publish", *(f"{option}={value}" for option, value in arguments.items())]
    with Subscriber(nats_server.url, subject) as subscriber:
        tracemalloc.start()
        try:
            result = run_handler(*argv)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        received = subscriber.wait_for(1, timeout=0.2)
    assert result.status == 2, (what, result.stderr[:300])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines[:3]
    assert named in lines[0], lines[0][:300]
    assert len(lines[0]) < 2_000, "the line quotes bad values briefly"
    assert received == []
    # The input itself may be a few MiB; handling it must not cost much more.
    input_size = sum(len(value) for value in changes.values())
    assert peak < 3 * input_size + 32 * MEBIBYTE, f"peak {peak} bytes"


INVALID_UTF8: list[tuple[str, bytes]] = [
    ("--workflow-name", b"wf-\xff\xfe"),
    ("--status", b"Succeeded\xc3"),
    ("--output-parameter", b"accuracy=0.9\xed\xa0\x80"),
    ("--pipeline-name", b"\x80penguin"),
]


@pytest.mark.parametrize(("option", "raw"), INVALID_UTF8, ids=[c[0] for c in INVALID_UTF8])
def test_invalid_utf8_in_argv(
    nats_server: NatsServer, subject: str, option: str, raw: bytes
) -> None:
    """Argo passes bytes; Python decodes argv with surrogates; nothing may crash on them."""
    argv: list[bytes] = [sys.executable.encode(), b"-m", b"exit_handler", b"publish"]
    arguments = {**GOOD, "--nats-url": nats_server.url, "--subject": subject}
    arguments.pop(option, None)
    argv += [f"{k}={v}".encode() for k, v in arguments.items()]
    argv.append(option.encode() + b"=" + raw)
    with Subscriber(nats_server.url, subject) as subscriber:
        done = subprocess.run(
            argv,
            capture_output=True,
            check=False,
            timeout=60,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
        received = subscriber.wait_for(1, timeout=0.2)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, stderr
    assert option in stderr
    assert "Traceback" not in stderr
    assert received == []


def test_secrets_never_reach_stdout_stderr_or_the_event(
    nats_server: NatsServer, tmp_path: Path, subject: str
) -> None:
    """Every error path that touches a secret: wrong token, unreadable, ambiguous, in a URL."""
    token = "t0ken-that-must-not-leak"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    password_file = tmp_path / "password"
    password_file.write_text("pa55-that-must-not-leak")
    secret_yaml = tmp_path / "auth.yaml"
    secret_yaml.write_text(eventbus_client_auth(token))
    base = [
        "publish",
        *(f"{k}={v}" for k, v in GOOD.items()),
        f"--subject={subject}",
        "--timeout=5",
    ]
    runs = [
        run_handler(*base, f"--nats-url={nats_server.url}", f"--nats-token-file={token_file}"),
        run_handler(
            *base,
            f"--nats-url={nats_server.url}",
            f"--nats-auth-secret-file={secret_yaml}",
            f"--nats-token-file={token_file}",
        ),
        run_handler(
            *base,
            f"--nats-url={nats_server.url}",
            "--nats-user=alice",
            f"--nats-password-file={password_file}",
            f"--nats-token-file={token_file}",
        ),
        run_handler(*base, f"--nats-url=nats://alice:{token}@127.0.0.1:1"),
        run_handler(
            *base, f"--nats-url={nats_server.url}", "--dry-run", f"--nats-token-file={token_file}"
        ),
        run_handler(
            *base,
            "--nats-url=nats://127.0.0.1:1",
            "--timeout=1",
            "--debug",
            env={"EXIT_HANDLER_NATS_TOKEN": token},
        ),
    ]
    with NatsServer(token="another-token", jetstream=False) as refusing:
        runs.append(
            run_handler(
                *base, f"--nats-url={refusing.url}", "--debug", f"--nats-token-file={token_file}"
            )
        )
    with Subscriber(nats_server.url, subject) as subscriber:
        runs.append(
            run_handler(
                *base, f"--nats-url={nats_server.url}", env={"EXIT_HANDLER_NATS_TOKEN": token}
            )
        )
        received = subscriber.wait_for(1)
    assert [r.status for r in runs] == [0, 2, 2, 2, 0, 3, 4, 0]
    for result in runs:
        for secret in (token, "pa55-that-must-not-leak"):
            assert secret not in result.stdout
            assert secret not in result.stderr
    assert all(token.encode() not in message.data for message in received)
    assert all(token not in str(message.headers) for message in received)


def test_yaml_is_only_loaded_with_the_safe_loader() -> None:
    """Every YAML call in the product is safe_load, or load with a SafeLoader."""
    package = Path(__file__).parent.parent / "exit_handler"
    calls = 0
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "yaml"
                and "load" in node.func.attr
            ):
                continue
            calls += 1
            where = f"{path.name}:{node.lineno}"
            if node.func.attr in {"safe_load", "safe_load_all"}:
                continue
            assert node.func.attr == "load", f"{where}: yaml.{node.func.attr}"
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
            assert loader is not None, f"{where}: yaml.load without a Loader"
            assert "SafeLoader" in ast.unparse(loader), f"{where}: {ast.unparse(loader)}"
    assert calls >= 2, "the check found the product's YAML loads"
    definitions = (package / "artifact_definitions.py").read_text()
    assert "class BoundedLoader(yaml.SafeLoader)" in definitions
