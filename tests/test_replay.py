"""`exit-handler replay`: what publish logged as unpublished reaches NATS later, once."""

from __future__ import annotations

import io
import json
import time

import pytest
from conftest import Result, base_args, run_handler

from exit_handler.cli import main
from exit_handler.testing import (
    NatsServer,
    Subscriber,
    add_stream,
    free_port,
    stream_messages,
)

DOWN = f"nats://127.0.0.1:{free_port()}"  # nothing listens: every attempt is refused


def unpublished(subject: str, *extra: str) -> Result:
    """publish against a NATS that is down: exit 3 at the deadline, the event in the log."""
    result = run_handler(*base_args(subject, DOWN), "--timeout=0.5", *extra)
    assert result.status == 3, result.stderr
    assert "did not confirm the event before the deadline (0.5 s;" in result.stderr
    return result


def replay(text: str, *args: str) -> Result:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(
        ["replay", *args], environ={}, stdin=io.StringIO(text), stdout=stdout, stderr=stderr
    )
    return Result(int(status), stdout.getvalue(), stderr.getvalue())


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_lost_event_is_replayed_from_the_log_and_stored_once(
    nats_server: NatsServer, subject: str, log_format: str
) -> None:
    stream = f"LOST_{log_format.upper()}"
    add_stream(nats_server.url, stream, subject)
    lost = unpublished(subject, f"--log-format={log_format}")
    logged = "2026-11-28T10:00:00.123Z " + lost.stderr  # as a collector prefixes each line
    first = replay(logged, f"--nats-url={nats_server.url}")
    assert first.status == 0, first.stderr
    again = replay(logged, f"--nats-url={nats_server.url}")
    assert again.status == 0, again.stderr
    assert "duplicate: already stored" in again.stderr
    (stored,) = stream_messages(nats_server.url, stream)
    dry = run_handler(*base_args(subject, DOWN), "--dry-run")
    assert (
        json.loads(stored.data)["workflowName"]
        == json.loads(json.loads(dry.stdout)["payload"])["workflowName"]
    )
    assert stored.headers["Nats-Msg-Id"] == stored.headers["ce-id"]


def test_a_bare_message_as_dry_run_prints_it_is_sent_as_it_was(
    nats_server: NatsServer, subject: str
) -> None:
    printed = run_handler(*base_args(subject, nats_server.url), "--dry-run").stdout
    with Subscriber(nats_server.url, subject) as subscriber:
        result = replay(printed, f"--nats-url={nats_server.url}", "--delivery=core")
        (received,) = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    message = json.loads(printed)
    assert received.headers == message["headers"]
    assert received.data == message["payload"].encode()


def test_each_event_of_a_log_is_sent_once(nats_server: NatsServer, subject: str) -> None:
    one = unpublished(subject, "--workflow-uid=11111111-1111-1111-1111-111111111111")
    two = unpublished(subject, "--workflow-uid=22222222-2222-2222-2222-222222222222")
    log = one.stderr + two.stderr + one.stderr  # a pod's log collected twice
    with Subscriber(nats_server.url, subject) as subscriber:
        result = replay(log, f"--nats-url={nats_server.url}", "--delivery=core")
        received = subscriber.wait_for(3, timeout=1)
    assert result.status == 0, result.stderr
    assert len({m.headers["ce-id"] for m in received}) == len(received) == 2


@pytest.mark.parametrize(
    ("text", "says", "after_a_good_one"),
    [
        ("", "empty", False),
        ("exit-handler: INFO: published\nnot json at all\n", "no unpublished event", False),
        (
            'exit-handler: ERROR: unpublished event (replay it with exit-handler replay): {"subj',
            "cut or garbled",
            True,  # a good event before it is not sent either: all is checked first
        ),
        (
            '{"subject": "events", "headers": {}, "payload": "{}"}',
            "headers with Nats-Msg-Id",
            False,
        ),
        (
            '{"subject": "", "headers": {"Nats-Msg-Id": "x"}, "payload": 3}',
            "subject, payload",
            False,
        ),
    ],
)
def test_bad_input_exits_2_and_publishes_nothing(
    nats_server: NatsServer, subject: str, text: str, says: str, after_a_good_one: bool
) -> None:
    if after_a_good_one:
        text = unpublished(subject).stderr + text
    with Subscriber(nats_server.url, subject, check=False) as subscriber:
        result = replay(text, f"--nats-url={nats_server.url}")
        received = subscriber.wait_for(1, timeout=0.5)
    assert result.status == 2, result.stderr
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert received == []


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (
            ["--timeout=0", "--nats-url=http://h:1", "--delivery=pigeon"],
            "--nats-url: 'http://h:1' is not a nats://host:port or tls://host:port URL; "
            "--delivery: 'pigeon' is not one of auto, core, jetstream; "
            "--timeout: '0' is outside 0.001..3600 seconds",
        ),
        (
            ["--nats-tls-cert=/etc/hostname"],
            "--nats-tls-cert and --nats-tls-key: give both or neither",
        ),
    ],
)
def test_bad_delivery_options_are_all_named_in_one_line(
    subject: str, options: list[str], line: str
) -> None:
    """The options are checked before the log is read: nothing of it is echoed."""
    result = replay(unpublished(subject).stderr, *options)
    assert result.status == 2
    assert result.stderr == f"exit-handler: ERROR: bad input: {line}\n"


def test_a_sub_second_timeout_is_enough_for_a_nats_that_is_up(
    nats_server: NatsServer, subject: str
) -> None:
    lost = unpublished(subject)
    with Subscriber(nats_server.url, subject) as subscriber:
        result = replay(lost.stderr, f"--nats-url={nats_server.url}", "--timeout=0.5")
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    assert len(received) == 1


def test_nats_still_down_exits_3_at_the_deadline(subject: str) -> None:
    lost = unpublished(subject)
    started = time.monotonic()
    result = replay(lost.stderr, f"--nats-url={DOWN}", "--timeout=2")
    elapsed = time.monotonic() - started
    assert result.status == 3, result.stderr
    assert 2 <= elapsed < 4


def test_a_missing_file_is_bad_input() -> None:
    result = replay("", "/nonexistent/exit-handler.log")
    assert result.status == 2
    assert "/nonexistent/exit-handler.log" in result.stderr


def test_a_log_of_an_earlier_release_is_replayed_too(nats_server: NatsServer, subject: str) -> None:
    logged = unpublished(subject).stderr.replace(
        "(replay it with exit-handler replay)", "(replay it with nats pub)"
    )
    with Subscriber(nats_server.url, subject) as subscriber:
        result = replay(logged, f"--nats-url={nats_server.url}", "--delivery=core")
        received = subscriber.wait_for(1)
    assert result.status == 0, result.stderr
    assert len(received) == 1
